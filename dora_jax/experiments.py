"""Many runs of the pipeline, and evaluation without training.

    experiments.train(config, workdir)          # one run, or a sweep when config.sweep is set
    experiments.sweep(config, workdir)          # one run per value of config.sweep, overlays, sweep.md
    experiments.compare({"indicator": c1, "polyepo": c2}, seeds=[0, 1, 2], workdir=...)   # compare.md
    experiments.evaluate_policies(config, {"nora": DIR, "dora": DIR}, out_dir)          # passk.md
    experiments.gate_by_token_kind(workdir)     # where a finished run's Dora gate opens, by kind of token

Each run is `dora_jax.pipeline.run`; the policies a run builds are shared through the cache.
"""

from __future__ import annotations

import ast
import copy
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from dora_jax import cache, distributed, pipeline, scoring, tasks
from dora_jax.eval import plots, report
from dora_jax.cache import POLICY_DIR
from dora_jax.eval.evaluate import Evaluator
from dora_jax.models import checkpoint, gguf_io
from dora_jax.rollout.source import RolloutMaker
from dora_jax.sections import ConfigError


def train(config, workdir: str) -> dict:
    """`launch/train.py`: a sweep when `config.sweep` is set, otherwise one pipeline run."""
    return sweep(config, workdir) if config.sweep else pipeline.run(config, workdir)


def sweep(config, workdir: str) -> dict:
    """One run per value of `config.sweep` ("field=v1,v2,..."), then overlay figures and sweep.md.

    Sweeping `seed` reseeds the built ref and Nora too, so each seed is an independent pipeline.
    """
    field, _, values = config.sweep.partition("=")
    if not field or not values:
        raise ValueError(f"config.sweep={config.sweep!r}: write it as 'section.field=v1,v2,...', "
                         "e.g. 'objective.beta=0.01,0.1,1' or 'seed=0,1,2'.")
    summaries, runs = {}, {}
    for value in values.split(","):
        c = copy.deepcopy(config)
        c.sweep = ""
        if field != "seed" and c.get("alongside"):  # the same side run for every value: run it once, not here
            c.alongside = type(c.alongside)()
        if field == "seed":
            cache.reseed(c, int(value))
        else:
            set_field(c, field, value, f"config.sweep={config.sweep!r}")
        label = f"{field.split('.')[-1]}={value}"
        summaries[label] = pipeline.run(c, os.path.join(workdir, label))
        runs[label] = plots.read_metrics(os.path.join(workdir, label))
    if distributed.is_chief():
        plots.plot_curves(runs, os.path.join(workdir, "figures"))
        text = report.sweep_table(field, summaries, config.name)
        with open(os.path.join(workdir, "sweep.md"), "w") as f:
            f.write(text)
        print(text)
    return {"runs": summaries}


def compare(configs: dict[str, Any], seeds: list[int], workdir: str, overrides: dict | None = None) -> dict:
    """Runs each config ({label: config}) for each seed (ref and Nora built per seed, shared by the configs),
    then writes WORKDIR/compare.md (mean ± sample std per method) and WORKDIR/figures/compare_pass_at_k.png."""
    summaries: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for label, config in configs.items():
            c = copy.deepcopy(config)
            cache.reseed(c, seed)
            if c.get("alongside"):  # every method is a row of compare.md already
                c.alongside = type(c.alongside)()
            for field, value in (overrides or {}).items():
                set_field(c, field, value, f"{field}={value!r} ({label})")
            run_dir = os.path.join(workdir, f"seed={seed}", label.replace(":", "_"))
            summaries.setdefault(label, {})[seed] = pipeline.run(c, run_dir)
            # Rewritten after every run, so an interrupted comparison keeps a table of what finished.
            text = report.compare_table(summaries, seeds)
            if distributed.is_chief():
                with open(os.path.join(workdir, "compare.md"), "w") as f:
                    f.write(text)
    if distributed.is_chief():
        plots.plot_compare(summaries, os.path.join(workdir, "figures"))
        print(text)
    return summaries


def set_field(config, field: str, value, where: str) -> None:
    """Sets the dotted `field` of `config` to `value` (a command-line string takes the field's type); a ConfigError
    names `where` when the config has no such field."""
    section = config
    for part in field.split(".")[:-1]:
        section = section.get(part, {})
    leaf = field.split(".")[-1]
    if leaf not in section:
        raise ConfigError(f"{where}: this config has no field {field!r} (an objective section holds only the "
                          "fields its loss and advantage read).")
    section[leaf] = _typed(section[leaf], value)


def _typed(current, value):
    """`value` as the type of the field's current value (command-line strings: "0" -> 0.0 for a float field)."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(current, (int, float)):
        return type(current)(value)
    try:  # None, tuples, lists: a Python literal, else the string itself
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def evaluate_policies(config, policy_dirs: dict[str, str], out_dir: str) -> dict:
    """pass@k of each policy (checkpoint or HF dir) and of every pair on the held-out split.

    Writes OUT/eval.json, OUT/passk.md (every k up to eval.samples) and OUT/figures/.
    """
    config = copy.deepcopy(config)
    if not policy_dirs:
        raise ValueError("no policy to evaluate: pass --policy=NAME=DIR (a workdir's policy/ or a Hugging Face "
                         "dir), once per policy.")
    if "train_data" in config.task:
        config.task.train_data = ""  # an evaluation reads the held-out split only
    pipeline.check_config(config)
    pipeline.resolve_model_sources(config)
    policy_dirs = {name: gguf_io.resolve(path, config.cache_dir) for name, path in policy_dirs.items()}
    task = tasks.make_task(pipeline.with_tokenizer_dir(config.task, config.ref_dir or next(iter(policy_dirs.values()))))
    loaded = {name: checkpoint.load_policy(path, config.model) for name, path in policy_dirs.items()}
    model_config = next(iter(loaded.values())).config
    evaluator = Evaluator(task, model_config, config)
    summary = evaluator.summarize(evaluator.final({n: lm.params for n, lm in loaded.items()}))
    if not distributed.is_chief():
        return summary
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "passk.md"), "w") as f:
        f.write(f"# pass@k on {config.task.name} ({summary['num_problems']} problems x "
                f"{summary['samples_per_problem']} samples; mixtures take k/2 samples from each policy)\n\n")
        f.write("\n".join(report.passk_table(summary) + report.forgotten_section(summary)) + "\n")
    plots.plot_eval(summary, os.path.join(out_dir, "figures"))
    return summary


def gate_by_token_kind(workdir: str, batches: int = 2) -> dict:
    """Where the Dora gate 1(lR > lN) opens, by kind of token, in a finished run (`launch/diagnose.py`).

    Rollouts are drawn from Nora (where Dora starts) and from the trained policy on the RL split, as training
    draws them; each response token is scored under Ref and Nora and classified by the task (`task.token_kinds`;
    Countdown: operators and parentheses fix the template, numbers fill it).

    Returns {policy: {kind: {"tokens", "gate_rate", "gated_share", "gate_rate_correct", "gate_rate_wrong"}}} for
    `batches` rollout batches of Nora and of the run's trained policy: the share of response tokens of each kind,
    how often the gate opens on them (over all, correct and wrong samples), and their share of all gated tokens."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    task = pipeline.load_task(config)
    if not hasattr(task, "token_kinds"):
        raise ValueError(f"the {task.name} task does not classify tokens (token_kinds); the gate can only be "
                         "split by token kind on a task that does, such as countdown.")
    trees = {name: checkpoint.load_policy(path, config.model)
             for name, path in (("ref", config.ref_dir), ("nora", config.nora_dir),
                                ("trained", os.path.join(workdir, POLICY_DIR)))}
    model_config = trees["ref"].config
    for field in ("nora_samples", "guide"):  # the policy's own draws, with rewards as the task gives them
        if field in config.objective:
            config.objective[field] = 0
    maker = RolloutMaker(task, model_config, config, nora_params=trees["nora"].params)  # (handover hands to her)
    score = jax.jit(lambda params, tokens, mask, start: scoring.token_logprobs(
        model_config, params, tokens, mask, temperature=config.rollout.temperature, kl=None, entropy_of=(),
        score_from=start), static_argnums=3)
    out = {}
    for policy in ("nora", "trained"):
        gate, kinds, correct, keep = [], [], [], []
        for position in range(batches):
            batch = maker.make(position, trees[policy].params).batch
            start = batch.tokens_BxT.shape[1] - config.rollout.max_new_tokens
            lp = score({"ref": trees["ref"].params, "nora": trees["nora"].params}, batch.tokens_BxT, batch.mask_BxT,
                       start)
            gate.append(np.asarray(lp["ref"] - lp["nora"]) > 0)
            kinds.append(task.token_kinds(batch.tokens_BxT))
            correct.append(np.broadcast_to((batch.rewards_B > 0)[:, None], batch.tokens_BxT.shape))
            keep.append(batch.response_mask_BxT > 0)
        gate, kinds, correct, keep = (np.concatenate(x) for x in (gate, kinds, correct, keep))
        opened = gate & keep
        out[policy] = {}
        for k, name in enumerate(task.token_kind_names):
            of_kind = keep & (kinds == k)
            rate = lambda m: float(opened[m].mean()) if m.any() else None  # noqa: E731
            out[policy][name] = {"tokens": float(of_kind.sum() / keep.sum()), "gate_rate": rate(of_kind),
                                 "gated_share": float((opened & of_kind).sum() / max(opened.sum(), 1)),
                                 "gate_rate_correct": rate(of_kind & correct), "gate_rate_wrong": rate(of_kind & ~correct)}
    return out
