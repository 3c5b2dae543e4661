"""Sampling-based evaluation of policies and mixtures on held-out problems (docs/design.md §8).

    evaluator = Evaluator(task, model_config, config)
    evaluator.quick(params, step)                  # {"eval/accuracy": ..., ...}, a few seconds
    results = evaluator.final({"ref": p, "nora": p, "dora": p})
    summary = summarize(results, task)             # pass@k per policy and mixture, diversity

In the final evaluation each policy has its own key stream (derived from its name), so the
samples of two policies are independent and the product form of mixed pass@k is unbiased;
shared keys would correlate a policy with its fine-tuned copy and bias every mixture.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib

import numpy as np
import tqdm

from dora_jax.eval import passk
from dora_jax.rollout.sampler import sample
from dora_jax.rollout.source import RolloutConfig, row_keys, sampling_options
from dora_jax.sections import ConfigError, parse, require
from dora_jax.tasks import diversity

QUICK_SAMPLES = 4  # samples per problem in a quick evaluation (enough for a per-problem strategy entropy)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The `eval` config section: quick evaluations during training and the final one on held-out problems."""

    every: int = 10  # updates between quick evaluations (eval/* metrics; 0 = only at the end)
    quick_problems: int = 128  # held-out problems in a quick evaluation (4 samples each at the rollout temperature)
    samples: int = 16  # samples per held-out problem in the final evaluation (pass@k for k <= samples)
    max_problems: int = 0  # cap on held-out problems in the final evaluation (0 = all)
    batch_rows: int = 0  # rows per sampler call (0 = the training batch's, reusing its compiled program)
    noise_check: bool = False  # evaluate Ref a second time with other keys: the gap of two draws of one model
    split: str = "eval"  # the task split evaluated: "eval" (held-out) or "validation" (tuning; task.validation_problems)

    def __post_init__(self):
        require(self.every >= 0, "every", self.every, "use 0 (only at the end) or a number of updates.")
        require(self.quick_problems >= 1, "quick_problems", self.quick_problems, "evaluate at least one problem.")
        require(self.samples >= 1, "samples", self.samples, "draw at least one sample per problem.")
        require(self.max_problems >= 0, "max_problems", self.max_problems, "use 0 (all) or a positive cap.")
        require(self.batch_rows >= 0, "batch_rows", self.batch_rows, "use 0 (the training batch's) or a row count.")


class Evaluator:
    def __init__(self, task, model_config, config):
        self.task, self.model_config, self.config = task, model_config, config
        self.options = parse(EvalConfig, config.eval, "eval")
        self.rollout = parse(RolloutConfig, config.rollout, "rollout")
        # By default every sampler call has the training batch's row count, so evaluation reuses its compiled program.
        self.rows = self.options.batch_rows or self.rollout.prompts_per_step * config.objective.group_size
        if self.options.split not in task.splits:
            raise ConfigError(f"config.eval.split={self.options.split!r}: the {task.name} task has no such split "
                              f"(it has {', '.join(sorted(task.splits))}); a validation split needs "
                              "config.task.validation_problems > 0.")
        problems = task.splits[self.options.split]
        if self.options.max_problems:
            problems = problems[: self.options.max_problems]
        self.problems = problems
        self.rare_only = task.rare_only(problems) if hasattr(task, "rare_only") else None
        self.solved_by = task.solved_by(problems) if hasattr(task, "solved_by") else None

    def sample(self, params, problems, n: int, seed: int, desc: str | None = None) -> dict[str, np.ndarray]:
        """n samples per problem: {"correct", "valid", "strategy", "length"} arrays [len(problems), n], and "tokens"
        [len(problems), n, max_new_tokens] with "mask" marking each response's real tokens."""
        c, rows = self.config, self.rows
        prompt_QxP, mask_QxP = self.task.prompts(problems)
        prompt_BxP, mask_BxP = np.repeat(prompt_QxP, n, axis=0), np.repeat(mask_QxP, n, axis=0)
        total = len(prompt_BxP)
        chunks = -(-total // rows)
        pad = chunks * rows - total
        prompt_BxP = np.concatenate([prompt_BxP, np.repeat(prompt_BxP[-1:], pad, axis=0)])
        mask_BxP = np.concatenate([mask_BxP, np.repeat(mask_BxP[-1:], pad, axis=0)])
        tokens, masks, lengths = [], [], []
        for i in tqdm.trange(chunks, desc=desc, disable=desc is None or not c.trainer.progress, leave=False):
            sl = slice(i * rows, (i + 1) * rows)
            # Runs of gcd(n, rows) rows share a prompt in every chunk: each is prefilled once.
            out = sample(self.model_config, (params,), prompt_BxP[sl], mask_BxP[sl], row_keys(seed, i, rows),
                         group=math.gcd(n, rows), **sampling_options(self.rollout, self.task))
            tokens.append(np.asarray(out.tokens_BxN))
            masks.append(np.asarray(out.mask_BxN))
            lengths.append(np.asarray(out.lengths_B))
        tokens_BxN = np.concatenate(tokens)[:total]
        rewards, valid, strategy = self.task.score(problems, tokens_BxN)
        shape = (len(problems), n)
        return {"correct": (rewards > 0).reshape(shape), "valid": valid.reshape(shape),
                "strategy": strategy.reshape(shape), "length": np.concatenate(lengths)[:total].reshape(shape),
                "tokens": tokens_BxN.reshape(*shape, -1), "mask": np.concatenate(masks)[:total].reshape(*shape, -1)}

    def quick(self, params, step: int) -> dict[str, float]:
        """A cheap held-out estimate for the training curves."""
        del step
        problems = self.problems[: self.options.quick_problems]
        r = self.sample(params, problems, QUICK_SAMPLES, seed=self.config.seed + 10_000)
        return {"eval/accuracy": float(r["correct"].mean()), "eval/valid_frac": float(r["valid"].mean()),
                "eval/strategy_entropy": passk.strategy_entropy(r["strategy"])}

    def noise(self, params, first: dict[str, np.ndarray], name: str = "ref") -> dict:
        """pass@1 and pass@n of policy `name` in the final evaluation's draw (`first`) and in a second one with other
        keys: how far two evaluations of the same model fall apart."""
        n = self.options.samples
        again = self.sample(params, self.problems, n, seed=self.config.seed + 30_000,
                            desc=f"eval {name} again ({len(self.problems)} problems x {n})")
        return {"policy": name, "pass@1": [float(d["correct"].mean()) for d in (first, again)],
                f"pass@{n}": [float(d["correct"].any(axis=1).mean()) for d in (first, again)]}

    def summarize(self, results: dict[str, dict[str, np.ndarray]]) -> dict:
        """eval.json's summary of `final`'s results; an unlabelled task's strategies are clusters of the
        samples (config.diversity, or the built-in embedding clustering)."""
        clusters = None
        if not self.task.strategy_names and "ref" in results and "nora" in results:
            clusters = joint_clusters(results, self.task, self.problems, self.config.diversity)
        return summarize(results, self.task, self.rare_only, clusters, self.solved_by)

    def final(self, params_by_policy: dict) -> dict[str, dict[str, np.ndarray]]:
        n = self.options.samples
        return {name: self.sample(params, self.problems, n, seed=self.config.seed + 20_000 + zlib.crc32(name.encode()),
                                  desc=f"eval {name} ({len(self.problems)} problems x {n})")
                for name, params in params_by_policy.items()}


def _policy_summary(r: dict[str, np.ndarray], task, rare: np.ndarray | None) -> dict:
    correct, strategy = r["correct"], r["strategy"]
    P, n = correct.shape
    c_P = correct.sum(1)
    ks = passk.ks_up_to(n)
    out = {
        "accuracy": float(correct.mean()),
        "valid_frac": float(r["valid"].mean()),
        "pass@k": {str(k): float(np.mean(passk.pass_at_k(n, c_P, k))) for k in ks},
        "strategy_entropy": passk.strategy_entropy(strategy),
        "correct_strategy_entropy": passk.strategy_entropy(strategy, correct),
        "distinct_correct_strategies": passk.distinct_correct_strategies(strategy, correct),
        "strategy_counts": {task.strategy_name(i): int(np.sum(strategy == i))
                            for i in [*range(len(task.strategy_names)), -1]},
        "correct_strategy_counts": {task.strategy_name(i): int(np.sum((strategy == i) & correct))
                                    for i in [*range(len(task.strategy_names)), -1]},
        "response_length": float(r["length"].mean()),
    }
    if rare is not None and len(rare) == P and rare.any():
        out["rare_only"] = pass_on(correct, rare)
    return out


def pass_on(correct_PxN: np.ndarray, problems_P: np.ndarray) -> dict:
    """{"problems": count, "pass@8": mean pass@8} over the marked problems (pass@n with fewer than 8 samples)."""
    n = correct_PxN.shape[1]
    k = min(8, n)
    return {"problems": int(problems_P.sum()),
            f"pass@{k}": float(np.mean(passk.pass_at_k(n, correct_PxN[problems_P].sum(1), k)))}


FORGOTTEN_SHARE = 0.5  # a strategy is forgotten when Nora's share of samples is below this fraction of Ref's


def _shares(ids: np.ndarray, keep: np.ndarray) -> dict[int, float]:
    """Each strategy id's count among the kept samples, as a share of all samples (id -1: none, left out)."""
    values, counts = np.unique(ids[keep & (ids >= 0)], return_counts=True)
    return {int(v): c / ids.size for v, c in zip(values, counts)}


def recovery(results: dict[str, dict[str, np.ndarray]], ids: dict[str, np.ndarray] | None = None) -> dict | None:
    """Forgotten strategies and how much of them each policy recovers (docs/design.md §8).

    Forgotten: the strategies whose share of Nora's samples is below half of their share of Ref's. A policy's
    mass is its share of samples on them; recovery = (mass - Nora's) / (Ref's - Nora's): 0 is Nora, 1 is Ref.
    The same over correct samples only (a correct sample's share of all samples). `ids` maps each policy to
    its samples' strategy ids [P, n] (default: the task's labels; cluster ids of unlabelled tasks must be
    unique across problems). None without Ref and Nora, or when nothing is forgotten.
    """
    if "ref" not in results or "nora" not in results:
        return None
    ids = ids or {name: r["strategy"] for name, r in results.items()}
    everything = {name: np.ones_like(ids[name], bool) for name in results}
    ref, nora = _shares(ids["ref"], everything["ref"]), _shares(ids["nora"], everything["nora"])
    forgotten = sorted(s for s, share in ref.items() if nora.get(s, 0.0) < FORGOTTEN_SHARE * share)
    if not forgotten:
        return None

    def masses(correct_only: bool) -> dict[str, float]:
        return {name: sum(_shares(ids[name], r["correct"] if correct_only else everything[name]).get(s, 0.0)
                          for s in forgotten) for name, r in results.items()}

    out = {"strategies": forgotten, "policies": {name: {} for name in results}}
    for key, mass in (("", masses(False)), ("correct_", masses(True))):
        for name, m in mass.items():
            out["policies"][name][f"{key}mass"] = float(m)
            out["policies"][name][f"{key}recovery"] = nora_to_ref(m, mass["nora"], mass["ref"])
    return out


def nora_to_ref(value: float, nora: float, ref: float) -> float | None:
    """Where `value` lies on the scale from Nora's figure (0) to Ref's (1); None unless Ref is above Nora."""
    return float((value - nora) / (ref - nora)) if ref > nora else None


def forgotten_only(solved_by_PxK: np.ndarray, forgotten: list[int]) -> np.ndarray:
    """[P] bool: the problems that some forgotten strategy solves and no other strategy does.

    `solved_by_PxK` marks which strategies solve each evaluated problem. Only rediscovering the forgotten
    strategies solves these; a rare-only problem may also be solved by a rare strategy Nora kept (or gained)."""
    solved_by_PxK = np.asarray(solved_by_PxK, bool)
    not_forgotten_K = ~np.isin(np.arange(solved_by_PxK.shape[1]), forgotten)
    return solved_by_PxK.any(axis=1) & ~np.any(solved_by_PxK & not_forgotten_K, axis=1)


def summarize(results: dict[str, dict[str, np.ndarray]], task, rare_only: np.ndarray | None = None,
              cluster_ids: dict[str, np.ndarray] | None = None, solved_by: np.ndarray | None = None) -> dict:
    """eval.json's content: per-policy pass@k and diversity, forgotten-strategy recovery, and mixed pass@k of
    every pair (k/2 samples each).

    `rare_only` marks the evaluated problems only rare strategies solve (their pass@8 is reported).
    `solved_by` [problems, strategies] marks which strategies solve each problem: with it, each policy's pass@8
    on the problems that only forgotten strategies solve is reported too (`forgotten_only`).
    `cluster_ids`: for a task without strategy labels, each policy's samples' cluster ids, unique across
    problems (`joint_clusters`); recovery is then measured over clusters.
    """
    summary = {"policies": {name: _policy_summary(r, task, rare_only) for name, r in results.items()}, "mixtures": {}}
    labelled = bool(task.strategy_names)
    found = recovery(results) if labelled else (recovery(results, cluster_ids) if cluster_ids else None)
    if found is not None:
        found["source"] = "labels" if labelled else "clusters"
        if labelled:
            only_P = None if solved_by is None else forgotten_only(solved_by, found["strategies"])
            if only_P is not None and only_P.any():
                for name, r in results.items():
                    summary["policies"][name]["forgotten_only"] = pass_on(r["correct"], only_P)
            found["strategies"] = [task.strategy_name(s) for s in found["strategies"]]
        else:
            found["strategies"] = len(found["strategies"])  # (problem, cluster) pairs
        summary["forgotten"] = found
    # Newest policy first (dora+nora, dora+ref, nora+ref), the paper's naming.
    for a, b in itertools.combinations(list(results)[::-1], 2):
        ca, cb = results[a]["correct"], results[b]["correct"]
        n_a, n_b = ca.shape[1], cb.shape[1]
        pass_k = {str(k): float(np.mean(passk.mixed_pass_at_k(n_a, ca.sum(1), k // 2, n_b, cb.sum(1), k // 2)))
                  for k in passk.ks_up_to(min(n_a, n_b) * 2) if k >= 2 and k // 2 <= min(n_a, n_b)}
        summary["mixtures"][f"{a}+{b}"] = {"pass@k": pass_k}
    any_result = next(iter(results.values()))
    summary["num_problems"], summary["samples_per_problem"] = any_result["correct"].shape
    if labelled and solved_by is not None and rare_only is not None and rare_only.any():
        # How many rare-only problems each strategy solves: a rare strategy Nora kept may solve many of them.
        solvers_K = np.asarray(solved_by, bool)[rare_only].sum(axis=0)
        summary["rare_only_solved_by"] = {task.strategy_name(k): int(c) for k, c in enumerate(solvers_K) if c}
    summary["labelled_strategies"] = labelled
    return summary


def joint_clusters(results: dict[str, dict[str, np.ndarray]], task, problems, diversity_section) -> dict[str, np.ndarray]:
    """Cluster ids of every policy's samples of each problem, clustered together per problem (so a cluster means
    the same thing for every policy) and offset to be unique across problems: strategies of an unlabelled task.

    The clustering is `diversity_section`'s function; the default `task_labels` (no labels here) becomes the
    built-in embedding clustering."""
    if diversity_section.name == "task_labels":
        diversity_section = diversity.default_config()
        diversity_section.name = "embedding"
    diversity_fn = diversity.make_diversity(diversity_section)
    names = list(results)
    prompt_QxP, mask_QxP = task.prompts(problems)
    prompts = [task.decode(p[m > 0]) for p, m in zip(prompt_QxP, mask_QxP)]
    groups = [[task.decode(t[m > 0]) for name in names
               for t, m in zip(results[name]["tokens"][q], results[name]["mask"][q])] for q in range(len(problems))]
    ids_QxM = np.asarray(diversity_fn(prompts, groups, None), np.int64)
    ids_QxM = np.where(ids_QxM >= 0, ids_QxM + len(groups[0]) * np.arange(len(problems))[:, None], -1)
    bounds = np.cumsum([0] + [results[name]["correct"].shape[1] for name in names])
    return {name: ids_QxM[:, bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}
