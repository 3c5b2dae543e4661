"""Hugging Face checkpoint directories <-> `LM` (config + parameter tree).

    lm = hf.load("path/to/hf_dir", dtype="float32")   # config.json + *.safetensors
    logits = lm.logits(lm.params, input_ids)          # [B, T, V]
    hf.save(lm, lm.params, "out_dir")                 # loadable by AutoModelForCausalLM

Nothing is fetched from a hub: the directory must exist locally.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dora_jax.models import safetensors_io
from dora_jax.models.config import ModelConfig
from dora_jax.models.lm import LM, Params, param_shapes

# Files besides the weights that make a directory usable (tokenizer, chat template, generation defaults).
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
             "generation_config.json")

# HF tensors that carry no parameters (buffers some exporters save).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _tensor_map(config: ModelConfig) -> list[tuple[tuple[str, ...], str, int]]:
    """(our path, HF name with `{i}` for the layer, in_ndim) for every tensor.

    in_ndim = 0: our array is the HF tensor reshaped (embeddings, norms, [H, Dh] biases).
    in_ndim = n > 0: a torch Linear weight [out, in]; its transpose reshaped is our kernel,
    whose first n axes are the input axes.
    """
    p = "model.layers.{i}."
    rows = [(("embedding",), "model.embed_tokens.weight", 0),
            (("final_norm", "scale"), "model.norm.weight", 0),
            (("layers", "attn_norm", "scale"), p + "input_layernorm.weight", 0),
            (("layers", "mlp_norm", "scale"), p + "post_attention_layernorm.weight", 0),
            (("layers", "attn", "q_kernel"), p + "self_attn.q_proj.weight", 1),
            (("layers", "attn", "k_kernel"), p + "self_attn.k_proj.weight", 1),
            (("layers", "attn", "v_kernel"), p + "self_attn.v_proj.weight", 1),
            (("layers", "attn", "o_kernel"), p + "self_attn.o_proj.weight", 2),
            (("layers", "mlp", "gate_kernel"), p + "mlp.gate_proj.weight", 1),
            (("layers", "mlp", "up_kernel"), p + "mlp.up_proj.weight", 1),
            (("layers", "mlp", "down_kernel"), p + "mlp.down_proj.weight", 1)]
    if config.qkv_bias:
        rows += [(("layers", "attn", f"{n}_bias"), p + f"self_attn.{n}_proj.bias", 0) for n in "qkv"]
    if not config.tie_word_embeddings:
        rows.append((("lm_head",), "lm_head.weight", 1))
    return rows


def _hf_shape(shape: tuple[int, ...], in_ndim: int, name: str) -> tuple[int, ...]:
    if in_ndim:
        return (int(np.prod(shape[in_ndim:])), int(np.prod(shape[:in_ndim])))
    return (int(np.prod(shape)),) if name.endswith(".bias") else tuple(shape)


def _to_hf(value: np.ndarray, hf_shape: tuple[int, ...], in_ndim: int) -> np.ndarray:
    """Our array viewed in the HF layout (a view, no copy, when `value` is contiguous)."""
    return value.reshape(hf_shape[::-1]).T if in_ndim else value.reshape(hf_shape)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def read_config(model_dir: str, dtype: str = "float32") -> ModelConfig:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory. Point at a local Hugging Face model dir "
                                "(config.json + *.safetensors); nothing is downloaded from a hub.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing. A Hugging Face model dir needs config.json next to its weights.")
    try:
        with open(path) as f:
            hf_config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or re-download the file.") from e
    return ModelConfig.from_hf_dict(hf_config, dtype=dtype, source=path)


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype a HF directory declares for its weights (float32 when it says nothing)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        hf_config = json.load(f)
    declared = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    return declared if declared in ("float32", "bfloat16", "float16") else "float32"


def load(model_dir: str, dtype: str = "float32", shardings: Params | None = None) -> LM:
    """Loads a local HF Qwen2/Llama directory; params are stored and computed in `dtype`.

    Each tensor is read straight from disk into a buffer of its own size and copied into
    the preallocated stacked parameter, so peak host memory stays near one copy of the
    parameters (see `benchmarks/load_memory.py`). With `shardings` (a tree of `Sharding`s, e.g.
    the trainer's) each device receives only its shard of each parameter; nothing is staged
    on one device.
    """
    config = read_config(model_dir, dtype)
    index = safetensors_io.index_dir(model_dir)
    shapes = param_shapes(config)
    target = np.dtype(jnp.dtype(dtype))
    used, params = set(), {}
    # Largest parameters first: the host buffer of the one in flight is the only extra copy,
    # and it is largest while the fewest device arrays exist.
    rows = sorted(_tensor_map(config), key=lambda row: -int(np.prod(_get(shapes, row[0]).shape)))
    for path, name, in_ndim in rows:
        shape = tuple(_get(shapes, path).shape)
        per_layer = path[0] == "layers"
        slice_shape = shape[1:] if per_layer else shape
        want = _hf_shape(slice_shape, in_ndim, name)
        host = np.empty(shape, target)
        for i in range(config.num_layers if per_layer else 1):
            key = name.format(i=i)
            if key not in index:
                raise safetensors_io.CorruptCheckpointError(
                    f"{model_dir}: tensor {key!r} is missing from the weight files, but config.json "
                    f"(model_type={config.model_type}) needs it. The checkpoint is incomplete or of another architecture.")
            info = index[key]
            if info.shape != want:
                raise safetensors_io.CorruptCheckpointError(
                    f"{info.path}: tensor {key!r} has shape {list(info.shape)}, but config.json implies {list(want)}.")
            # Copy (and cast, and transpose) straight into the stacked buffer: no temporaries.
            dest = host[i] if per_layer else host
            np.copyto(_to_hf(dest, want, in_ndim), safetensors_io.read_tensor(info), casting="unsafe")
            if not np.isfinite(dest).all():
                raise safetensors_io.CorruptCheckpointError(
                    f"{info.path}: tensor {key!r} holds NaN or infinite values (in {dtype}); the weights are "
                    "corrupt, or overflow the dtype they are loaded in.")
            used.add(key)
        if shardings is None:
            placed = jax.device_put(host)
        else:  # each addressable device gets its slice, whatever the process count
            placed = jax.make_array_from_callback(shape, _get(shardings, path), lambda index, h=host: h[index])
        _set(params, path, placed.block_until_ready())
        del host
    unexpected = sorted(k for k in index if k not in used and not k.endswith(_IGNORED_SUFFIXES)
                        and not (config.tie_word_embeddings and k == "lm_head.weight"))
    if unexpected:
        raise safetensors_io.CorruptCheckpointError(
            f"{model_dir}: weight files hold tensors this decoder has no place for: {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}. The checkpoint is not a plain {config.model_type} causal LM.")
    return LM(config=config, params=params, source_dir=os.path.abspath(model_dir))


def save(lm: LM, params: Params, out_dir: str, max_shard_bytes: int = 5 << 30) -> None:
    """Writes `params` as a HF directory (config.json, safetensors shards, tokenizer files if known)."""
    config = lm.config
    os.makedirs(out_dir, exist_ok=True)
    dtype = np.dtype(jax.tree.leaves(params)[0].dtype)
    tensors = []
    for path, name, in_ndim in _tensor_map(config):
        leaf = _get(params, path)
        per_layer = path[0] == "layers"
        slice_shape = tuple(leaf.shape[1:] if per_layer else leaf.shape)
        hf_shape = _hf_shape(slice_shape, in_ndim, name)

        def produce(leaf=leaf, i=None, in_ndim=in_ndim, hf_shape=hf_shape):
            return _to_hf(np.asarray(leaf if i is None else leaf[i]).astype(dtype, copy=False), hf_shape, in_ndim)

        for i in range(config.num_layers) if per_layer else [None]:
            tensors.append((name.format(i=i), hf_shape, dtype, lambda p=produce, i=i: p(i=i)))
    safetensors_io.write_files(out_dir, tensors, max_shard_bytes)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = hf_config["dtype"] = str(jnp.dtype(dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if lm.source_dir and os.path.abspath(lm.source_dir) != os.path.abspath(out_dir):
        for fname in AUX_FILES:
            src = os.path.join(lm.source_dir, fname)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(out_dir, fname))


def save_random(config: ModelConfig, out_dir: str, seed: int = 0, max_shard_bytes: int = 5 << 30) -> None:
    """Writes a randomly initialised HF directory of any size, one tensor in memory at a time.

    For benchmarks and tests of big configs: no parameter tree is ever materialised.
    """
    os.makedirs(out_dir, exist_ok=True)
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    shapes = param_shapes(config)
    rng = np.random.default_rng(seed)
    tensors = []
    for path, name, in_ndim in _tensor_map(config):
        shape = tuple(_get(shapes, path).shape)
        per_layer = path[0] == "layers"
        hf_shape = _hf_shape(shape[1:] if per_layer else shape, in_ndim, name)
        scale = 1.0 / np.sqrt(hf_shape[-1])

        def produce(hf_shape=hf_shape, scale=scale):
            return (rng.standard_normal(hf_shape, np.float32) * scale).astype(dtype)

        tensors += [(name.format(i=i), hf_shape, dtype, produce) for i in range(config.num_layers if per_layer else 1)]
    safetensors_io.write_files(out_dir, tensors, max_shard_bytes)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
