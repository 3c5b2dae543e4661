"""The whole embedded pipeline (ref SFT -> Nora GRPO -> Dora -> eval -> report) in its smoke variant."""

import json
import os

import numpy as np

from configs import clipped, indicator
from dora_jax import pipeline


def _smoke(module, tmp_path, arg="smoke"):
    c = module.get_config(arg)
    c.cache_dir = str(tmp_path / "cache")
    for built in c.build.values():
        built.cache_dir = c.cache_dir
    return c


def test_indicator_pipeline_writes_the_workdir_and_reuses_the_cache(tmp_path, capsys):
    workdir = tmp_path / "indicator"
    summary = pipeline.run(_smoke(indicator, tmp_path), str(workdir))
    out = capsys.readouterr().out
    assert "building it into" in out  # ref and Nora were missing
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "eval.json", "report.md", "checkpoints",
                 "policy", "figures/eval_accuracy.png", "figures/critic_score.png", "figures/kl_dora_nora.png",
                 "figures/psi_mean.png", "figures/pass_at_k.png", "figures/strategies.png"):
        assert (workdir / name).exists(), name
    assert set(summary["policies"]) == {"ref", "nora", "dora"}
    assert set(summary["mixtures"]) == {"dora+nora", "dora+ref", "nora+ref"}
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(5))  # step 0: the initial evaluation
    for key in ("reward/mean", "kl/dora_nora_token", "kl/dora_nora_seq", "psi/mean", "indicator/frac", "entropy",
                "response_length/mean", "perf/tokens_per_s", "perf/step_s"):
        assert all(key in r for r in records[1:]), key
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
    report = (workdir / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "Nora+Ref" in report

    # A second run with the same config reuses both built policies.
    pipeline.run(_smoke(indicator, tmp_path), str(tmp_path / "again"))
    out = capsys.readouterr().out
    assert out.count("Using the cached") == 2 and "building it into" not in out


def test_clipped_trains_dora(tmp_path):
    workdir = tmp_path / "clipped"
    pipeline.run(_smoke(clipped, tmp_path), str(workdir))
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")][1:]
    assert all(r["grad_norm"] > 0 and r["update_norm"] > 0 for r in records)
    assert np.isfinite([r["objective/clip_frac_low"] for r in records]).all()
    assert os.path.exists(workdir / "report.md")
