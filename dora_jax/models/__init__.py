"""Decoder models (Qwen2 / Llama families) and their Hugging Face import/export."""

from dora_jax.models.config import ModelConfig, UnsupportedModelError
from dora_jax.models.decoder import Decoder, unembed
from dora_jax.models.lm import (LM, apply, count_params, forward, init_cache, init_params, logical_specs, param_shapes,
                                positions_from_mask)

__all__ = ["LM", "Decoder", "ModelConfig", "UnsupportedModelError", "apply", "count_params", "forward", "init_cache",
           "init_params", "logical_specs", "param_shapes", "positions_from_mask", "unembed"]
