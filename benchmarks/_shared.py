"""What every benchmark shares: the random model both sides load (a Qwen2 of SIZES, or any config.json's
shape), timing, the machine's matmul peak, device names."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time

import jax
import torch
import transformers

from configs import common
from dora_jax.batch import RolloutBatch
from dora_jax.models import hf
from dora_jax.trainer import Trainer

# Random Qwen2 shapes (transformers config fields): "tiny" is the CPU benchmarks' model; "0.5b" and
# "1.5b" are Qwen2.5-0.5B's and -1.5B's (tied embeddings), for accelerators.
SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                 tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                 tie_word_embeddings=True),
}
SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
HF_CONFIG = {**SIZES["tiny"], **SPECIAL_IDS}


def shape_fields(shape: str) -> dict:
    """transformers config fields (with model_type) of `shape`: a key of SIZES (a random Qwen2), or a
    config.json path or model dir of any supported model (e.g. SmolLM2-135M's, a Llama)."""
    if shape in SIZES:
        return {"model_type": "qwen2", **SIZES[shape]}
    path = os.path.join(shape, "config.json") if os.path.isdir(shape) else shape
    with open(path) as f:
        fields = json.load(f)
    keep = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
            "tie_word_embeddings", "attention_bias")
    return {k: fields[k] for k in keep if k in fields}


def random_model(fields: dict, save_to: str | None = None, dtype: str = "float32"):
    """(transformers model of config `fields` in eval mode, the same weights as a dora_jax LM stored and computed in
    `dtype`); seeds fixed."""
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    fields = dict(fields)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **{**fields, **SPECIAL_IDS})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if save_to is not None:
        model.save_pretrained(save_to)
        return model, hf.load(save_to, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return model, hf.load(tmp, dtype)


def random_qwen2(save_to: str | None = None, dtype: str = "float32", **overrides):
    """`random_model` of the tiny Qwen2 (HF_CONFIG) with `overrides`."""
    return random_model({"model_type": "qwen2", **HF_CONFIG, **overrides}, save_to, dtype)


def single_device_trainer(model_dir: str, group_size: int, response_len: int, **model) -> Trainer:
    """The `Trainer` of the default config with ref, Nora and Dora loaded from `model_dir`, on device 0, for
    responses of `response_len` tokens; `model` overrides config.model fields (dtype, remat, ...)."""
    config = common.get_config()
    config.ref_dir = config.nora_dir = model_dir
    config.model.update(model)
    config.rollout.max_new_tokens = response_len
    config.objective.group_size = group_size
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.trainer.progress = False
    return Trainer.from_config(config, tempfile.mkdtemp(), devices=jax.devices()[:1])


def timed_update(trainer: Trainer, batch: RolloutBatch):
    """A no-argument function running one update of `trainer` on `batch` to completion."""
    def update():
        trainer.state, metrics = trainer.update(trainer.state, trainer.frozen, batch)
        jax.block_until_ready(metrics)
    return update


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform} {cpu_name()} x{os.cpu_count()}" if device.platform == "cpu" else device.device_kind


def hf_config(size: str) -> dict:
    """The transformers config fields of a random Qwen2 of `size` (a key of SIZES)."""
    return {"model_type": "qwen2", **SIZES[size], **SPECIAL_IDS}


def config_name(**overrides) -> str:
    c = {"model_type": "qwen2", **HF_CONFIG, **overrides}
    return (f"{c['model_type']} L{c['num_hidden_layers']} D{c['hidden_size']} F{c['intermediate_size']} "
            f"H{c['num_attention_heads']}/{c['num_key_value_heads']} V{c['vocab_size']}")


def matmul_peak_flops(n: int = 2048, runs: int = 5) -> float:
    """This machine's float32 matmul rate in FLOP/s: the median of `runs` [n, n] x [n, n] `jnp.dot`s, in this
    process (the ceiling an update's achieved rate is measured against)."""
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    (seconds,) = median_seconds([lambda: dot(a, a).block_until_ready()], runs)
    return 2 * n ** 3 / seconds


def median_seconds(fns, runs: int) -> list[float]:
    """Median wall time of each function; runs alternate between them so both see the same machine load."""
    for fn in fns:
        fn()  # warm-up: compilation (ours), allocator and kernel selection (both)
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def update_flops(c, rows: int, prompt_len: int, response_len: int, trees: int = 3) -> float:
    """Useful FLOPs of one update (the PaLM convention: matmuls, and attention as if not causal): each scored
    tree runs the decoder over all T = prompt + response tokens and the output head over the response
    only; the policy's forward and backward count 3 forwards, each frozen tree 1."""
    T = prompt_len + response_len
    head = c.vocab_size * c.hidden_size
    body = 2 * (c.matmul_params() - head) + 4 * c.num_layers * c.num_heads * c.head_dim * T
    forward = rows * (T * body + response_len * 2 * head)
    return forward * (3 + (trees - 1))
