"""One config, end to end: check it, build missing policies, train, evaluate, report (docs/design.md §9).

    summary = pipeline.run(config, workdir)

    check_config(config)             # every section, before any work: ConfigError names field and fix
    build_missing_policies(config)   # ref / Nora / teacher from config.build, cached (dora_jax.cache)
    task = load_task(config)
    trainer = Trainer.from_config(config, workdir)
    source = batch_source(...)       # chosen by name from BATCH_SOURCES
    trainer.run(source, ...); export; evaluate_run(...); write_outputs(...)

A run resumes from its workdir, so an interrupted pipeline picks up where it stopped, stage by
stage. Sweeps, method comparisons and evaluation of existing checkpoints live in
`dora_jax.experiments`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from dora_jax import cache, distributed, objectives, sections, tasks
from dora_jax.cache import POLICY_DIR
from dora_jax.eval import plots, report
from dora_jax.eval.evaluate import EvalConfig, Evaluator
from dora_jax.models import ModelConfig, checkpoint, gguf_io, hf
from dora_jax.rollout.process import ProcessRollouts
from dora_jax.rollout.sft import DistillConfig, SFTBatches, SFTConfig, distill_corpus
from dora_jax.rollout.source import InlineRollouts, RolloutConfig, samples_nora, samples_ref
from dora_jax.sharding import MeshConfig
from dora_jax.tasks import diversity
from dora_jax.trainer import Trainer
from dora_jax.trainer.loop import POLICY_INITS, TrainerConfig
from dora_jax.trainer.step import KL_METRIC
from dora_jax.trainer.state import OptimConfig
from dora_jax.writers import MetricWriter


def run(config, workdir: str) -> dict:
    """Trains `config` in `workdir` and writes eval.json, report.md and figures/; returns the eval summary."""
    check_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config, timing = build_missing_policies(copy.deepcopy(config))
    task = load_task(config)
    check_resumable(config, workdir)
    _write_config(config, workdir)

    start = time.perf_counter()
    trainer = Trainer.from_config(config, workdir)
    _check_vocabulary(trainer.model_config.vocab_size, task, config)
    evaluator = Evaluator(task, trainer.model_config, config)
    teacher = checkpoint.load_policy(config.teacher_dir, config.model).params if config.teacher_dir else None
    source = batch_source(config, task, trainer, evaluator, teacher)
    trainer.run(source, evaluate=evaluator.quick, eval_every=evaluator.options.every, desc=f"train {config.name}")
    _export(trainer, os.path.join(workdir, POLICY_DIR))
    timing[f"train {config.name}"] = time.perf_counter() - start

    records = plots.read_metrics(workdir)
    summary = evaluate_run(config, trainer, evaluator, teacher, records, timing)
    if distributed.is_chief():  # in a multi-process run, process 0 writes the files a run has one of
        write_outputs(config, workdir, trainer.step, summary, records)
    if config.get("alongside"):
        summary["alongside"] = run_alongside(config, workdir, summary)
    return summary


def run_alongside(config, workdir: str, summary: dict) -> dict:
    """Runs each config of `config.alongside` ({label: config}) on the same Ref and Nora (same seed and task) in
    WORKDIR/alongside/<label>, then appends a side-by-side table (report.compare_table) to report.md."""
    seed, summaries = config.seed, {f"{config.name} ({config.objective.loss})": {config.seed: summary}}
    for label, other in config.alongside.items():
        c = copy.deepcopy(other)
        c.seed, c.cache_dir, c.ref_dir, c.nora_dir = config.seed, config.cache_dir, config.ref_dir, config.nora_dir
        for section in ("task", "eval", "model", "mesh", "rollout"):  # the same problems, model and sampling
            c[section] = copy.deepcopy(config[section])
        c.build = type(c.build)()
        summaries[label] = {seed: run(c, os.path.join(workdir, "alongside", label))}
    text = report.compare_table(summaries, [seed], title=f"## Side by side, seed {seed}")
    if distributed.is_chief():
        with open(os.path.join(workdir, "report.md"), "a") as f:
            f.write("\n" + text)
        print(text)
    return {label: per_seed[seed] for label, per_seed in list(summaries.items())[1:]}


# Sections every config has, with the class that checks them; `sft` and `distill` are checked when used.
SECTIONS = {"optim": OptimConfig, "mesh": MeshConfig, "rollout": RolloutConfig, "eval": EvalConfig,
            "trainer": TrainerConfig, "diversity": diversity.DiversityConfig}


def check_config(config) -> None:
    """Raises a ConfigError naming the field and the fix for anything in `config` (or the configs it builds
    from) that cannot work, before any work starts."""
    if config.sweep:
        raise sections.ConfigError(f"config.sweep={config.sweep!r} is set: a sweep is many runs; run it with "
                                   "dora_jax.experiments.train (what launch/train.py calls).")
    for c in cache.with_builds(config):
        for name, cls in SECTIONS.items():
            sections.parse(cls, c[name], name)
        tasks.parse_config(c.task)
        objectives.parse_config(c.objective)
        try:
            ModelConfig(**c.model)
        except (TypeError, ValueError) as e:
            raise sections.ConfigError(f"config.model: {e}") from None
        if c.rollout.mode not in BATCH_SOURCES or c.rollout.mode == "sft":
            modes = ", ".join(n for n in BATCH_SOURCES if n != "sft")
            raise sections.ConfigError(f"config.rollout.mode={c.rollout.mode!r}: use one of {modes}.")
        if c.policy_init not in POLICY_INITS:
            raise sections.ConfigError(f"config.policy_init={c.policy_init!r}: use one of {', '.join(POLICY_INITS)}.")
        unknown = set(c.build) - set(cache.ROLES)
        if unknown:
            raise sections.ConfigError(f"config.build.{sorted(unknown)[0]}: build only {', '.join(cache.ROLES)}.")
        if (c.objective.get("nora_samples") and c.objective.get("nora_reward_by") == "modes"
                and not tasks.task_class(c.task.name).strategy_names):
            raise sections.ConfigError(f"config.objective.nora_reward_by='modes' reads strategy labels, which the "
                                       f"{c.task.name} task does not give; use 'strategy' (clusters from "
                                       "config.diversity) or 'problem'.")
        if c.objective.get("spare_rare") and not getattr(tasks.task_class(c.task.name), "rare_strategies", ()):
            raise sections.ConfigError(f"config.objective.spare_rare=True reads which strategies are rare, which the "
                                       f"{c.task.name} task does not say; set it to False.")
        if c.objective.get("guide") and c.rollout.handover_window:
            raise sections.ConfigError("config.objective.guide puts whole responses of another policy in the policy's "
                                       "groups, which handover sampling already mixes token by token; set "
                                       "config.rollout.handover_window=0 or config.objective.guide=0.")
        if c.objective.loss == "sft":
            _require_section(c, "sft", SFTConfig, "common.sft(c) in the config file adds it")
        if c.teacher_dir or "teacher" in c.build:
            _require_section(c, "distill", DistillConfig, "configs/distill.py shows how to add it")
        _check_paths(c)
    for other in config.get("alongside", {}).values():
        check_config(other)


def _check_paths(config) -> None:
    """Model dirs exist and hold a supported model (only their config files are read); a file-based task's data
    files and tokenizer dir exist."""
    model_config = None
    for field in MODEL_FIELDS:
        path = os.path.expanduser(config.get(field) or "")
        if not path:
            continue
        try:
            if gguf_io.is_source(path):  # converted when the run starts; only the file is looked for now
                gguf_io.gguf_file(path)
                continue
            read = checkpoint.read_config(path) if checkpoint.is_checkpoint(path) else hf.read_config(path)
        except (OSError, ValueError) as e:  # FileNotFoundError, UnsupportedModelError, bad JSON ...
            raise sections.ConfigError(f"config.{field}={config[field]!r}: {_one_line(e)}") from None
        model_config = model_config or read
    if model_config is not None and config.mesh.tensor > 1:
        try:
            model_config.check_tensor_parallel(config.mesh.tensor)
        except ValueError as e:
            raise sections.ConfigError(str(e)) from None
    task = config.task
    if task.name == "math" and task.source == "files":
        for field in ("train_data", "eval_data"):
            for path in filter(None, (p.strip() for p in task[field].split(","))):
                if not os.path.exists(os.path.expanduser(path)):
                    raise sections.ConfigError(
                        f"config.task.{field}={task[field]!r}: {path} does not exist. Point it at a local .json, "
                        ".jsonl or .parquet file (nothing is downloaded).")
    if "tokenizer_dir" in task:
        tokenizer_dir = os.path.expanduser(task.tokenizer_dir or config.ref_dir or "")
        if tokenizer_dir and not gguf_io.is_source(tokenizer_dir) and not os.path.isdir(tokenizer_dir):
            raise sections.ConfigError(f"config.task.tokenizer_dir: {tokenizer_dir} does not exist. Set it (or "
                                       "config.ref_dir) to a local Hugging Face model dir with tokenizer files.")


def _require_section(config, name: str, cls, fix: str) -> None:
    if name not in config:
        raise sections.ConfigError(f"config.{name} is missing: {config.name} needs it ({fix}).")
    sections.parse(cls, config[name], name)


def build_missing_policies(config) -> tuple[Any, dict[str, float]]:
    """`config` with ref_dir / nora_dir / teacher_dir set to the cached builds of `config.build`, and their times."""
    # Ref, Nora and the teacher must see the same problems, or the SFT / RL / held-out splits would overlap.
    for built in cache.with_builds(config)[1:]:
        built.task = copy.deepcopy(config.task)
    resolve_model_sources(config)
    timing: dict[str, float] = {}
    for role in cache.ROLES:
        if not config[f"{role}_dir"] and role in config.build:
            start = time.perf_counter()
            config[f"{role}_dir"], built = build_policy(config.build[role], config.cache_dir)
            timing[f"build {role}" if built else f"{role} (cached)"] = time.perf_counter() - start
    return config, timing


MODEL_FIELDS = ("ref_dir", "nora_dir", "teacher_dir")


def resolve_model_sources(config) -> None:
    """Replaces a GGUF file or packaged model (`packaged:smollm2`) in config.ref_dir / nora_dir / teacher_dir /
    task.tokenizer_dir by its Hugging Face directory, converted once into config.cache_dir."""
    for field in MODEL_FIELDS:
        config[field] = gguf_io.resolve(config[field], config.cache_dir)
    if "tokenizer_dir" in config.task:
        config.task.tokenizer_dir = gguf_io.resolve(config.task.tokenizer_dir, config.cache_dir)


def build_policy(build_config, cache_dir: str) -> tuple[str, bool]:
    """(checkpoint dir, built now?) of the policy `build_config` trains, training it if not cached."""
    build_config = copy.deepcopy(build_config)
    build_config.cache_dir = cache_dir
    workdir = cache.build_workdir(build_config, cache_dir)
    policy = os.path.join(workdir, POLICY_DIR)

    def build():
        print(f"No {build_config.name} checkpoint given: building it into {workdir} once; later runs reuse it.")
        run(build_config, workdir)

    # Every process of a multi-process run builds (the build is collective): none may wait for the others' lock.
    built = cache.build_once(workdir, lambda: checkpoint.is_checkpoint(policy), build,
                             enabled=jax.process_count() == 1)
    if not built:
        print(f"Using the cached {build_config.name} policy {policy}")
    return policy, built


def load_task(config):
    """The task of `config.task`; the model's vocabulary defaults to the task tokenizer's."""
    if tasks.task_class(config.task.name).needs_model_dir and not config.ref_dir:
        raise ValueError(f"config.ref_dir is empty: the {config.task.name} task trains from a local model, it builds "
                         "none. Pass --config.ref_dir=HF_DIR (e.g. a DeepSeek-R1-Distill-Qwen dir) and, for Dora, "
                         "--config.nora_dir=DIR of the GRPO-trained Nora.")
    task = tasks.make_task(with_tokenizer_dir(config.task, config.ref_dir))
    if config.model.vocab_size == 0:
        config.model.vocab_size = task.vocab_size
    return task


# What a resumed run may change: how long and how it trains on, what it evaluates, where builds are cached.
RESUMABLE_CHANGES = ("trainer.", "eval.", "cache_dir", "sweep", "build.", "alongside.")


def check_resumable(config, workdir: str) -> None:
    """Raises a ConfigError, before anything in `workdir` is written, when the workdir holds checkpoints of a
    run whose config differs from `config` in anything a resume may not change (RESUMABLE_CHANGES)."""
    saved_path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(saved_path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    with open(saved_path) as f:
        saved = _flat(json.load(f))
    new = _flat(json.loads(config.to_json_best_effort()))
    changed = sorted(k for k in set(saved) | set(new)
                     if saved.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
                     and not (k not in saved and new[k] == _default(config, k)))  # a field added since, left off
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in changed[:4])
        raise sections.ConfigError(
            f"{workdir} holds checkpoints of a run with another config ({shown}"
            f"{'; ...' if len(changed) > 4 else ''}). A resume continues the same run, so use a new --workdir, "
            f"or rerun with the config saved in {saved_path}; nothing in the workdir was changed.")


def _default(config, key: str) -> Any:
    """The default of `key` ("section.field") in its section's class; MISSING where there is none."""
    section, _, field = key.partition(".")
    parsers = {"task": tasks.parse_config, "objective": objectives.parse_config,
               **{name: functools.partial(sections.parse, cls, path=name) for name, cls in SECTIONS.items()}}
    if section not in parsers:
        return dataclasses.MISSING
    fields = {f.name: f for f in dataclasses.fields(parsers[section](config[section]))}
    return fields[field].default if field in fields else dataclasses.MISSING


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_config(config, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_chief():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _check_vocabulary(model_vocab: int, task, config) -> None:
    if model_vocab < task.vocab_size or (task.exact_vocab and model_vocab != task.vocab_size):
        raise ValueError(f"the model's vocabulary ({model_vocab}) does not fit the {task.name} tokenizer "
                         f"({task.vocab_size}): ref_dir={config.ref_dir!r} was built for another task or tokenizer; "
                         "point ref_dir / nora_dir (and task.tokenizer_dir) at the same model family, or leave them "
                         "empty on the embedded task to build them.")


def _sft_batches(config, task, trainer, evaluator, teacher):
    """SFT on the task's corpus (Ref), or on a teacher's distillation corpus (Nora distilled from Dora)."""
    corpus = (distill_corpus(evaluator, task.splits["rl"], teacher, trainer.frozen["nora"], config.distill, config.seed)
              if teacher is not None else task.sft_examples(config.seed))
    batch_size = sections.parse(SFTConfig, config.sft, "sft").batch_size
    return SFTBatches(corpus, batch_size, config.seed, task.prompt_len, config.rollout.max_new_tokens)


def _inline_rollouts(config, task, trainer, evaluator, teacher):
    del evaluator, teacher
    return InlineRollouts(task, trainer.model_config, config, trainer.samples_path,
                          nora_params=trainer.frozen["nora"] if samples_nora(config) else None,
                          ref_params=trainer.frozen["ref"] if samples_ref(config) else None)


def _process_rollouts(config, task, trainer, evaluator, teacher):
    del task, evaluator, teacher
    return ProcessRollouts(trainer.model_config, config, trainer.samples_path)


# Batch sources by name: "sft" for the sft loss, otherwise config.rollout.mode.
BATCH_SOURCES = {"sft": _sft_batches, "inline": _inline_rollouts, "process": _process_rollouts}


def batch_source(config, task, trainer: Trainer, evaluator: Evaluator, teacher):
    """The source of the trainer's batches, chosen by name from BATCH_SOURCES (check_config vetted the name)."""
    name = "sft" if config.objective.loss == "sft" else config.rollout.mode
    return BATCH_SOURCES[name](config, task, trainer, evaluator, teacher)


def evaluate_run(config, trainer: Trainer, evaluator: Evaluator, teacher, records: list[dict],
                 timing: dict) -> dict:
    """The final evaluation of the frozen trees, the teacher and the trained policy, with the run's summary
    (`records`: the run's metrics.jsonl)."""
    start = time.perf_counter()
    dirs = {name: config[f"{name}_dir"] for name in ("ref", "nora") if config[f"{name}_dir"]}
    policies = {name: trainer.frozen[name] for name in dirs}
    if teacher is not None:
        label = _teacher_label(config)
        dirs[label], policies[label] = config.teacher_dir, teacher
    policies[config.name] = trainer.state.params
    results = evaluator.final(policies)
    summary = evaluator.summarize(results)
    if evaluator.options.noise_check and "ref" in results:
        summary["noise"] = evaluator.noise(policies["ref"], results["ref"])
    summary["time_split"] = report.time_split(records)
    found = summary.get("forgotten")
    if found and found["source"] == "labels":  # how often the trained policy sampled them while it learned
        _, share = plots.forgotten_share(records, found["strategies"])
        if share:
            found["rollouts"] = {"first_update": share[0], "last_10_updates": float(np.mean(share[-10:]))}
    timing["final evaluation"] = time.perf_counter() - start
    critic = {name: _built_critic_score(path) for name, path in dirs.items()}
    critic[config.name] = report.critic_score(records) if config.objective.loss != "sft" else None
    summary.update(timing=timing, critic_score=critic, stopped_early=trainer.stopped_early,
                   kl_to_nora=report.last_value(records, KL_METRIC))
    return summary


def write_outputs(config, workdir: str, step: int, summary: dict, records: list[dict]) -> None:
    """eval.json, figures/ (also as TensorBoard images), the sampled text as TensorBoard text, and
    report.md, which is printed."""
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(summary, f, indent=2)
    figures = os.path.join(workdir, "figures")
    pngs = (plots.plot_curves({config.name: records}, figures) + plots.plot_eval(summary, figures)
            + plots.plot_diagnosis(records, summary, figures))
    with MetricWriter(workdir, enabled=True) as tb:  # beside the run's curves in TensorBoard
        for png in pngs:
            tb.image(step, "figures/" + os.path.basename(png).removesuffix(".png"), png)
        for sample_step, text in _samples_markdown(os.path.join(workdir, "samples.jsonl")).items():
            tb.text(sample_step, "samples", text)
    print(report.write_report(workdir, config, summary))


def _samples_markdown(path: str) -> dict[int, str]:
    """samples.jsonl as one markdown table per step (the group the rollout source kept as text)."""
    tables: dict[int, list[str]] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                s = json.loads(line)
                cells = [str(s[k]).replace("|", "\\|").replace("\n", " ")
                         for k in ("prompt", "response", "reward", "strategy")]
                tables.setdefault(s["step"], ["| prompt | response | reward | strategy |", "|---|---|---|---|"])
                tables[s["step"]].append("| " + " | ".join(cells) + " |")
    return {step: "\n".join(rows) for step, rows in tables.items()}


TRACEBACK_VAR = "DORA_JAX_TRACEBACK"  # set (to anything) to see a config error's traceback instead of one line


def launch(main) -> None:
    """`app.run(main)` for the launchers: absl logs from WARNING up (`quiet_info_logs`), and a config error,
    whether a `--config.x=...` override naming no field or a ConfigError from the checks, ends the process
    with one line naming it instead of a traceback (`DORA_JAX_TRACEBACK=1` shows the traceback)."""
    argv = sys.argv
    app.define_help_flags()  # --help / --helpshort / --helpfull, which app.run would define before parsing
    try:
        flags.FLAGS(sys.argv)  # parses the flags and applies the config overrides, as app.run would
        argv = flags.FLAGS(sys.argv[:1])  # parsed: app.run must not apply the overrides a second time
    except flags.Error as e:  # as app.run reports it
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        sys.exit(f"error: a --config override cannot be applied ({_one_line(e)}). Each section's fields are "
                 "listed with their meaning in its component's config class (docs/architecture.md).")

    def checked(argv):
        quiet_info_logs()
        try:
            return main(argv)
        except sections.ConfigError as e:
            if os.environ.get(TRACEBACK_VAR):
                raise
            sys.exit(f"error: {e}")

    app.run(checked, argv=argv)


def _one_line(error: Exception) -> str:
    """The message of `error` on one line (a KeyError inside an AttributeError arrives quoted and escaped)."""
    text = str(error)
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def quiet_info_logs() -> None:
    """For launchers: absl logs from WARNING up unless `-v/--verbosity` was given. Orbax logs every
    checkpoint save at INFO, hundreds of lines between the progress bars."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _export(trainer: Trainer, out_dir: str) -> None:
    """Writes the policy next to its final name, then renames, so a half-written export is never used.

    Every process exports (a collective); process 0 alone clears and renames.
    """
    tmp = out_dir + ".tmp"
    chief = distributed.is_chief()
    if chief:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.export(tmp)  # starts by gathering from every process, so no process writes before tmp is cleared
    if chief:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)


def _teacher_label(config) -> str:
    """The teacher's name in the evaluation: its building config's (Dora's "dora"), else "teacher"."""
    return config.build.teacher.name if "teacher" in config.build else "teacher"


def _built_critic_score(policy_dir: str) -> float | None:
    """The critic score of a policy this pipeline trained by RL (None for SFT or foreign checkpoints)."""
    workdir = os.path.dirname(os.path.abspath(policy_dir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        return None
    with open(config_path) as f:
        if json.load(f)["objective"]["loss"] == "sft":
            return None
    return report.critic_score(plots.read_metrics(workdir))


def with_tokenizer_dir(task_config, model_dir: str):
    """`task_config` with an empty `tokenizer_dir` set to `model_dir` (the tokenizer lives with the model)."""
    if "tokenizer_dir" in task_config and not task_config.tokenizer_dir:
        task_config.tokenizer_dir = model_dir
    return task_config


