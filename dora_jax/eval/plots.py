"""Figures from metrics.jsonl and eval.json (the paper's Figures 2-11 analogues)."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only: runs on headless machines
import matplotlib.pyplot as plt  # noqa: E402

# metrics.jsonl key -> (file stem, axis label): the curves of the paper's Figures 2-9.
CURVES = {
    "eval/accuracy": ("eval_accuracy", "held-out accuracy"),
    "reward/mean": ("critic_score", "critic score (mean training reward)"),
    "kl/dora_nora_token": ("kl_dora_nora", "KL(Dora || Nora) per token (nats)"),
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


def plot_eval(summary: dict, out_dir: str) -> list[str]:
    """pass@k vs k per policy and mixture, and each policy's strategy usage (the Figure-1 picture)."""
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, entry in [*summary["policies"].items(), *summary["mixtures"].items()]:
        ks = sorted(int(k) for k in entry["pass@k"])
        ax.plot(ks, [entry["pass@k"][str(k)] for k in ks], marker="o", ms=3, label=name,
                linestyle="--" if "+" in name else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    passk_path = os.path.join(out_dir, "pass_at_k.png")
    fig.savefig(passk_path, dpi=120)
    plt.close(fig)
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
