"""report.md: the paper's Table 1 and Table 2 analogues, diversity, and the phenomenon checks."""

from __future__ import annotations

import operator
import os

import jax
import numpy as np

from dora_jax import objectives
from dora_jax.eval.evaluate import FORGOTTEN_SHARE, nora_to_ref

# Display order and labels of policies and mixtures in the tables.
_LABEL = {"ref": "Ref", "nora": "Nora", "dora": "Dora", "distill": "Nora-distilled"}
_TABLE2 = ("ref", "nora", "dora", "dora+nora", "dora+ref", "nora+ref")


def critic_score(records: list[dict], last: int = 10) -> float | None:
    """Mean training reward over the last `last` updates (the paper's critic score)."""
    values = [r["reward/mean"] for r in records if "reward/mean" in r][-last:]
    return sum(values) / len(values) if values else None


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _label(name: str) -> str:
    return "+".join(_LABEL.get(part, part) for part in name.split("+"))


def _lookup(summary: dict, name: str, k: int):
    entry = summary["policies"].get(name)
    if entry is None:
        a, b = name.split("+") if "+" in name else (name, "")
        entry = summary["mixtures"].get(name) or summary["mixtures"].get(f"{b}+{a}")
    return None if entry is None else entry["pass@k"].get(str(k))


def checks(summary: dict, kl: float | None) -> list[tuple[str, bool, str]]:
    """The paper's phenomenon as measurable statements: (claim, holds, measured)."""
    p = summary["policies"]
    out = []
    if "ref" in p and "nora" in p and summary.get("labelled_strategies", True):
        r, n = p["ref"]["strategy_entropy"], p["nora"]["strategy_entropy"]
        out.append(("Nora's per-problem strategy entropy <= 60% of Ref's (mode collapse)", n <= 0.6 * r,
                    f"{n:.3f} vs {r:.3f} bits ({n / max(r, 1e-9):.0%})"))
    if "dora" in p and "nora" in p:
        if kl is not None:
            out.append(("KL(Dora || Nora) > 0.1 nats per token", kl > 0.1, f"{kl:.3f}"))
        d, n = p["dora"]["accuracy"], p["nora"]["accuracy"]
        out.append(("Dora's accuracy >= 70% of Nora's", d >= 0.7 * n, f"{d:.3f} vs {n:.3f} ({d / max(n, 1e-9):.0%})"))
        k = 8 if "8" in p["nora"]["pass@k"] else max(int(x) for x in p["nora"]["pass@k"])
        dn, n8 = _lookup(summary, "dora+nora", k), p["nora"]["pass@k"][str(k)]
        if dn is not None:
            out.append((f"Dora+Nora pass@{k} > Nora pass@{k}", dn > n8, f"{dn:.3f} vs {n8:.3f}"))
        nr = _lookup(summary, "nora+ref", k)
        if dn is not None and nr is not None:
            out.append((f"Dora+Nora pass@{k} > Nora+Ref pass@{k} (Dora found what Ref does not offer)", dn > nr,
                        f"{dn:.3f} vs {nr:.3f}"))
    if "distill" in p and "nora" in p:
        d, n = p["distill"]["accuracy"], p["nora"]["accuracy"]
        out.append(("Nora-distilled pass@1 >= Nora pass@1 (distillation keeps what Nora knew)", d >= n,
                    f"{d:.3f} vs {n:.3f} ({d - n:+.3f})"))
        k = 8 if "8" in p["nora"]["pass@k"] else max(int(x) for x in p["nora"]["pass@k"])
        dk, nk, dn = p["distill"]["pass@k"][str(k)], p["nora"]["pass@k"][str(k)], _lookup(summary, "dora+nora", k)
        out.append((f"Nora-distilled pass@{k} > Nora pass@{k}", dk > nk, f"{dk:.3f} vs {nk:.3f}"
                    + (f" (Dora+Nora: {dn:.3f})" if dn is not None else "")))
    return out


def _dora_hyperparameters(objective_section) -> list[tuple[str, object]]:
    """(name, value) of the psi temperature and clip range, for the losses that read them."""
    hp = objectives.parse_config(objective_section)
    return [(k, getattr(hp, k)) for k in ("beta", "delta") if k in objectives.get_loss(hp.loss).reads]


TIME_SPLIT = ("sample_s", "sample_tokens_per_s", "reward_s", "update_s", "update_tokens_per_s")


def time_split(records: list[dict]) -> dict[str, float] | None:
    """Median seconds per update of sampling, rewards and the update, with their tokens/s (metrics.jsonl's perf/*;
    the median leaves out the first update's compilation). None for a run without them (SFT)."""
    values = {k: [r[f"perf/{k}"] for r in records if f"perf/{k}" in r] for k in TIME_SPLIT}
    if not all(values.values()):
        return None
    return {k: float(np.median(v)) for k, v in values.items()}


def write_report(workdir: str, config, summary: dict) -> str:
    """Writes workdir/report.md (from eval.json's summary) and returns its text."""
    p, critic, timing = summary["policies"], summary["critic_score"], summary["timing"]
    k8 = 8 if all("8" in e["pass@k"] for e in p.values()) else min(max(int(x) for x in e["pass@k"]) for e in p.values())
    lines = [f"# {config.name}: {config.objective.loss} on {config.task.name}", "",
             f"{'Validation' if config.eval.get('split') == 'validation' else 'Held-out'} problems: "
             f"{summary['num_problems']}, {summary['samples_per_problem']} samples each at "
             f"temperature {config.rollout.temperature}. Updates: {config.trainer.num_steps}, lr {config.optim.lr}"
             + "".join(f", {k} {v}" for k, v in _dora_hyperparameters(config.objective)) + "."
             + (f" Training {summary['stopped_early']}" if summary.get("stopped_early") else ""), "",
             "## Table 1: accuracy and critic score", "",
             "| policy | accuracy (pass@1) | critic score | valid answers |", "|---|---|---|---|"]
    for name, e in p.items():
        lines.append(f"| {_label(name)} | {e['accuracy']:.3f} | {fmt(critic.get(name))} | {e['valid_frac']:.3f} |")
    extra = () if config.name in ("ref", "nora", "dora") else (config.name, f"{config.name}+nora")
    cols = [c for c in _TABLE2 + extra if _lookup(summary, c, k8) is not None]
    lines += ["", f"## Table 2: pass@{k8}", "", "| " + " | ".join(_label(c) for c in cols) + " |",
              "|" + "---|" * len(cols), "| " + " | ".join(f"{_lookup(summary, c, k8):.3f}" for c in cols) + " |"]
    if config.model.dtype == "bfloat16" and jax.devices()[0].platform == "cpu":
        lines += ["", "Warning: computed in bfloat16 on a CPU. Any change of the weights, however small, re-rounds a few "
                      "percent of them in bfloat16 and moves logits by as much as bfloat16 itself does (up to 1.3 on "
                      "SmolLM2-135M), so nearly identical policies sample different text; compare policies in "
                      "float32 (--config.model.dtype=float32; docs/real_model.md)."]
    if summary.get("noise"):
        noise = summary["noise"]
        (k, draws), = [(key, v) for key, v in noise.items() if key.startswith("pass@") and key != "pass@1"]
        lines += ["", f"Sampling noise: {_label(noise['policy'])} evaluated twice with different keys gives pass@1 "
                      f"{noise['pass@1'][0]:.3f} and {noise['pass@1'][1]:.3f}, {k} {draws[0]:.3f} and {draws[1]:.3f}; "
                      "differences between policies of this size are not evidence."]
    if summary.get("labelled_strategies", True):
        lines += _diversity_table(p, k8)
    if summary.get("rare_only_solved_by"):
        lines += ["", "Rare-only problems solved by each strategy: " + ", ".join(
            f"{name} {count}" for name, count in summary["rare_only_solved_by"].items()) + "."]
    lines += forgotten_section(summary)
    lines += ["", "## pass@k", "", *passk_table(summary)]
    found = checks(summary, summary.get("kl_to_nora"))
    if found:
        lines += ["", "## The phenomenon, measured", "", "| claim | holds | measured |", "|---|---|---|"]
        lines += [f"| {claim} | {'yes' if ok else 'no'} | {measured} |" for claim, ok, measured in found]
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timing.items()]
    split = summary.get("time_split")
    if split:
        lines += ["", "Per update (median over updates): "
                  f"sampling {split['sample_s']:.1f} s ({split['sample_tokens_per_s']:.0f} new tok/s), "
                  f"rewards {split['reward_s']:.2f} s, update {split['update_s']:.1f} s "
                  f"({split['update_tokens_per_s']:.0f} tok/s: scoring under every tree, backward and AdamW)."]
    lines += ["", "Figures: " + ", ".join(f"`figures/{f}`" for f in sorted(os.listdir(os.path.join(workdir, "figures")))
                                          if f.endswith(".png")) if os.path.isdir(os.path.join(workdir, "figures"))
              else "", ""]
    text = "\n".join(lines)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    return text


def _diversity_table(policies: dict, k8: int) -> list[str]:
    lines = ["", "## Strategy diversity", "",
             "| policy | per-problem strategy entropy (bits) | of correct samples | distinct correct strategies "
             f"| rare-only problems pass@{k8} |", "|---|---|---|---|---|"]
    for name, e in policies.items():
        rare = e.get("rare_only", {})
        lines.append(f"| {_label(name)} | {e['strategy_entropy']:.3f} | {e['correct_strategy_entropy']:.3f} | "
                     f"{e['distinct_correct_strategies']:.2f} | {fmt(rare.get(f'pass@{k8}'))} "
                     f"({rare.get('problems', 0)} problems) |")
    return lines


def forgotten_section(summary: dict) -> list[str]:
    """The forgotten strategies, each policy's samples on every strategy, and its recovery (markdown lines)."""
    found, p = summary.get("forgotten"), summary["policies"]
    if found is None:
        return []
    names = list(p)
    lines = ["", "## Forgotten strategies", "",
             f"Forgotten: strategies whose share of Nora's samples is below {FORGOTTEN_SHARE:.0%} of their share of "
             "Ref's. Recovery = (policy's share of samples on them - Nora's) / (Ref's - Nora's): 0 is Nora, 1 is Ref; "
             "the correct-only recovery counts correct samples only."]
    if found["source"] == "labels":
        lines += ["", "| strategy | " + " | ".join(f"{_label(n)} samples (correct)" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        forgotten = set(found["strategies"])
        for strategy in p[names[0]]["strategy_counts"]:
            mark = " (forgotten)" if strategy in forgotten else ""
            lines.append(f"| {strategy}{mark} | " + " | ".join(
                f"{p[n]['strategy_counts'][strategy]} ({p[n]['correct_strategy_counts'][strategy]})" for n in names) + " |")
    else:
        lines += ["", f"The task labels no strategies: these are clusters of each problem's samples of all policies "
                      f"together (config.diversity; {found['strategies']} (problem, cluster) pairs are forgotten)."]
    if found.get("rollouts"):
        r = found["rollouts"]
        lines += ["", f"The trained policy's own rollouts used a forgotten strategy in {r['first_update']:.1%} of samples "
                      f"at its first update and {r['last_10_updates']:.1%} over its last 10 (figures/diagnosis.png)."]
    only = {n: p[n]["forgotten_only"] for n in names if "forgotten_only" in p[n]}
    if only:
        first = next(iter(only.values()))  # {"problems": count, "pass@8": value}
        k = next(key for key in first if key.startswith("pass@"))
        lines += ["", f"Forgotten-only problems: the {first['problems']} evaluated problems that only forgotten strategies solve; "
                      "only rediscovering those strategies solves them (a rare-only problem may also be solved by a "
                      "rare strategy Nora kept)."]
    lines += ["", "| policy | share on forgotten | recovery | correct share on forgotten | correct-only recovery |"
              + (f" forgotten-only {k} |" if only else ""), "|---|---|---|---|---|" + ("---|" if only else "")]
    for n in names:
        e = found["policies"][n]
        lines.append(f"| {_label(n)} | {e['mass']:.3f} | {fmt(e['recovery'])} | {e['correct_mass']:.3f} | "
                     f"{fmt(e['correct_recovery'])} |" + (f" {fmt(only.get(n, {}).get(k))} |" if only else ""))
    return lines


def passk_table(summary: dict) -> list[str]:
    """pass@k for every k of every policy and mixture, as markdown lines."""
    entries = [*summary["policies"].items(), *summary["mixtures"].items()]
    ks = sorted({int(k) for _, e in entries for k in e["pass@k"]})
    lines = ["| policy | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    lines += [f"| {_label(name)} | " + " | ".join(fmt(e["pass@k"].get(str(k))) for k in ks) + " |"
              for name, e in entries]
    return lines


def last_value(records: list[dict], key: str):
    """The last logged value of a metric (None if never logged)."""
    return next((r[key] for r in reversed(records) if key in r), None)


def mean_std(values) -> str:
    """"mean ± sample std" of the values that are not None ("mean" for one value, "n/a" for none).

    Sample (n - 1) deviation: a handful of seeds must not understate the spread."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5:.3f}"


def sweep_table(field: str, summaries: dict[str, dict], name: str) -> str:
    """sweep.md: one row per run, then mean and standard deviation over the runs."""
    columns = {  # column -> value from a run's summary
        "Ref pass@8": lambda s: _lookup(s, "ref", 8),
        "Nora pass@1": lambda s: _lookup(s, "nora", 1),
        "Nora pass@8": lambda s: _lookup(s, "nora", 8),
        f"{_label(name)} pass@1": lambda s: _lookup(s, name, 1),
        f"{_label(name)} pass@8": lambda s: _lookup(s, name, 8),
        f"{_label(name)}+Nora pass@8": lambda s: _lookup(s, f"{name}+nora", 8),
        "Nora+Ref pass@8": lambda s: _lookup(s, "nora+ref", 8),
        "Ref entropy": lambda s: s["policies"].get("ref", {}).get("strategy_entropy"),
        "Nora entropy": lambda s: s["policies"].get("nora", {}).get("strategy_entropy"),
        f"{_label(name)} entropy": lambda s: s["policies"].get(name, {}).get("strategy_entropy"),
        "KL(Dora||Nora)": lambda s: s.get("kl_to_nora"),
    }
    rows = {label: [fn(summary) for fn in columns.values()] for label, summary in summaries.items()}
    lines = [f"# Sweep of {field}", "", "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(fmt(v) for v in values) + " |" for label, values in rows.items()]
    lines.append("| mean ± sample std | " + " | ".join(mean_std(v[i] for v in rows.values())
                                                        for i in range(len(columns))) + " |")
    return "\n".join(lines) + "\n"


def trained_policy(summary: dict) -> str:
    """The policy a run trained: the last one evaluated (ref and Nora come first)."""
    return list(summary["policies"])[-1]


def recovery_of(summary: dict, policy: str, key: str = "recovery") -> float | None:
    """A policy's forgotten-strategy recovery in a run's summary (None where it is not measured)."""
    return summary.get("forgotten", {}).get("policies", {}).get(policy, {}).get(key)


def pass8_on(summary: dict, policy: str, problems: str) -> float | None:
    """A policy's pass@8 on a subset of the problems, "rare_only" or "forgotten_only" (None where not measured)."""
    return summary["policies"].get(policy, {}).get(problems, {}).get("pass@8")


def won_back(summary: dict, policy: str) -> float | None:
    """The share of Ref's lead over Nora on the forgotten-only problems that a policy wins back:
    (its pass@8 - Nora's) / (Ref's - Nora's); None where not measured or where Ref does not lead."""
    mine, nora, ref = (pass8_on(summary, p, "forgotten_only") for p in (policy, "nora", "ref"))
    return None if None in (mine, nora, ref) else nora_to_ref(mine, nora, ref)


def compare_table(summaries: dict[str, dict[int, dict]], seeds: list[int], title: str | None = None) -> str:
    """compare.md: per method, mean ± sample std over seeds of pass@1/8/32, diversity, KL to Nora, time."""
    columns = {
        **{f"pass@{k}": (lambda s, n, k=k: _lookup(s, n, k)) for k in (1, 8, 32)},
        "+Nora pass@8": lambda s, n: _lookup(s, f"{n}+nora", 8) if n != "nora" else None,
        "Nora+Ref pass@8": lambda s, n: _lookup(s, "nora+ref", 8) if n not in ("ref", "nora") else None,
        "recovery": lambda s, n: recovery_of(s, n),
        "correct-only recovery": lambda s, n: recovery_of(s, n, "correct_recovery"),
        "rare-only pass@8": lambda s, n: pass8_on(s, n, "rare_only"),
        "forgotten-only pass@8": lambda s, n: pass8_on(s, n, "forgotten_only"),
        "valid": lambda s, n: s["policies"][n]["valid_frac"],
        "distinct correct strategies / problem": lambda s, n: s["policies"][n]["distinct_correct_strategies"],
        "KL to Nora (last update)": lambda s, n: s.get("kl_to_nora") if n not in ("ref", "nora") else None,
        "train wall time (s)": lambda s, n: s["timing"].get(f"train {n}") if n not in ("ref", "nora") else None,
    }
    lines = [title or f"# Comparison over seeds {', '.join(map(str, seeds))} (mean ± sample std)", "",
             "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]

    def row(label, per_seed, policy_of):
        cells = (mean_std([fn(per_seed[s], policy_of(per_seed[s])) for s in seeds if s in per_seed])
                 for fn in columns.values())
        return f"| {label} | " + " | ".join(cells) + " |"

    first = next(iter(summaries.values()))  # Ref and Nora: the same builds in every method's runs
    lines += [row("Ref (SFT)", first, lambda s: "ref"), row("Nora (GRPO)", first, lambda s: "nora")]
    lines += [row(label, per_seed, trained_policy) for label, per_seed in summaries.items()]
    def holds(a, compare, b):  # a statement whose figures were not measured (too few samples) does not hold
        return a is not None and b is not None and compare(a, b)

    tests = {  # per-seed statement about a method's trained policy -> holds
        "+Nora pass@8 > Nora+Ref": lambda s, n: holds(_lookup(s, f"{n}+nora", 8), operator.gt, _lookup(s, "nora+ref", 8)),
        "rare-only pass@8 > Nora's": lambda s, n: holds(pass8_on(s, n, "rare_only"), operator.gt,
                                                       pass8_on(s, "nora", "rare_only")),
        # Not "above Nora's": the forgotten set comes from Nora's own samples, so she is low there by construction.
        "forgotten-only pass@8: half of Ref's lead won back": lambda s, n: holds(won_back(s, n), operator.ge, 0.5),
        "pass@1 >= 70% of Nora's": lambda s, n: holds(_lookup(s, n, 1), lambda a, b: a >= 0.7 * b, _lookup(s, "nora", 1)),
        "recovery >= 0.5": lambda s, n: holds(recovery_of(s, n), operator.ge, 0.5),
    }
    lines += ["", "Seeds in which each statement holds:", "", "| method | " + " | ".join(tests) + " |",
              "|---|" + "---|" * len(tests)]
    for label, per_seed in summaries.items():
        done = [per_seed[s] for s in seeds if s in per_seed]
        lines.append(f"| {label} | " + " | ".join(f"{sum(bool(fn(s, trained_policy(s))) for s in done)}/{len(done)}"
                                                  for fn in tests.values()) + " |")
    return "\n".join(lines) + "\n"


def gate_table(table: dict) -> str:
    """experiments.gate_by_token_kind's table as markdown, one row per (policy, token kind)."""
    lines = ["| rollouts of | token kind | share of tokens | gate opens | on correct samples | on wrong samples "
             "| share of opened gates |", "|---|---|---|---|---|---|---|"]
    for policy, kinds in table.items():
        label = "Nora (Dora's start)" if policy == "nora" else "the trained policy"
        lines += [f"| {label} | {kind} | {e['tokens']:.3f} | {fmt(e['gate_rate'])} | {fmt(e['gate_rate_correct'])} | "
                  f"{fmt(e['gate_rate_wrong'])} | {e['gated_share']:.3f} |" for kind, e in kinds.items()]
    return "\n".join(lines) + "\n"
