"""HF directory <-> dora_jax checkpoint conversion (the logic behind `launch/convert.py`)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from dora_jax.models import checkpoint, gguf_io, hf


def convert(src: str, dst: str, dtype: str | None = None) -> str:
    """Converts `src` to the other format at `dst` (a GGUF file or `packaged:NAME` to a HF directory); returns a
    one-line summary."""
    if gguf_io.is_source(src):
        path, dtype = gguf_io.gguf_file(src), dtype or "float32"
        config = gguf_io.to_hf_dir(path, dst, dtype)
        return f"wrote Hugging Face directory {dst} ({config.num_params():,} params, {dtype}) from {path}"
    if checkpoint.is_checkpoint(src):
        lm = checkpoint.load(src)
        params = _cast(lm.params, dtype)
        hf.save(lm, params, dst)
        return f"wrote Hugging Face directory {dst} ({lm.num_params:,} params, {_dtype_of(params)})"
    if os.path.exists(os.path.join(src, "config.json")):
        lm = hf.load(src, dtype=dtype or hf.checkpoint_dtype(src))
        checkpoint.save(dst, lm.config, lm.params)
        return f"wrote dora_jax checkpoint {dst} ({lm.num_params:,} params, {lm.config.param_dtype})"
    raise FileNotFoundError(f"{src}: neither a Hugging Face model dir (config.json) nor a dora_jax checkpoint "
                            f"({checkpoint.CONFIG_FILE}).")


def _cast(params, dtype):
    return params if dtype is None else jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)


def _dtype_of(params) -> str:
    return str(jax.tree.leaves(params)[0].dtype)
