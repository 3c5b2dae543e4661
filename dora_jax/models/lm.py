"""A decoder bundled with its config and parameters, plus the pure functions around it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dora_jax.models.config import ModelConfig
from dora_jax import sharding
from dora_jax.models.decoder import CACHE_AXES, Cache, Decoder, Params


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    """Position ids that skip padding: left-padded rows start at 0 on their first real token."""
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def boxed_shapes(config: ModelConfig) -> Params:
    """Abstract parameters with their logical-axis metadata (no memory allocated)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), tokens, tokens, tokens))["params"]


def logical_specs(config: ModelConfig) -> Params:
    """A tree of `PartitionSpec`s of logical axis names, one per parameter."""
    return nn.get_partition_spec(boxed_shapes(config))


def param_shapes(config: ModelConfig) -> Params:
    return nn.unbox(boxed_shapes(config))


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return nn.unbox(Decoder(config).init(rng, tokens, tokens, tokens)["params"])


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return {name: sharding.constrain(jnp.zeros(shape, dtype), CACHE_AXES) for name in ("k", "v")}


def apply(config: ModelConfig, params: Params, tokens_BxT, positions_BxT, kv_mask_BxS, cache: Cache | None = None,
          cache_index=0, return_hidden: bool = False):
    """Runs the decoder: `(logits_BxTxV f32 or hidden_BxTxD, new_cache)`."""
    return Decoder(config).apply({"params": params}, tokens_BxT, positions_BxT, kv_mask_BxS, cache, cache_index,
                                 return_hidden)


@functools.partial(jax.jit, static_argnums=0)
def forward(config: ModelConfig, params: Params, input_ids_BxT, attention_mask_BxT=None) -> jax.Array:
    """Full causal forward pass; padding (left or right) is excluded by `attention_mask`."""
    if attention_mask_BxT is None:
        attention_mask_BxT = jnp.ones(input_ids_BxT.shape, jnp.int32)
    logits, _ = apply(config, params, input_ids_BxT, positions_from_mask(attention_mask_BxT), attention_mask_BxT)
    return logits


@dataclasses.dataclass
class LM:
    """A model definition with one loaded parameter tree; `params` can be swapped for any other tree."""

    config: ModelConfig
    params: Params
    source_dir: str | None = None  # where it was loaded from (tokenizer files are copied from here on save)

    def logits(self, params: Params, input_ids, attention_mask=None) -> jax.Array:
        """[B, T, V] float32 logits for `input_ids` [B, T]; `attention_mask` [B, T] marks real tokens."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return forward(self.config, params, input_ids, mask)

    @property
    def num_params(self) -> int:
        return count_params(self.params)
