"""Compute sharding: blockwise attention is exact, the sharded sampler draws the same tokens, compiled memory
shrinks with the mesh and the planner tracks it, and meshes that cannot split a model are refused by name."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import indicator
from dora_jax import models, plan, sharding
from dora_jax.models import ModelConfig, hf
from dora_jax.rollout import sampler
from dora_jax.trainer.loop import UpdateLayout
from dora_jax.trainer.state import OptimConfig, make_optimizer

TINY = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=12, qkv_bias=True)


def test_attention_in_blocks_equals_one_block():
    """Blocks of 4 query positions (with a ragged last block) give the logits and gradients of one block."""
    params = models.init_params(TINY, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, TINY.vocab_size, (3, 11)), jnp.int32)
    mask = jnp.asarray((np.arange(11)[None] >= np.array([[0], [3], [6]])).astype(np.int32))

    def loss(config, p):
        logits = models.forward(config, p, tokens, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * mask), logits

    (a, la), ga = jax.value_and_grad(functools.partial(loss, TINY), has_aux=True)(params)
    (b, lb), gb = jax.value_and_grad(functools.partial(loss, TINY.replace(attention_chunk=4)), has_aux=True)(params)
    valid = np.asarray(mask).astype(bool)
    assert np.abs(np.asarray(la)[valid] - np.asarray(lb)[valid]).max() <= 1e-5
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        scale = float(np.abs(np.asarray(y)).max())  # f32 rounding relative to the leaf's largest entry (~30)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_sampler_draws_the_same_tokens(mesh):
    params = models.init_params(TINY, jax.random.key(1))
    rng = np.random.default_rng(2)
    B, P = 8, 6
    prompt = rng.integers(1, TINY.vocab_size, (B, P)).astype(np.int32)
    prompt_mask = (np.arange(P)[None] >= rng.integers(0, 3, (B, 1))).astype(np.int32)
    keys = jax.random.split(jax.random.key(3), B)
    options = dict(max_new_tokens=7, temperature=1.0, top_p=0.9, stop_ids=(2,))
    single = sampler.sample(TINY, (params,), prompt * prompt_mask, prompt_mask, keys, **options)
    n = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    mesh = sharding.make_mesh(mesh, jax.devices()[:n])
    placed = jax.device_put(params, sharding.tree_shardings(models.lm.boxed_shapes(TINY), mesh, sharding.DEFAULT_RULES))
    sharded = sampler.sample(TINY, (placed,), prompt * prompt_mask, prompt_mask, keys, **options)
    assert sampler.layout_of((placed,), sharding.DEFAULT_RULES) is not None  # it did run on the mesh
    np.testing.assert_array_equal(np.asarray(single.tokens_BxN), np.asarray(sharded.tokens_BxN))
    np.testing.assert_allclose(np.asarray(single.logp_BxN), np.asarray(sharded.logp_BxN), atol=1e-5)


def _small_config(tmp_path):
    """A d=256, 4-layer, 4096-token model at the `:math` settings (bf16 compute, remat), 16 rows x 512 tokens."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(dict(
        model_type="qwen2", vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        rms_norm_eps=1e-6)))
    c = indicator.get_config("math")
    c.ref_dir = str(model_dir)
    c.rollout.prompts_per_step, c.objective.group_size = 4, 4
    c.task.max_prompt_len = 64
    c.rollout.max_new_tokens = 448
    c.optim.grad_accum = 2
    return c


@pytest.mark.slow
def test_compiled_memory_shrinks_with_fsdp_and_the_planner_tracks_it(tmp_path):
    config = _small_config(tmp_path)
    one = plan.compile_update(config, sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
    sizes = dict(data=1, fsdp=8, tensor=1)
    mesh = sharding.make_mesh(sizes, jax.devices()[:8])
    update = plan.compile_update(config, mesh)
    assert update.temp <= one.temp / 4, (update.temp, one.temp)
    sample = plan.compile_sampler(config, mesh)
    planned = plan.plan(config, sizes)
    assert abs(planned.update_program / update.peak - 1) <= 0.15, (planned.update_program, update.peak)
    assert abs(planned.sampler_program / sample.peak - 1) <= 0.15, (planned.sampler_program, sample.peak)


def test_a_mesh_that_cannot_split_the_model_is_named():
    config = TINY.replace(num_heads=6, num_kv_heads=2, intermediate_size=81)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=4), jax.devices()[:4])
    with pytest.raises(ValueError, match=r"config.mesh.tensor=4 does not divide the model's num_heads=6, "
                                         r"num_kv_heads=2, intermediate_size=81.*Use config.mesh.tensor=1"):
        UpdateLayout.of(config, make_optimizer(OptimConfig(), 10), mesh, sharding.DEFAULT_RULES)
    with pytest.raises(ValueError, match="needs 16 devices, 8 are available"):
        sharding.make_mesh(dict(data=2, fsdp=8, tensor=1), jax.devices()[:8])


def test_weights_load_straight_into_their_shards(tmp_path):
    """hf.load with the trainer's shardings gives each device only its shard (no tree staged on device 0)."""
    hf.save_random(TINY, str(tmp_path))
    mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=1), jax.devices()[:4])
    shardings = sharding.tree_shardings(models.lm.boxed_shapes(TINY), mesh, sharding.DEFAULT_RULES)
    placed = hf.load(str(tmp_path), shardings=shardings).params
    whole = hf.load(str(tmp_path)).params
    for x, s, w in zip(jax.tree.leaves(placed), jax.tree.leaves(shardings), jax.tree.leaves(whole)):
        assert x.sharding == s
        np.testing.assert_array_equal(np.asarray(x), np.asarray(w))
    shard = placed["embedding"].addressable_shards[0]
    assert shard.device == jax.devices()[0] and shard.data.shape == (TINY.vocab_size, TINY.hidden_size // 4)
