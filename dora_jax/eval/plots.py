"""Figures from metrics.jsonl and eval.json (the paper's Figures 2-11 analogues)."""

from __future__ import annotations

import json
import os

# No backend is forced: headless machines fall back to Agg, and notebooks keep inline figures.
import matplotlib.pyplot as plt
import numpy as np

from dora_jax.eval import report

# metrics.jsonl key -> (file stem, axis label): the curves of the paper's Figures 2-9.
CURVES = {
    "eval/accuracy": ("eval_accuracy", "held-out accuracy"),
    "reward/mean": ("critic_score", "critic score (mean training reward)"),
    "kl/policy_nora_token": ("kl_dora_nora", "KL(Dora || Nora) per token (nats)"),
    "psi/mean": ("psi_mean", "psi mean"),
    "eval/strategy_entropy": ("strategy_entropy", "per-problem strategy entropy (bits)"),
    "eval/valid_frac": ("valid_frac", "valid answers (held-out)"),
}


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics; is {workdir} a dora_jax workdir (launch/train.py --workdir)?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(runs: dict[str, list[dict]], out_dir: str) -> list[str]:
    """One figure per metric in CURVES, one line per run (a single run, or a sweep's overlay)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for key, (stem, label) in CURVES.items():
        if not any(_series(records, key)[0] for records in runs.values()):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for name, records in runs.items():
            steps, values = _series(records, key)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=name)
        ax.set_xlabel("update")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def forgotten_share(records: list[dict], strategies) -> tuple[list[int], list[float]]:
    """Per update, the share of the policy's rollouts that use one of `strategies` (the forgotten ones)."""
    keys = [f"rollout/strategy/{name}" for name in strategies]
    points = [(r["step"], sum(r[k] for k in keys)) for r in records if all(k in r for k in keys)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_diagnosis(records: list[dict], summary: dict, out_dir: str) -> list[str]:
    """Why a trained policy does or does not rediscover: how often its rollouts hold a forgotten strategy (against
    Ref's and Nora's held-out shares), and where the Dora weight acts, on above- vs below-average samples."""
    found = summary.get("forgotten")
    steps, share = forgotten_share(records, found["strategies"]) if found and found["source"] == "labels" else ([], [])
    panels = [(f"objective/{k}_above", f"objective/{k}_below", label) for k, label in
              (("gate", "tokens the gate lets through"), ("weight", "weight summed over tokens / tokens"))]
    panels = [p for p in panels if _series(records, p[0])[0]]
    if not steps and not panels:
        return []
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4.2 * (1 + len(panels)), 3.4), squeeze=False)
    ax = axes[0][0]
    if steps:
        ax.plot(steps, share, label="policy's rollouts")
        for name, style in (("ref", "--"), ("nora", ":")):
            mass = found["policies"].get(name, {}).get("mass")
            if mass is not None:
                ax.axhline(mass, ls=style, color="grey", label=f"{name} (held-out)")
        ax.legend(fontsize=7)
    ax.set_title("samples on forgotten strategies", fontsize=9)
    for ax, (above, below, label) in zip(axes[0][1:], panels):
        for key, name in ((above, "above-average samples (A > 0)"), (below, "below-average samples (A < 0)")):
            ax.plot(*_series(records, key), label=name)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "diagnosis.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_eval(summary: dict, out_dir: str) -> list[str]:
    """pass@k vs k per policy and mixture, and each policy's strategy usage (the Figure-1 picture)."""
    os.makedirs(out_dir, exist_ok=True)
    curves = {name: ({int(k): v for k, v in entry["pass@k"].items()}, "--" if "+" in name else "-")
              for name, entry in [*summary["policies"].items(), *summary["mixtures"].items()]}
    passk_path = _plot_passk(curves, "pass@k (held-out)", os.path.join(out_dir, "pass_at_k.png"))
    if not summary.get("labelled_strategies", True):
        return [passk_path]

    policies = summary["policies"]
    names = list(next(iter(policies.values()))["strategy_counts"])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(policies)
    for i, (policy, entry) in enumerate(policies.items()):
        counts = [entry["strategy_counts"][n] for n in names]
        total = max(sum(counts), 1)
        ax.bar([j + i * width for j in range(len(names))], [c / total for c in counts], width, label=policy)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    strategies_path = os.path.join(out_dir, "strategies.png")
    fig.savefig(strategies_path, dpi=120)
    plt.close(fig)
    return [passk_path, strategies_path]


def plot_compare(summaries: dict[str, dict[int, dict]], out_dir: str) -> list[str]:
    """pass@k vs k, one curve per method (mean over seeds), plus Ref and Nora from the first method's runs."""
    os.makedirs(out_dir, exist_ok=True)
    first = next(iter(summaries.values()))
    runs = {"Ref": [(s, "ref") for s in first.values()], "Nora": [(s, "nora") for s in first.values()]}
    runs.update({label: [(s, report.trained_policy(s)) for s in per_seed.values()]
                 for label, per_seed in summaries.items()})
    curves = {}
    for label, pairs in runs.items():
        ks = sorted(int(k) for k in pairs[0][0]["policies"][pairs[0][1]]["pass@k"])
        curves[label] = ({k: sum(s["policies"][n]["pass@k"][str(k)] for s, n in pairs) / len(pairs) for k in ks},
                         ":" if label in ("Ref", "Nora") else "-")
    passk = _plot_passk(curves, "pass@k (held-out, mean over seeds)", os.path.join(out_dir, "compare_pass_at_k.png"))
    return [passk] + _plot_recovery(runs, out_dir)


def _plot_recovery(runs: dict[str, list[tuple[dict, str]]], out_dir: str) -> list[str]:
    """Forgotten-strategy recovery vs pass@1, one point per method and seed with the mean marked (the
    exploration / exploitation trade-off of every method at a glance)."""
    points = {label: [(report.recovery_of(s, n), s["policies"][n]["accuracy"]) for s, n in pairs]
              for label, pairs in runs.items()}
    points = {label: [(r, a) for r, a in pts if r is not None] for label, pts in points.items()}
    if not any(points.values()):
        return []
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colors = plt.get_cmap("tab20").colors  # distinct colours for up to 20 methods
    for i, (label, pts) in enumerate(points.items()):
        if not pts:
            continue
        r, a = np.array(pts).T
        color = colors[(2 * i) % 20 + (2 * i) // 20]  # the dark shades first, then the light ones
        ax.plot(r, a, "o", alpha=0.4, ms=4, color=color)
        ax.plot(r.mean(), a.mean(), "D", color=color, ms=7, label=label)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("recovery of forgotten strategies (0 = Nora, 1 = Ref)")
    ax.set_ylabel("pass@1 (held-out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = os.path.join(out_dir, "compare_recovery.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _plot_passk(curves: dict[str, tuple[dict[int, float], str]], ylabel: str, path: str) -> str:
    """pass@k vs k (log2 axis), one line per {label: ({k: value}, linestyle)}."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, (values, style) in curves.items():
        ks = sorted(values)
        ax.plot(ks, [values[k] for k in ks], marker="o", ms=3, label=label, linestyle=style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
