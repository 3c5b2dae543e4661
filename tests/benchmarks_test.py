"""benchmarks/: accelerator.py's FLOPs and bytes formulas against real parameter trees, one tiny CPU run; memory.py's figures."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import accelerator  # noqa: E402

from dora_jax.models import count_params, param_shapes  # noqa: E402


@pytest.mark.parametrize("size", ["tiny", "0.5b", "1.5b"])
def test_matmul_params_are_the_tree_less_embedding_lookup_biases_and_norms(size):
    c = accelerator.model_config(size, "bfloat16")
    shapes = param_shapes(c)
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    total = count_params(shapes)
    elementwise = sum(int(np.prod(x.shape)) for path, x in leaves
                      if any(k in jax.tree_util.keystr(path) for k in ("bias", "norm", "scale")))
    # The embedding lookup is not a matmul; the output head is (tied: the same [V, D] table, counted once).
    lookup = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    assert c.matmul_params() == total - elementwise - lookup
    if size != "tiny":  # Qwen2.5-0.5B / 1.5B: 0.49B / 1.54B parameters in all
        assert total == pytest.approx({"0.5b": 494e6, "1.5b": 1544e6}[size], rel=0.01)


def test_update_flops_count_the_head_on_response_tokens_only():
    c = accelerator.model_config("0.5b", "float32")
    per_token = 2 * c.matmul_params() + 4 * c.num_layers * c.num_heads * c.head_dim * 64
    # Every position scored (no prompt): 3 forwards of the policy (forward and backward) + ref + Nora.
    assert accelerator.update_flops(c, 4, 0, 64) == pytest.approx(5 * per_token * 4 * 64)
    # A 48-token prompt costs the decoder but not the [V, D] head (151936 x 896 at 0.5B).
    saved = 5 * 4 * 48 * 2 * c.vocab_size * c.hidden_size
    with_prompt = accelerator.update_flops(c, 4, 48, 16)
    assert with_prompt == pytest.approx(5 * per_token * 4 * 64 - saved)


def test_decode_bound_counts_weights_and_the_growing_cache():
    c = accelerator.model_config("tiny", "bfloat16")
    per_step_kv = 2 * c.num_layers * 4 * c.num_kv_heads * c.head_dim * 2  # k and v, bf16, batch 4, per position
    weights = c.matmul_params() * 2
    # Steps 2 and 3 of 3 new tokens after a 10-token prompt read the cache up to positions 11 and 12.
    assert accelerator.decode_bound_seconds(c, 4, 10, 3, 1e9) == pytest.approx(
        (2 * weights + per_step_kv * (11 + 12)) / 1e9)


def test_tiny_cpu_run_prints_and_writes_every_figure(tmp_path):
    out = tmp_path / "acc.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/accelerator.py", "--size=tiny", "--dtype=float32", "--prompts=2", "--group=2",
         "--prompt_len=8", "--response_len=8", "--decode_batch=2", "--new_tokens=64", "--runs=3",
         "--peak_tflops=1", "--hbm_gbps=10", f"--json={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    assert (r["update_batch"], r["update_length"], r["decode_batch"]) == (4, 16, 2)
    flops = accelerator.update_flops(accelerator.model_config("tiny", "float32"), 4, 8, 8)
    assert r["update_mfu"] == pytest.approx(flops / r["update_seconds"] / 1e12)
    assert 0 < r["decode_roofline_fraction"] and r["decode_tok_s"] > 0
    assert "MFU" in result.stdout and "HBM roofline" in result.stdout


def test_memory_benchmark_writes_compiled_and_planned_figures(tmp_path):
    """benchmarks/memory.py on 8 simulated devices for a small model: both programs, both figures, the cache."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(dict(
        model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)))
    out = tmp_path / "memory.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--config=configs/indicator.py:math", f"--config.ref_dir={model_dir}",
         "--config.rollout.prompts_per_step=2", "--config.objective.group_size=4", "--config.task.max_prompt_len=32",
         "--config.rollout.max_new_tokens=32", "--config.optim.grad_accum=1", "--mesh=data=2,fsdp=4,tensor=1",
         "--devices=8", f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "plan/peak" in run.stdout and "KV cache per device" in run.stdout
    figures = json.loads(out.read_text())["figures"]
    for program in ("update", "sampler"):
        assert figures[program]["compiled_peak_gib"] > 0 and figures[program]["planned_peak_gib"] > 0
    # 8 rows of 64 slots split over the 8 row devices: one row each.
    assert figures["sampler"]["kv_cache_gib"] == pytest.approx(figures["sampler"]["kv_cache_total_gib"] / 8)
