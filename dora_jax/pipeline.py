"""One config, end to end: build missing policies, train, evaluate, report (docs/design.md §9).

    summary = pipeline.run(config, workdir)

On the embedded task a config names how to build its ref and Nora (`config.build.ref`,
`config.build.nora`); a missing checkpoint is built once into `config.cache_dir`, keyed by
a hash of the building config, and reused by every later run. A run resumes from its
workdir, so an interrupted pipeline picks up where it stopped, stage by stage.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from typing import Any

from absl import flags, logging

from dora_jax import distributed
from dora_jax.rollout.sft import distill_corpus
from dora_jax.rollout.sft import SFTBatches
from dora_jax.tasks import TASKS, make_task
from dora_jax.eval import plots, report
from dora_jax.eval.evaluate import Evaluator, summarize
from dora_jax.models import checkpoint
from dora_jax.rollout.process import ProcessRollouts
from dora_jax.rollout.source import InlineRollouts
from dora_jax.trainer import Trainer
from dora_jax.writers import MetricWriter

POLICY_DIR = "policy"  # the trained policy, exported as a model checkpoint inside the workdir


def run(config, workdir: str) -> dict:
    """Trains `config` in `workdir` and writes eval.json, report.md and figures/; returns the eval summary."""
    if config.sweep:
        return sweep(config, workdir)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config, timing = build_missing_policies(copy.deepcopy(config))
    task = load_task(config)
    _write_config(config, workdir)

    start = time.perf_counter()
    trainer = Trainer.from_config(config, workdir)
    _check_vocabulary(trainer.model_config.vocab_size, task, config)
    evaluator = Evaluator(task, trainer.model_config, config)
    teacher = checkpoint.load_policy(config.dora_dir, config.model).params if config.dora_dir else None
    source = batch_source(config, task, trainer, evaluator, teacher)
    trainer.run(source, evaluate=evaluator.quick, eval_every=config.eval.every, desc=f"train {config.name}")
    _export(trainer, os.path.join(workdir, POLICY_DIR))
    timing[f"train {config.name}"] = time.perf_counter() - start

    records = plots.read_metrics(workdir)
    summary = evaluate_run(config, trainer, evaluator, teacher, records, timing)
    if distributed.is_chief():  # in a multi-process run, process 0 writes the files a run has one of
        write_outputs(config, workdir, trainer.step, summary, records)
    return summary


def build_missing_policies(config) -> tuple[Any, dict[str, float]]:
    """`config` with ref_dir / nora_dir / dora_dir set to the cached builds of `config.build`, and their times."""
    # Ref, Nora and Dora must see the same problems, or the SFT / RL / held-out splits would overlap.
    for built in _with_builds(config)[1:]:
        built.task = copy.deepcopy(config.task)
    timing: dict[str, float] = {}
    for role in ("ref", "nora", "dora"):
        if not config[f"{role}_dir"] and role in config.build:
            start = time.perf_counter()
            config[f"{role}_dir"], built = build_policy(config.build[role], config.cache_dir)
            timing[f"build {role}" if built else f"{role} (cached)"] = time.perf_counter() - start
    return config, timing


def load_task(config):
    """The task of `config.task`; the model's vocabulary defaults to the task tokenizer's."""
    if getattr(TASKS.get(config.task.name), "needs_model_dir", False) and not config.ref_dir:
        raise ValueError(f"config.ref_dir is empty: the {config.task.name} task trains from a local model, it builds "
                         "none. Pass --config.ref_dir=HF_DIR (e.g. a DeepSeek-R1-Distill-Qwen dir) and, for Dora, "
                         "--config.nora_dir=DIR of the GRPO-trained Nora.")
    task = make_task(_with_tokenizer_dir(config.task, config.ref_dir))
    if config.model.vocab_size == 0:
        config.model.vocab_size = task.vocab_size
    return task


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
    return SFTBatches(corpus, config.sft.batch_size, config.seed, task.prompt_len, config.rollout.max_new_tokens)


def _inline_rollouts(config, task, trainer, evaluator, teacher):
    del evaluator, teacher
    return InlineRollouts(task, trainer.model_config, config, trainer.samples_path,
                          nora_params=trainer.frozen["nora"] if config.rollout.handover_window else None)


def _process_rollouts(config, task, trainer, evaluator, teacher):
    del task, evaluator, teacher
    return ProcessRollouts(trainer.model_config, config, trainer.samples_path)


# Batch sources by name: "sft" for the sft loss, otherwise config.rollout.mode.
BATCH_SOURCES = {"sft": _sft_batches, "inline": _inline_rollouts, "process": _process_rollouts}


def batch_source(config, task, trainer: Trainer, evaluator: Evaluator, teacher):
    """The source of the trainer's batches, chosen by name from BATCH_SOURCES."""
    name = "sft" if config.objective.loss == "sft" else config.rollout.mode
    if name not in BATCH_SOURCES:
        raise ValueError(f"config.rollout.mode={config.rollout.mode!r}: use one of "
                         f"{', '.join(n for n in BATCH_SOURCES if n != 'sft')}.")
    return BATCH_SOURCES[name](config, task, trainer, evaluator, teacher)


def evaluate_run(config, trainer: Trainer, evaluator: Evaluator, teacher, records: list[dict],
                 timing: dict) -> dict:
    """The final evaluation of the frozen trees, the teacher and the trained policy, with the run's summary
    (`records`: the run's metrics.jsonl)."""
    start = time.perf_counter()
    policies = {name: trainer.frozen[name] for name in ("ref", "nora") if config[f"{name}_dir"]}
    if teacher is not None:
        policies["dora"] = teacher
    policies[config.name] = trainer.state.params
    summary = summarize(evaluator.final(policies), evaluator.task, evaluator.rare_only)
    timing["final evaluation"] = time.perf_counter() - start
    critic = {name: _built_critic_score(config[f"{name}_dir"]) for name in policies if name != config.name}
    critic[config.name] = report.critic_score(records) if config.objective.loss != "sft" else None
    summary.update(timing=timing, critic_score=critic, stopped_early=trainer.stopped_early,
                   kl_to_nora=report.last_value(records, "kl/dora_nora_token"))
    return summary


def write_outputs(config, workdir: str, step: int, summary: dict, records: list[dict]) -> None:
    """eval.json, figures/ (also as TensorBoard images) and report.md, which is printed."""
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(summary, f, indent=2)
    figures = os.path.join(workdir, "figures")
    pngs = plots.plot_curves({config.name: records}, figures) + plots.plot_eval(summary, figures)
    with MetricWriter(workdir, enabled=True) as tb:  # the figures beside the run's curves in TensorBoard
        for png in pngs:
            tb.image(step, "figures/" + os.path.basename(png).removesuffix(".png"), png)
    print(report.write_report(workdir, config, summary))


def quiet_info_logs() -> None:
    """For launchers: absl logs from WARNING up unless `-v/--verbosity` was given. Orbax logs every
    checkpoint save at INFO, hundreds of lines between the progress bars."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def build_policy(build_config, cache_dir: str) -> tuple[str, bool]:
    """(checkpoint dir, built now?) of the policy `build_config` trains, training it if not cached."""
    build_config = copy.deepcopy(build_config)
    build_config.cache_dir = cache_dir
    workdir = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), f"{build_config.name}-{cache_key(build_config)}")
    policy = os.path.join(workdir, POLICY_DIR)
    if checkpoint.is_checkpoint(policy):
        print(f"Using the cached {build_config.name} policy {policy}")
        return policy, False
    print(f"No {build_config.name} checkpoint given (config.{build_config.name}_dir is empty): building it into "
          f"{workdir} once; later runs reuse it.")
    run(build_config, workdir)
    return policy, True


def cache_key(config) -> str:
    """Hash of everything that changes a built policy (not where it is cached or how progress is shown)."""
    c = copy.deepcopy(config)
    c.cache_dir, c.trainer.progress = "", True
    return hashlib.sha256(c.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:10]


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


def evaluate_policies(config, policy_dirs: dict[str, str], out_dir: str) -> dict:
    """pass@k of each policy (checkpoint or HF dir) and of every pair on the held-out split.

    Writes OUT/eval.json, OUT/passk.md (every k up to eval.samples) and OUT/figures/.
    """
    config = copy.deepcopy(config)
    task = make_task(_with_tokenizer_dir(config.task, config.ref_dir or next(iter(policy_dirs.values()))))
    loaded = {name: checkpoint.load_policy(path, config.model) for name, path in policy_dirs.items()}
    model_config = next(iter(loaded.values())).config
    evaluator = Evaluator(task, model_config, config)
    summary = summarize(evaluator.final({n: lm.params for n, lm in loaded.items()}), task, evaluator.rare_only)
    if not distributed.is_chief():
        return summary
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "passk.md"), "w") as f:
        f.write(f"# pass@k on {config.task.name} ({summary['num_problems']} problems x "
                f"{summary['samples_per_problem']} samples; mixtures take k/2 samples from each policy)\n\n")
        f.write("\n".join(report.passk_table(summary)) + "\n")
    plots.plot_eval(summary, os.path.join(out_dir, "figures"))
    return summary


def sweep(config, workdir: str) -> dict:
    """One run per value of `config.sweep` ("field=v1,v2,..."), then overlay figures and sweep.md.

    Sweeping `seed` reseeds the built ref and Nora too, so each seed is an independent pipeline.
    """
    field, _, values = config.sweep.partition("=")
    if not field or not values:
        raise ValueError(f"config.sweep={config.sweep!r}: write it as 'section.field=v1,v2,...', "
                         "e.g. 'objective.beta=0.01,0.1,1' or 'seed=0,1,2'.")
    section = config
    for part in field.split(".")[:-1]:
        section = section[part]
    kind = type(section[field.split(".")[-1]])
    summaries, runs = {}, {}
    for value in values.split(","):
        c = copy.deepcopy(config)
        c.sweep = ""
        if field == "seed":
            _reseed(c, int(value))
        else:
            c.update_from_flattened_dict({field: kind(value)})
        label = f"{field.split('.')[-1]}={value}"
        summaries[label] = run(c, os.path.join(workdir, label))
        runs[label] = plots.read_metrics(os.path.join(workdir, label))
    if distributed.is_chief():
        plots.plot_curves(runs, os.path.join(workdir, "figures"))
        text = report.sweep_table(field, summaries, config.name)
        with open(os.path.join(workdir, "sweep.md"), "w") as f:
            f.write(text)
        print(text)
    return {"runs": summaries}


def load_config(spec: str):
    """The config of `path/to/config.py[:VARIANT]`, as `--config=` reads it."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if module_spec is None or not os.path.exists(path):
        raise ValueError(f"{spec!r}: no config file {path!r}; write e.g. configs/polyepo.py:pass_at_k.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def compare(specs: list[str], seeds: list[int], workdir: str, overrides: dict | None = None) -> dict:
    """Runs each config for each seed (ref and Nora built per seed, shared by the configs), then writes
    WORKDIR/compare.md (mean ± sample std per method) and WORKDIR/figures/compare_pass_at_k.png."""
    summaries: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for spec in specs:
            c = load_config(spec)
            label = os.path.basename(spec).replace(".py", "").removesuffix(":smoke").replace(",smoke", "")
            _reseed(c, seed)
            c.update_from_flattened_dict(overrides or {})
            summaries.setdefault(label, {})[seed] = run(c, os.path.join(workdir, f"seed={seed}", label.replace(":", "_")))
            # Rewritten after every run, so an interrupted comparison keeps a table of what finished.
            text = report.compare_table(summaries, seeds)
            if distributed.is_chief():
                with open(os.path.join(workdir, "compare.md"), "w") as f:
                    f.write(text)
    if distributed.is_chief():
        plots.plot_compare(summaries, os.path.join(workdir, "figures"))
        print(text)
    return summaries


def _with_tokenizer_dir(task_config, model_dir: str):
    """`task_config` with an empty `tokenizer_dir` set to `model_dir` (the tokenizer lives with the model)."""
    if "tokenizer_dir" in task_config and not task_config.tokenizer_dir:
        task_config.tokenizer_dir = model_dir
    return task_config


def _reseed(config, seed: int) -> None:
    """Sets `seed` in the config and in the ref and Nora builds: each seed is an independent pipeline."""
    for target in _with_builds(config):
        target.seed = seed


def _with_builds(config) -> list:
    """The config and every config nested in its `build` section, recursively."""
    out = [config]
    for built in config.build.values():
        out += _with_builds(built)
    return out
