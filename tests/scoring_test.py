"""Three-tree scoring equals per-tree log-softmax of full logits; KL and entropy are exact."""

import jax
import jax.numpy as jnp
import numpy as np

from dora_jax import models, scoring
from dora_jax.models import ModelConfig

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, qkv_bias=True)


def _setup(T=9):
    trees = {n: models.init_params(CFG, jax.random.key(i)) for i, n in enumerate(["ref", "nora", "policy"])}
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (3, T)), jnp.int32)
    mask = np.ones((3, T), np.int32)
    mask[1, :3] = 0
    return trees, tokens, jnp.asarray(mask)


def _reference(params, tokens, mask, temperature=1.0):
    lsm = jax.nn.log_softmax(models.forward(CFG, params, tokens, mask) / temperature, axis=-1)
    logp = jnp.take_along_axis(lsm[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    return np.asarray(jnp.pad(logp, ((0, 0), (1, 0)))), np.asarray(lsm)


def test_matches_full_logits_for_every_tree_and_chunking():
    trees, tokens, mask = _setup()
    for chunk in (None, 1, 3, 8):
        out = scoring.score(CFG, trees, tokens, mask, temperature=0.7, chunk=chunk)
        for name, p in trees.items():
            ref, _ = _reference(p, tokens, mask, 0.7)
            np.testing.assert_allclose(np.asarray(out[name]), ref, atol=1e-5)
    _, lsm_d = _reference(trees["policy"], tokens, mask)
    _, lsm_n = _reference(trees["nora"], tokens, mask)
    out = scoring.score(CFG, trees, tokens, mask)
    kl = np.sum(np.exp(lsm_d) * (lsm_d - lsm_n), axis=-1)[:, :-1]
    ent = -np.sum(np.exp(lsm_d) * lsm_d, axis=-1)[:, :-1]
    np.testing.assert_allclose(np.asarray(out["kl/policy_nora"])[:, 1:], kl, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["entropy/policy"])[:, 1:], ent, atol=1e-5)
    assert (np.asarray(out["kl/policy_nora"]) >= -1e-6).all()


def test_gradient_through_chunked_scoring_matches_unchunked():
    trees, tokens, mask = _setup()

    def loss(p, chunk):
        return scoring.token_logprobs(CFG, {"policy": p}, tokens, mask, kl=None, chunk=chunk)["policy"].sum()

    g_ref = jax.grad(lambda p: jnp.asarray(_reference_sum(p, tokens, mask)))(trees["policy"])
    for chunk in (2, 5):
        g = jax.grad(loss)(trees["policy"], chunk)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _reference_sum(p, tokens, mask):
    lsm = jax.nn.log_softmax(models.forward(CFG, p, tokens, mask), axis=-1)
    return jnp.take_along_axis(lsm[:, :-1], tokens[:, 1:, None], axis=-1).sum()


def test_scoring_from_a_column_equals_the_full_scores_there():
    trees, tokens, mask = _setup(T=11)
    full = scoring.score(CFG, trees, tokens, mask, temperature=0.7)
    for score_from, chunk in ((6, None), (6, 2), (10, None), (1, 3)):
        part = scoring.score(CFG, trees, tokens, mask, temperature=0.7, chunk=chunk, score_from=score_from)
        for key, value in full.items():
            np.testing.assert_allclose(np.asarray(part[key])[:, score_from:], np.asarray(value)[:, score_from:],
                                       atol=1e-5, err_msg=key)
            assert not np.asarray(part[key])[:, :score_from].any(), key

    def loss(p, score_from):
        out = scoring.token_logprobs(CFG, {"policy": p}, tokens, mask, kl=None, score_from=score_from)["policy"]
        return out[:, 7:].sum()

    for a, b in zip(jax.tree.leaves(jax.grad(loss)(trees["policy"], 1)), jax.tree.leaves(jax.grad(loss)(trees["policy"], 7))):
        np.testing.assert_allclose(a, b, atol=1e-5)
