"""Decoder invariants: cached decoding equals a full pass; big configs checked by shape only."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dora_jax import models
from dora_jax.models import ModelConfig
from dora_jax.models.decoder import dense

TINY = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=3, num_heads=6, num_kv_heads=2,
                   head_dim=8, qkv_bias=True, tie_word_embeddings=False)

QWEN25 = {
    # Published config.json values of Qwen2.5-1.5B and Qwen2.5-7B (no weights needed).
    "1.5B": dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1_000_000.0,
                 max_position_embeddings=131_072, rms_norm_eps=1e-6, model_type="qwen2"),
    "7B": dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, rope_theta=1_000_000.0,
               max_position_embeddings=131_072, rms_norm_eps=1e-6, model_type="qwen2"),
}


@pytest.mark.parametrize("dtype", ["float32"])
def test_cached_decoding_matches_full_forward(dtype):
    config = TINY.replace(dtype=dtype, param_dtype=dtype)
    params = models.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    B, P, N = 3, 6, 5  # batch, padded prompt length, decoded tokens
    tokens = jnp.asarray(rng.integers(1, config.vocab_size, size=(B, P + N)), jnp.int32)
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[1, :2] = 0
    prompt_mask[2, :5] = 0
    full_mask = jnp.asarray(np.concatenate([prompt_mask, np.ones((B, N), np.int32)], axis=1))
    full = models.forward(config, params, tokens, full_mask)

    S = P + N + 3  # cache longer than needed: unused slots must stay invisible
    cache = models.init_cache(config, B, S)
    kv_mask = jnp.zeros((B, S), jnp.int32).at[:, : P + N].set(full_mask)
    positions = models.positions_from_mask(full_mask)
    logits, cache = models.apply(config, params, tokens[:, :P], positions[:, :P], kv_mask, cache, 0)
    steps = [logits]
    for t in range(P, P + N):
        logits, cache = models.apply(config, params, tokens[:, t:t + 1], positions[:, t:t + 1], kv_mask, cache, t)
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)
    valid = np.asarray(full_mask).astype(bool)
    assert np.abs(np.asarray(cached)[valid] - np.asarray(full)[valid]).max() <= 1e-5


def test_scan_and_remat_give_same_logits():
    params = models.init_params(TINY, jax.random.key(1))
    tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
    a = models.forward(TINY, params, tokens)
    b = models.forward(TINY.replace(remat=True), params, tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    grads = jax.grad(lambda p: models.forward(TINY.replace(remat=True), p, tokens).sum())(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_unrolled_layers_give_the_same_logits_and_gradients():
    params = models.init_params(TINY, jax.random.key(2))
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)

    def loss(config, p):
        return jnp.sum(jax.nn.log_softmax(models.forward(config, p, tokens))[..., 0])

    (a, ga), (b, gb) = (jax.value_and_grad(functools.partial(loss, c))(params)
                        for c in (TINY, TINY.replace(unroll_layers=True)))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_dense_contracts_trailing_axes_like_einsum():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((4, 5, 6))
    np.testing.assert_allclose(np.asarray(dense(x, w, n_in=2)), np.einsum("abij,ijk->abk", x, w), rtol=1e-5)
    assert dense(x, rng.standard_normal((5, 7, 2))).shape == (2, 3, 4, 7, 2)


@pytest.mark.parametrize("size", sorted(QWEN25))
def test_real_config_parameter_counts(size):
    hf_dict = QWEN25[size]
    config = ModelConfig.from_hf_dict(hf_dict)
    shapes = models.param_shapes(config)  # jax.eval_shape: no memory
    ours = models.count_params(shapes)
    # Independent count: transformers builds the same architecture on the meta device.
    hf_config = transformers.Qwen2Config(**{k: v for k, v in hf_dict.items() if k != "model_type"})
    with torch.device("meta"):
        hf_model = transformers.Qwen2ForCausalLM(hf_config)
    expected = sum(p.numel() for p in hf_model.parameters())  # tied weights are counted once
    assert ours == expected == config.num_params()
    assert ours == {"1.5B": 1_543_714_304, "7B": 7_615_616_512}[size]
    specs = models.logical_specs(config)
    assert specs["layers"]["attn"]["q_kernel"] == jax.sharding.PartitionSpec("layers", "embed", "heads", "head_dim")
