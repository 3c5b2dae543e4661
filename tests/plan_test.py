"""The memory planner against hand calculations for Qwen2.5-1.5B and 7B on an fsdp=8 mesh (no devices used)."""

import json
import os
import subprocess
import sys

import pytest

from configs import common
from dora_jax import plan

ROOT = os.path.join(os.path.dirname(__file__), "..")
MESH = {"data": 1, "fsdp": 8, "tensor": 1}
GiB = 2**30

# Architecture numbers from the models' HF config.json files.
QWEN = {
    "qwen2.5-1.5b": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936, tied=True,
                         known_params=1_543_714_304),
    "qwen2.5-7b": dict(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tied=False,
                       known_params=7_615_616_512),
}
# The planned setting: 16 prompts x 8 samples, 512 prompt + 1024 new tokens, f32 master params, bf16 compute.
PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS = 16, 8, 512, 1024


def write_hf_config(arch: dict, out_dir) -> str:
    """Only config.json: the planner reads nothing else."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": arch["hidden"],
                   "intermediate_size": arch["intermediate"], "num_hidden_layers": arch["layers"],
                   "num_attention_heads": arch["heads"], "num_key_value_heads": arch["kv_heads"],
                   "vocab_size": arch["vocab"], "tie_word_embeddings": arch["tied"], "hidden_act": "silu",
                   "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 32_768,
                   "use_sliding_window": False, "torch_dtype": "bfloat16"}, f)
    return str(out_dir)


def hand_param_count(a: dict) -> int:
    D, F, L, H, K, V = a["hidden"], a["intermediate"], a["layers"], a["heads"], a["kv_heads"], a["vocab"]
    Dh = D // H
    q = D * H * Dh + H * Dh  # weight + bias
    kv = 2 * (D * K * Dh + K * Dh)  # k and v, weight + bias
    o = H * Dh * D  # no bias
    mlp = 3 * D * F  # gate, up, down
    norms = 2 * D  # input and post-attention RMSNorm scales
    embeddings = V * D
    lm_head = 0 if a["tied"] else D * V
    return embeddings + L * (q + kv + o + mlp + norms) + D + lm_head  # + D: the final norm


def qwen_config(ref_dir: str, **rollout):
    c = common.get_config()
    c.ref_dir = c.nora_dir = ref_dir  # a Dora run: Nora is a tree of her own
    c.model.update(param_dtype="float32", dtype="bfloat16", remat=True)
    c.objective.group_size = GROUP
    c.rollout.update(prompts_per_step=PROMPTS, max_new_tokens=NEW_TOKENS, **rollout)
    c.optim.grad_accum = 8
    return c


@pytest.mark.parametrize("name", sorted(QWEN))
def test_figures_match_hand_calculation(name, tmp_path):
    arch = QWEN[name]
    params = hand_param_count(arch)
    assert params == arch["known_params"]  # the hand formula itself is right
    figures = plan.plan(qwen_config(write_hf_config(arch, tmp_path / name)), MESH, prompt_len=PROMPT_LEN)

    shards = MESH["fsdp"]
    f32, bf16 = 4, 2
    per_tree = params * f32 / shards
    adam = 2 * params * f32 / shards  # mu and nu
    rows, T = PROMPTS * GROUP, PROMPT_LEN + NEW_TOKENS
    Dh = arch["hidden"] // arch["heads"]
    kv_cache = 2 * arch["layers"] * rows * T * arch["kv_heads"] * Dh * bf16 / shards  # k and v

    assert figures.num_params == params
    for got in (figures.ref_params, figures.nora_params, figures.dora_params):
        assert got == pytest.approx(per_tree, rel=0.1)
    assert figures.optimizer == pytest.approx(adam, rel=0.1)
    assert figures.kv_cache == pytest.approx(kv_cache, rel=0.1)
    assert figures.gradients == 2 * figures.dora_params  # grad_accum > 1: accumulator + micro-batch gradients
    # Decoding reads a bf16 copy gathered over fsdp, plus the f32 copies of the CPU compiler (~60% of one).
    compute_copy = params * bf16 + 0.6 * params * f32
    assert figures.sampler_params == pytest.approx(compute_copy, rel=0.1) and figures.activations > 0
    # Peak: the three trees and Adam held throughout, plus the larger phase: sampling (the KV cache and the
    # compute copy) or the update (gradients and activations).
    hand_total = 3 * per_tree + adam + max(kv_cache + compute_copy, 2 * per_tree + figures.activations)
    assert figures.total == pytest.approx(hand_total, rel=0.1)
    plan.check(figures, 80 * GiB)  # fits an 80 GB device

    grpo = qwen_config(str(tmp_path / name))
    grpo.nora_dir = ""  # GRPO from Ref: Nora is Ref's arrays, held once
    shared = plan.plan(grpo, MESH, prompt_len=PROMPT_LEN)
    assert shared.nora_params == 0 and shared.total == pytest.approx(figures.total - figures.nora_params, rel=1e-6)
    assert "Ref's arrays (no nora_dir)" in plan.format_plan(shared)

    table = plan.format_plan(figures, 80 * GiB)
    for item in ("ref params", "Nora params", "Dora params", "optimizer state", "sampler KV cache",
                 "update activations", "total (peak)", "device memory", "headroom"):
        assert item in table
    assert f"{per_tree / GiB:.2f}" in table


def test_process_mode_counts_the_samplers_unsharded_copy(tmp_path):
    arch = QWEN["qwen2.5-1.5b"]
    inline = plan.plan(qwen_config(write_hf_config(arch, tmp_path)), MESH, prompt_len=PROMPT_LEN)
    process = plan.plan(qwen_config(str(tmp_path), mode="process"), MESH, prompt_len=PROMPT_LEN)
    # The sampler process puts its parameters (and their compute copy) and cache on one device of its own runtime.
    assert process.sampler_params == pytest.approx(hand_param_count(arch) * 4 + inline.sampler_params, rel=0.01)
    assert process.kv_cache == MESH["fsdp"] * inline.kv_cache
    assert process.total == process.held + process.sampling + process.update


def test_too_big_raises_naming_the_fix(tmp_path):
    c = qwen_config(write_hf_config(QWEN["qwen2.5-7b"], tmp_path))
    c.model.remat = False
    c.optim.grad_accum = 1
    figures = plan.plan(c, MESH, prompt_len=PROMPT_LEN)
    with pytest.raises(ValueError, match="does not fit") as e:
        plan.check(figures, 80 * GiB)
    message = str(e.value)
    short = (figures.total - 80 * GiB) / GiB
    assert f"{short:.1f} GiB short" in message
    assert "config.model.remat=True" in message and "config.optim.grad_accum" in message

    # With remat and small micro-batches the parameters dominate: more fsdp (or bf16) is the fix.
    c.model.remat, c.optim.grad_accum = True, 64
    with pytest.raises(ValueError, match=r"config\.mesh\.fsdp = 16.*param_dtype='bfloat16'"):
        plan.check(plan.plan(c, MESH, prompt_len=PROMPT_LEN), 20 * GiB)


def test_launcher_prints_the_table_and_fails_when_it_does_not_fit():
    def launch(memory_gb):
        return subprocess.run(
            [sys.executable, "launch/plan.py", "--config=configs/indicator.py:smoke", "--mesh=data=1,fsdp=8,tensor=1",
             f"--device_memory_gb={memory_gb}", "--config.rollout.max_new_tokens=32"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})

    fits = launch(80)
    assert fits.returncode == 0, fits.stderr
    assert "total (peak)" in fits.stdout and "headroom" in fits.stdout and "T = 6 + 32 tokens" in fits.stdout
    tight = launch(1e-6)
    assert tight.returncode != 0 and "does not fit" in tight.stderr and "total (peak)" in tight.stdout


def test_scored_trees_per_method():
    """step.scored_trees, which the update and the planner both call: Poly-EPO logs KL to Nora, so Nora is
    scored too."""
    from configs import indicator, nora_grpo, polyepo
    from dora_jax.trainer.step import scored_trees

    assert scored_trees(polyepo.get_config().objective) == ("policy", "nora")
    assert scored_trees(nora_grpo.get_config().objective) == ("policy",)
    assert scored_trees(indicator.get_config().objective) == ("policy", "nora", "ref")
