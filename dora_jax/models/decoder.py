"""One Flax decoder for the Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen and Llama families.

The module is stateless: parameters and the KV cache are explicit pytrees, so the same
definition serves any number of parameter trees (ref, Nora, Dora) and jits cleanly inside
`lax.while_loop` decoding. Every parameter and activation carries logical axis names
(`batch`, `length`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`,
`norm`) that sharding rules map onto a mesh: traced under `sharding.use(layout)`, activations
are split over the row axes (and heads / MLP over `tensor`) and each layer's weights are
gathered in the compute dtype where they are used.

Attention is one code path for full forward passes and cached decoding: a query at cache
slot `cache_index + t` attends to key slots `s <= cache_index + t` whose `kv_mask` is set.
Without a cache the slots are simply `0..T-1` and `kv_mask` is the attention mask.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dora_jax import sharding
from dora_jax.models.config import ModelConfig, rope_frequencies

Params = Any
Cache = dict[str, jax.Array]  # {"k": [L,B,S,K,Dh], "v": [L,B,S,K,Dh]}
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


def dense(x: jax.Array, w: jax.Array, n_in: int = 1, preferred_element_type=None) -> jax.Array:
    """Contracts the last `n_in` axes of `x` with the first `n_in` axes of `w`, as one 2-D matmul.

    Flattening the leading axes first matters on CPU: XLA lowers the backward pass of a
    [B, T, D] x [D, F] einsum with extra transposes, a 2-D matmul it does not (about 1.6x
    faster for a SwiGLU MLP's forward + backward). The flattened axes keep their sharding:
    the batch axis is the major one.
    """
    lead, inner = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
    if tuple(w.shape[:n_in]) != tuple(inner):
        raise ValueError(f"dense: x's last {n_in} axes {inner} do not match w's first {n_in} axes {w.shape[:n_in]}")
    y = jnp.dot(x.reshape(-1, int(np.prod(inner))), w.reshape(int(np.prod(inner)), -1),
                preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *w.shape[n_in:])


def _init(scale_axis: int, names: tuple[str, ...]):
    """Normal init with std 1/sqrt(fan_in) over `scale_axis`, tagged with logical axis names."""
    def init(key, shape, dtype):
        fan_in = int(np.prod([shape[i] for i in range(len(shape)) if i <= scale_axis]))
        return jax.random.normal(key, shape, dtype) / np.sqrt(fan_in).astype(dtype)
    return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                             (x_BxTxD.shape[-1],), self.param_dtype)
        # Variance in f32 as transformers does: bf16 squares lose too much precision.
        x32 = x_BxTxD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return jnp.expand_dims(scale_D.astype(self.dtype), range(x32.ndim - 1)) * x32.astype(self.dtype)


def apply_rope(x_BxTxNxDh, positions_BxT, inv_freq, attention_scale: float):
    """Rotate-half RoPE (the transformers convention), angles computed in f32."""
    angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    angles = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
    cos = (jnp.cos(angles) * attention_scale).astype(x_BxTxNxDh.dtype)
    sin = (jnp.sin(angles) * attention_scale).astype(x_BxTxNxDh.dtype)
    half = x_BxTxNxDh.shape[-1] // 2
    rotated = jnp.concatenate([-x_BxTxNxDh[..., half:], x_BxTxNxDh[..., :half]], axis=-1)
    return x_BxTxNxDh * cos + rotated * sin


def _write_cache(layer_cache: Cache, k_BxTxKxDh, v_BxTxKxDh, cache_index) -> Cache:
    """The layer's cache with the new keys and values written at slots `cache_index:cache_index+T`."""
    start = (0, cache_index, 0, 0)

    def write(cache_BxSxKxDh, new_BxTxKxDh):
        cache_BxSxKxDh = jax.lax.dynamic_update_slice(cache_BxSxKxDh, new_BxTxKxDh.astype(cache_BxSxKxDh.dtype), start)
        return sharding.constrain(cache_BxSxKxDh, CACHE_AXES[1:])

    return {"k": write(layer_cache["k"], k_BxTxKxDh), "v": write(layer_cache["v"], v_BxTxKxDh)}


def attend(q_BxTxKxGxDh, keys_BxSxKxDh, values_BxSxKxDh, query_slots_T, kv_mask_BxS, dtype, heads_major: bool,
           chunk: int) -> jax.Array:
    """Grouped-query attention [B, T, K, G, Dh] of queries at cache slots `query_slots_T` over key slots
    `s <= slot` whose `kv_mask_BxS` is set: scores and softmax in f32 (bf16 attention logits saturate
    and break sampler / scorer parity), products in `dtype`.

    Heads-major operands ([B, K, G, T, Dh]) make the score and value matmuls plain batched matmuls,
    which XLA runs faster (forward and backward) than with the heads in the middle; full forward
    passes use them. With a cache (the sampler's prefill and decoding steps) the layout stays as
    stored: transposing the whole cache at every step would cost more than it saves.

    A pass of more than `chunk` queries (a full pass, or a long prompt's prefill) runs block by
    block (each block's softmax is over every key, so the result is the same): at most
    [B, K, G, chunk, S] scores exist at once, and the backward pass recomputes one block's at a
    time instead of storing [T, S] per layer.
    """
    T = q_BxTxKxGxDh.shape[1]
    if T <= chunk:
        return _attend_block(q_BxTxKxGxDh, keys_BxSxKxDh, values_BxSxKxDh, query_slots_T, kv_mask_BxS, dtype,
                             heads_major)
    n = -(-T // chunk)
    pad = n * chunk - T
    q_NxBxCxKxGxDh = jnp.moveaxis(jnp.pad(q_BxTxKxGxDh, [(0, 0), (0, pad)] + [(0, 0)] * 3).reshape(
        q_BxTxKxGxDh.shape[0], n, chunk, *q_BxTxKxGxDh.shape[2:]), 1, 0)
    slots_NxC = jnp.pad(query_slots_T, (0, pad)).reshape(n, chunk)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(q_BxCxKxGxDh, slots_C):
        return _attend_block(q_BxCxKxGxDh, keys_BxSxKxDh, values_BxSxKxDh, slots_C, kv_mask_BxS, dtype, heads_major)

    out_NxBxCxKxGxDh = jax.lax.map(lambda xs: block(*xs), (q_NxBxCxKxGxDh, slots_NxC))
    out = jnp.moveaxis(out_NxBxCxKxGxDh, 0, 1).reshape(q_BxTxKxGxDh.shape[0], n * chunk, *q_BxTxKxGxDh.shape[2:])
    return out[:, :T]


def _attend_block(q_BxTxKxGxDh, keys_BxSxKxDh, values_BxSxKxDh, query_slots_T, kv_mask_BxS, dtype,
                  heads_major: bool) -> jax.Array:
    Dh = q_BxTxKxGxDh.shape[-1]
    S = keys_BxSxKxDh.shape[1]
    mask_BxTxS = (jnp.arange(S)[None, None, :] <= query_slots_T[None, :, None]) & kv_mask_BxS[:, None, :].astype(bool)
    if heads_major:
        q_BxKxGxTxDh = q_BxTxKxGxDh.transpose(0, 2, 3, 1, 4)
        keys_BxKxSxDh = keys_BxSxKxDh.transpose(0, 2, 1, 3)
        values_BxKxSxDh = values_BxSxKxDh.transpose(0, 2, 1, 3)
        scores = jnp.einsum("BKGTd,BKSd->BKGTS", q_BxKxGxTxDh, keys_BxKxSxDh.astype(dtype),
                            preferred_element_type=jnp.float32)
    else:
        scores = jnp.einsum("BTKGd,BSKd->BKGTS", q_BxTxKxGxDh, keys_BxSxKxDh.astype(dtype),
                            preferred_element_type=jnp.float32)
    scores = jnp.where(mask_BxTxS[:, None, None], scores * (Dh ** -0.5), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if heads_major:
        out_BxKxGxTxDh = jnp.einsum("BKGTS,BKSd->BKGTd", probs, values_BxKxSxDh.astype(dtype))
        return out_BxKxGxTxDh.transpose(0, 3, 1, 2, 4)
    return jnp.einsum("BKGTS,BSKd->BTKGd", probs, values_BxSxKxDh.astype(dtype))


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, layer_cache, positions_BxT, kv_mask_BxS, cache_index):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        B, T, D = x_BxTxD.shape
        H, K, Dh = c.num_heads, c.num_kv_heads, c.head_dim

        def proj(name, heads, head_axis):
            names = ("embed", head_axis, "head_dim")
            w = self.param(f"{name}_kernel", _init(0, names), (D, heads, Dh), pdtype)
            y = dense(x_BxTxD, sharding.gather(w, names, dtype))
            if c.qkv_bias:
                b = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                               (heads, Dh), pdtype)
                y = y + sharding.gather(b, names[1:], dtype)[None, None]
            return sharding.constrain(y, ("batch", "length", head_axis, "head_dim"))

        q_BxTxHxDh = proj("q", H, "heads")
        k_BxTxKxDh = proj("k", K, "kv_heads")
        v_BxTxKxDh = proj("v", K, "kv_heads")
        inv_freq, rope_scale = rope_frequencies(c)
        q_BxTxHxDh = apply_rope(q_BxTxHxDh, positions_BxT, inv_freq, rope_scale)
        k_BxTxKxDh = apply_rope(k_BxTxKxDh, positions_BxT, inv_freq, rope_scale)

        if layer_cache is None:
            keys_BxSxKxDh, values_BxSxKxDh, new_cache = k_BxTxKxDh, v_BxTxKxDh, None
        else:
            new_cache = _write_cache(layer_cache, k_BxTxKxDh, v_BxTxKxDh, cache_index)
            keys_BxSxKxDh, values_BxSxKxDh = new_cache["k"], new_cache["v"]
        out_BxTxKxGxDh = attend(q_BxTxHxDh.reshape(B, T, K, H // K, Dh), keys_BxSxKxDh, values_BxSxKxDh,
                                cache_index + jnp.arange(T), kv_mask_BxS, dtype, heads_major=layer_cache is None,
                                chunk=c.attention_chunk)
        out_BxTxHxDh = sharding.constrain(out_BxTxKxGxDh.reshape(B, T, H, Dh), ("batch", "length", "heads", "head_dim"))
        wo_names = ("heads", "head_dim", "embed")
        wo = self.param("o_kernel", _init(1, wo_names), (H, Dh, D), pdtype)
        return dense(out_BxTxHxDh, sharding.gather(wo, wo_names, dtype), n_in=2), new_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        D, F = c.hidden_size, c.intermediate_size
        gate = self.param("gate_kernel", _init(0, ("embed", "mlp")), (D, F), pdtype)
        up = self.param("up_kernel", _init(0, ("embed", "mlp")), (D, F), pdtype)
        down = self.param("down_kernel", _init(0, ("mlp", "embed")), (F, D), pdtype)
        h_BxTxF = (jax.nn.silu(dense(x_BxTxD, sharding.gather(gate, ("embed", "mlp"), dtype)))
                   * dense(x_BxTxD, sharding.gather(up, ("embed", "mlp"), dtype)))
        h_BxTxF = sharding.constrain(h_BxTxF, ("batch", "length", "mlp"))
        return dense(h_BxTxF, sharding.gather(down, ("mlp", "embed"), dtype))


class Block(nn.Module):
    """Pre-norm transformer layer; scanned over `layers` (compile time does not grow with depth)
    unless `unroll_layers`."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, layer_cache, positions_BxT, kv_mask_BxS, cache_index):
        c = self.config
        norm = functools.partial(RMSNorm, c.rms_norm_eps, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype))
        h, new_cache = Attention(c, name="attn")(norm(name="attn_norm")(x_BxTxD), layer_cache, positions_BxT,
                                                 kv_mask_BxS, cache_index)
        x_BxTxD = x_BxTxD + h
        x_BxTxD = x_BxTxD + MLP(c, name="mlp")(norm(name="mlp_norm")(x_BxTxD))
        return sharding.constrain(x_BxTxD, ("batch", "length", "embed")), new_cache


def unembed(config: ModelConfig, params: Params, hidden_BxTxD: jax.Array) -> jax.Array:
    """Final hidden states -> f32 logits (f32 accumulation so log-probs stay exact in bf16)."""
    dtype = jnp.dtype(config.dtype)
    if config.tie_word_embeddings:
        head_DxV = sharding.gather(params["embedding"], ("vocab", "embed"), dtype).T
    else:
        head_DxV = sharding.gather(params["lm_head"], ("embed", "vocab"), dtype)
    logits = dense(hidden_BxTxD.astype(dtype), head_DxV, preferred_element_type=jnp.float32)
    return sharding.constrain(logits, ("batch",) + (None,) * (logits.ndim - 2) + ("vocab",))


def embed(config: ModelConfig, embedding: jax.Array, tokens_BxT: jax.Array, vocab_parallel: bool) -> jax.Array:
    """Token embeddings [B, T, D] in the compute dtype.

    `vocab_parallel` (full passes, whose table gets a gradient): on a mesh, each device looks its slice
    of the table up for every row, so neither the table nor its gradient is ever whole on a device (see
    `sharding.vocab_parallel`). Decoding looks rows up in the gathered table it already holds.
    """
    with sharding.vocab_parallel() if vocab_parallel else contextlib.nullcontext():
        table_VxD = sharding.gather(embedding, ("vocab", "embed"), jnp.dtype(config.dtype))
        x_BxTxD = jnp.take(table_VxD, sharding.constrain(tokens_BxT, ("batch", "length")), axis=0)
    return sharding.constrain(x_BxTxD, ("batch", "length", "embed"))


def _final_norm(config: ModelConfig, **kw) -> RMSNorm:
    return RMSNorm(config.rms_norm_eps, jnp.dtype(config.dtype), jnp.dtype(config.param_dtype), **kw)


def layer_params(config: ModelConfig, params: Params) -> list[Params]:
    """Per-layer slices of the stacked layer parameters (for `forward_with_layer_caches`)."""
    return [jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(config.num_layers)]


def forward_with_layer_caches(config: ModelConfig, params: Params, layers: list[Params], caches: list[Cache],
                              tokens_BxT, positions_BxT, kv_mask_BxS, slot) -> tuple[jax.Array, list[Cache]]:
    """The decoder for KV-cache decoding: f32 logits [B, V] of the last position, and the per-layer caches
    with slots `slot:slot+T` written. `layers` = `layer_params(config, params)`.

    The same embedding, `Block`s, final norm and head as `Decoder`, with the layers unrolled over
    one cache each: `nn.scan` over a stacked [L, B, S, K, Dh] cache slices out and restacks every
    layer's cache on each call (several full copies per decoded token); per-layer caches are
    updated in place.
    """
    x_BxTxD = embed(config, params["embedding"], tokens_BxT, vocab_parallel=False)
    new_caches = []
    for layer, cache in zip(layers, caches):
        x_BxTxD, cache = Block(config).apply({"params": layer}, x_BxTxD, cache, positions_BxT, kv_mask_BxS, slot)
        new_caches.append(cache)
    # Only the last position is unembedded: prefill never forms [B, P, V] logits.
    x_Bx1xD = _final_norm(config).apply({"params": params["final_norm"]}, x_BxTxD[:, -1:])
    return unembed(config, params, x_Bx1xD)[:, 0], new_caches


class Decoder(nn.Module):
    """tokens -> logits (or final hidden states), with an optional explicit KV cache."""
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, kv_mask_BxS, cache: Cache | None = None, cache_index=0,
                 return_hidden: bool = False):
        c = self.config
        pdtype = jnp.dtype(c.param_dtype)
        embedding = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                               (c.vocab_size, c.hidden_size), pdtype)
        x_BxTxD = embed(c, embedding, tokens_BxT, vocab_parallel=cache is None)
        block = Block
        if c.remat:
            block = nn.remat(Block, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
                        unroll=c.num_layers if c.unroll_layers else 1,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x_BxTxD, new_cache = stack(c, name="layers")(x_BxTxD, cache, positions_BxT, kv_mask_BxS, cache_index)
        x_BxTxD = _final_norm(c, name="final_norm")(x_BxTxD)
        head = {"embedding": embedding}
        if not c.tie_word_embeddings:
            head["lm_head"] = self.param("lm_head", _init(0, ("embed", "vocab")), (c.hidden_size, c.vocab_size), pdtype)
        if return_hidden:
            return x_BxTxD, new_cache
        return unembed(c, head, x_BxTxD), new_cache
