"""Decoder configuration, its Hugging Face `config.json` mapping, and RoPE frequencies.

Shape suffixes used across the package: B batch, T query length, S key/cache length,
D model width, H query heads, K key/value heads, G query heads per kv head, Dh head
width, F MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

# HF `model_type` -> the architecture name written back on save.
SUPPORTED_MODEL_TYPES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedModelError(ValueError):
    """A checkpoint's architecture or option is outside what the decoder implements."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; hashable so it can be a static jit argument."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    # RoPE scaling as sorted (key, value) pairs, e.g. (("factor", 8.0), ("rope_type", "llama3")).
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32_768
    model_type: str = "qwen2"
    # Parameter storage dtype and matmul compute dtype; softmax/log-softmax are always f32.
    param_dtype: str = "float32"
    dtype: str = "float32"
    # Rematerialise each layer in the backward pass (saves activation memory).
    remat: bool = False
    # Trace every layer instead of scanning one: faster updates on CPU, compile time grows with depth.
    unroll_layers: bool = False
    # Query positions per attention block in passes longer than this (memory grows with it, not with T^2).
    attention_chunk: int = 512
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}.")
        if self.attention_chunk < 1:
            raise ValueError(f"attention_chunk={self.attention_chunk}: use a positive number of query positions.")
        rope_type = self.rope_scaling_dict.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"RoPE scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}.")

    def check_tensor_parallel(self, tensor: int, what: str = "config.mesh.tensor") -> None:
        """Raises a ValueError naming the fix unless `tensor` devices can split the heads and the MLP evenly."""
        if tensor <= 1:
            return
        sizes = {"num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                 "intermediate_size": self.intermediate_size}
        bad = {name: n for name, n in sizes.items() if n % tensor}
        if bad:
            fits = [t for t in range(tensor, 0, -1) if all(n % t == 0 for n in sizes.values())][0]
            raise ValueError(f"{what}={tensor} does not divide the model's "
                             + ", ".join(f"{k}={v}" for k, v in bad.items())
                             + f": tensor parallelism splits heads and the MLP evenly. Use {what}={fits} (or another "
                             "divisor) and give the remaining devices to fsdp or data.")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF mapping
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, dtype: str = "float32", source: str = "config.json") -> "ModelConfig":
        """Builds a config from a Hugging Face `config.json` dict (transformers 4.x or 5.x layout)."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported. dora_jax implements the Qwen2 / Qwen2.5 / "
                f"DeepSeek-R1-Distill-Qwen (`qwen2`) and Llama (`llama`) decoders; convert or pick such a checkpoint.")
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window=true is not supported; set it to false.")
        if hf.get("mlp_bias"):
            raise UnsupportedModelError(f"{source}: mlp_bias=true is not supported.")
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedModelError(f"{source}: partial_rotary_factor != 1 is not supported.")
        try:
            num_heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", None) or hf.get("rope_theta") or 10_000.0)
            rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
            rope = {k: v for k, v in rope.items() if v is not None}
            if rope_type != "default":
                rope["rope_type"] = rope_type
                if rope_type in ("llama3", "yarn"):
                    rope.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
            else:
                rope = {}
            qkv_bias = model_type == "qwen2" or bool(hf.get("attention_bias", False))
            eos = hf.get("eos_token_id")
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
                head_dim=int(hf.get("head_dim") or hidden // num_heads),
                rope_theta=theta,
                rope_scaling=tuple(sorted(rope.items())),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                qkv_bias=qkv_bias,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                max_position_embeddings=int(hf.get("max_position_embeddings", 32_768)),
                model_type=model_type,
                param_dtype=dtype,
                dtype=dtype,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
                pad_token_id=hf.get("pad_token_id"),
            )
        except KeyError as e:
            raise ValueError(f"{source}: required field {e.args[0]!r} is missing; is this a causal-LM config.json?") from e

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` that transformers' AutoModelForCausalLM loads."""
        rope = self.rope_scaling_dict
        hf = {
            "architectures": [SUPPORTED_MODEL_TYPES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope or None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = False
        elif not self.qkv_bias:
            raise UnsupportedModelError("Qwen2 checkpoints always carry q/k/v biases; set qkv_bias=True.")
        if self.model_type == "qwen2":
            hf["use_sliding_window"] = False
        return hf

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["rope_scaling"] = tuple(tuple(kv) for kv in d.get("rope_scaling", ()))
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = tuple(d["eos_token_id"])
        return cls(**d)

    # ------------------------------------------------------------------ sizes
    def num_params(self) -> int:
        """Parameter count from the shapes alone (embeddings counted once when tied)."""
        d, h, k, dh = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        per_layer = ((h + 2 * k) * dh if self.qkv_bias else 0) + 2 * d  # q/k/v biases, two norms
        lookup = 0 if self.tie_word_embeddings else self.vocab_size * d  # an untied input embedding
        return self.matmul_params() + self.num_layers * per_layer + d + lookup

    def matmul_params(self) -> int:
        """The weights a token is multiplied by: q/k/v/o, the MLP and the output head (N of the 2N FLOPs per
        token); biases and norms are elementwise and the input embedding is a lookup."""
        d, f, h, k, dh = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        return self.num_layers * (2 * d * h * dh + 2 * d * k * dh + 3 * d * f) + self.vocab_size * d


def rope_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [Dh/2] (float32) and the cos/sin scale, as transformers computes them."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    rope = config.rope_scaling_dict
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return (inv_freq / np.float32(rope["factor"])).astype(np.float32), 1.0
    if rope_type == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    factor = rope.get("factor") or config.max_position_embeddings / rope["original_max_position_embeddings"]
    orig_len = rope["original_max_position_embeddings"]

    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            attention_factor = get_mscale(factor, rope["mscale"]) / get_mscale(factor, rope["mscale_all_dim"])
        else:
            attention_factor = get_mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(orig_len / (rotations * 2 * math.pi)) / (2 * math.log(config.rope_theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = (config.rope_theta ** (np.arange(0, dim, 2).astype(np.float32) / dim)).astype(np.float32)
    freqs = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return freqs.astype(np.float32), float(attention_factor)
