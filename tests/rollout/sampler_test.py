"""Sampler invariants: scorer parity, greedy = argmax recompute, filtering, padding, stops, handover, mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dora_jax import models, rollout, scoring
from dora_jax.models import ModelConfig
from dora_jax.rollout import sampler

CFG = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=12)
B, P, N = 4, 7, 9  # rows, padded prompt length, new tokens
FILTERED = (1.5, 20, 0.9)  # temperature, top_k, top_p; tests share shapes and settings to share compilations
FILTER = jax.jit(rollout.filter_logits, static_argnums=(1, 2))


@pytest.fixture(scope="module")
def params():
    return models.init_params(CFG, jax.random.key(0)), models.init_params(CFG, jax.random.key(1))


def _prompts(lengths, P=P, seed=0):
    """Left-padded random prompts with the given real lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (len(lengths), P)).astype(np.int32)
    mask = (np.arange(P)[None, :] >= P - np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(tokens * mask), jnp.asarray(mask)


def _keys(n, seed=1):
    return jax.random.split(jax.random.key(seed), n)


def _full(prompt, prompt_mask, out):
    return jnp.concatenate([prompt, out.tokens_BxN], axis=1), jnp.concatenate([prompt_mask, out.mask_BxN], axis=1)


def _scored(params, prompt, prompt_mask, out, temperature):
    tokens, mask = _full(prompt, prompt_mask, out)
    logp = scoring.score(CFG, {"dora": params}, tokens, mask, temperature=temperature, kl=None, entropy_of=())["dora"]
    return np.asarray(logp[:, prompt.shape[1]:])


def _allowed(logits_V, top_k, top_p):
    """Reference filter from the definitions: top-k by logit, then the smallest top-p prefix by probability."""
    order = np.argsort(-logits_V)
    kept = order[:top_k] if top_k else order
    probs = np.exp(logits_V[kept] - logits_V[kept].max())
    probs /= probs.sum()
    n = int(np.searchsorted(np.cumsum(probs), top_p) + 1) if top_p < 1 else len(kept)
    return set(kept[:min(n, len(kept))].tolist())


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 0, 1.0), FILTERED])
def test_logprobs_equal_scorer(params, temperature, top_k, top_p):
    prompt, mask = _prompts([7, 3, 5, 1])
    out = rollout.sample(CFG, params[:1], prompt, mask, _keys(B), max_new_tokens=N, temperature=temperature,
                         top_k=top_k, top_p=top_p)
    on = np.asarray(out.mask_BxN).astype(bool)
    assert on.all()  # no stop ids: every row runs the full budget
    # Recorded log-probs are pre-filter, temperature-scaled: exactly what the trainer scores.
    ref = _scored(params[0], prompt, mask, out, temperature)
    assert np.abs(np.asarray(out.logp_BxN) - ref)[on].max() <= 1e-4
    # `score` records given responses as `sample` records its own (guided groups rely on it).
    again = sampler.score(CFG, params[0], prompt, mask, out.tokens_BxN, out.mask_BxN, temperature=temperature)
    assert np.abs(np.asarray(out.logp_BxN) - again).max() <= 1e-4
    np.testing.assert_array_equal(np.asarray(out.policy_BxN), 0)
    np.testing.assert_array_equal(np.asarray(out.finish_B), rollout.FINISH_LENGTH)


def test_greedy_is_argmax_of_full_recompute(params):
    prompt, mask = _prompts([7, 2, 4, 6])
    n = sampler.PHASE_TOKENS + 5  # the caches grow once on the way
    out = rollout.sample(CFG, params[:1], prompt, mask, _keys(B), max_new_tokens=n, temperature=0.0)
    tokens, full_mask = _full(prompt, mask, out)
    # By causality, position P - 1 + t of one full pass is the step-t recompute from scratch.
    logits = models.forward(CFG, params[0], tokens, full_mask)[:, P - 1:-1]
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), np.asarray(logits).argmax(-1))
    # Greedy log-probs are recorded at temperature 1.
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), out.tokens_BxN[..., None], axis=-1)[..., 0]
    assert np.abs(np.asarray(out.logp_BxN - logp)).max() <= 1e-4


@pytest.mark.parametrize("top_k,top_p", [(1, 1.0), (7, 1.0), (0, 0.3), (0, 0.9), (10, 0.5)])
def test_filter_logits_keeps_exactly_the_allowed_set(top_k, top_p):
    rng = np.random.default_rng(top_k * 100 + int(top_p * 10))
    for scale in (0.3, 2.0, 8.0):  # flat to peaked distributions
        logits = (rng.standard_normal((16, CFG.vocab_size)) * scale).astype(np.float32)
        kept = np.isfinite(np.asarray(FILTER(jnp.asarray(logits), top_k, top_p)))
        for row, keep in zip(logits, kept):
            assert set(np.flatnonzero(keep).tolist()) == _allowed(row, top_k, top_p)
            # The defining properties: most likely first, enough mass, and no token more than needed.
            assert row[keep].min() > row[~keep].max(initial=-np.inf)
            probs = np.exp(row - row.max())
            probs /= probs[np.argsort(-row)[:top_k or None]].sum()
            assert probs[keep].sum() >= top_p - 1e-6
            assert probs[keep].sum() - probs[keep].min() < top_p or keep.sum() == 1


def test_sampling_never_leaves_the_filtered_set(params):
    temperature, top_k, top_p = FILTERED
    prompt, mask = _prompts([7, 3, 5, 1])
    out = rollout.sample(CFG, params[:1], prompt, mask, _keys(B, seed=2), max_new_tokens=N, temperature=temperature,
                         top_k=top_k, top_p=top_p)
    tokens, full_mask = _full(prompt, mask, out)
    logits = np.asarray(models.forward(CFG, params[0], tokens, full_mask))[:, P - 1:-1] / temperature
    sampled = np.asarray(out.tokens_BxN)
    for b in range(B):
        for t in range(N):
            assert sampled[b, t] in _allowed(logits[b, t], top_k, top_p)


def test_rows_ignore_padding_and_batch_mates(params):
    lengths = [3, 6, 3, 6]
    temperature, top_k, top_p = FILTERED
    kwargs = dict(max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p)
    prompt, mask = _prompts(lengths)
    keys = _keys(B)
    batch = rollout.sample(CFG, params[:1], prompt, mask, keys, **kwargs)
    for b, n in enumerate(lengths):
        alone = rollout.sample(CFG, params[:1], prompt[b:b + 1, P - n:], mask[b:b + 1, P - n:], keys[b:b + 1], **kwargs)
        np.testing.assert_array_equal(np.asarray(alone.tokens_BxN[0]), np.asarray(batch.tokens_BxN[b]))
        np.testing.assert_array_equal(np.asarray(alone.mask_BxN[0]), np.asarray(batch.mask_BxN[b]))
        np.testing.assert_allclose(np.asarray(alone.logp_BxN[0]), np.asarray(batch.logp_BxN[b]), atol=1e-5)


def test_stop_ids_end_rows_and_the_loop(params, monkeypatch):
    # A third of the vocabulary stops, so rows end at different steps and all end well before the budget.
    stop_ids = tuple(range(0, CFG.vocab_size, 3))
    budget = 40
    forwards = []
    counted = sampler.forward_with_layer_caches

    def counting_forward(*args, **kwargs):
        jax.debug.callback(lambda: forwards.append(1))
        return counted(*args, **kwargs)

    monkeypatch.setattr(sampler, "forward_with_layer_caches", counting_forward)
    config = CFG.replace(rms_norm_eps=1e-5)  # a config of its own, so `sample` retraces with the counter
    prompt, mask = _prompts([7, 3, 5, 1] * 2)
    out = rollout.sample(config, params[:1], prompt, mask, _keys(8), max_new_tokens=budget, stop_ids=stop_ids,
                         pad_id=-1)
    jax.effects_barrier()
    tokens, on = np.asarray(out.tokens_BxN), np.asarray(out.mask_BxN).astype(bool)
    for b in range(8):
        stops = np.flatnonzero(np.isin(tokens[b], stop_ids))
        assert len(stops) >= 1
        first = stops[0]
        assert out.lengths_B[b] == first + 1 == on[b].sum() and on[b, :first + 1].all()
        assert out.finish_B[b] == rollout.FINISH_STOP
        assert (tokens[b, first + 1:] == -1).all()
        assert (np.asarray(out.logp_BxN)[b, first + 1:] == 0).all()
    assert int(out.lengths_B.max()) < budget
    # Prefill + one forward per decoded step up to the last row's stop, none after.
    assert len(forwards) == int(out.lengths_B.max())


def test_handover(params):
    w = 3
    prompt, mask = _prompts([7, 3, 5, 1])
    keys = _keys(B)
    kwargs = dict(max_new_tokens=N, temperature=1.0)
    plain = rollout.sample(CFG, params[:1], prompt, mask, keys, **kwargs)
    same = rollout.sample(CFG, (params[0], params[0]), prompt, mask, keys, handover_window=w, **kwargs)
    np.testing.assert_array_equal(np.asarray(same.policy_BxN), np.broadcast_to((np.arange(N) // w) % 2, (B, N)))
    np.testing.assert_array_equal(np.asarray(same.tokens_BxN), np.asarray(plain.tokens_BxN))
    np.testing.assert_allclose(np.asarray(same.logp_BxN), np.asarray(plain.logp_BxN), atol=1e-5)

    cache_size = sampler._sample._cache_size()
    mixed = rollout.sample(CFG, params, prompt, mask, keys, handover_window=w, **kwargs)
    assert sampler._sample._cache_size() == cache_size  # new params, same shapes: no recompile
    # Each token's log-prob is that of the policy whose window drew it.
    policy = np.asarray(mixed.policy_BxN)
    for k in range(2):
        scored = _scored(params[k], prompt, mask, mixed, 1.0)
        assert np.abs(np.where(policy == k, np.asarray(mixed.logp_BxN) - scored, 0)).max() <= 1e-4
    assert {0, 1} <= set(np.unique(policy[np.asarray(mixed.mask_BxN) > 0]))
    assert not np.array_equal(np.asarray(mixed.tokens_BxN), np.asarray(plain.tokens_BxN))

    with pytest.raises(ValueError, match="handover"):
        rollout.sample(CFG, params, prompt, mask, keys, **kwargs)


def test_a_shared_prefill_samples_what_separate_prefills_do(params):
    """group=g prefills each run of g rows sharing a prompt once; every row still draws with its own key."""
    prompt, mask = _prompts([7, 3])
    prompt, mask = jnp.repeat(prompt, 2, axis=0), jnp.repeat(mask, 2, axis=0)  # runs of 2 rows per prompt
    keys = _keys(4)
    alone = rollout.sample(CFG, (params[0],), prompt, mask, keys, max_new_tokens=N, temperature=1.0)
    shared = rollout.sample(CFG, (params[0],), prompt, mask, keys, max_new_tokens=N, temperature=1.0, group=2)
    np.testing.assert_array_equal(np.asarray(shared.tokens_BxN), np.asarray(alone.tokens_BxN))
    np.testing.assert_allclose(np.asarray(shared.logp_BxN), np.asarray(alone.logp_BxN), atol=1e-5)
    assert not np.array_equal(np.asarray(shared.tokens_BxN[0]), np.asarray(shared.tokens_BxN[1]))  # own keys
    with pytest.raises(ValueError, match="group=3 must be >= 1 and divide the 4 rows"):
        rollout.sample(CFG, (params[0],), prompt, mask, keys, max_new_tokens=N, group=3)
