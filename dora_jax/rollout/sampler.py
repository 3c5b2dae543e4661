"""Jitted KV-cache sampling: one policy, or a handover between two.

    rollout = sample(config, (params,), prompt_BxP, prompt_mask_BxP, rngs_B, max_new_tokens=256,
                     temperature=1.0, top_p=0.95, stop_ids=(eos,))
    rollout.tokens_BxN, rollout.logp_BxN, rollout.mask_BxN, rollout.lengths_B, rollout.finish_B

Shapes: B rows, P (left-padded) prompt length, N = max_new_tokens, K policies, V vocabulary.

Row i depends only on its key `rngs_B[i]`, the real tokens of its prompt and the parameters:
decode step t draws with `fold_in(rngs_B[i], t)`, positions skip padding and padded cache
slots are masked out of attention, so neither the padding a row got nor its batch-mates
change its tokens.

Parameters laid out over several processes (a multi-process run) are sampled by all of them
together: every process passes the same rows and receives the whole rollout.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dora_jax import distributed, scoring, sharding
from dora_jax.models import ModelConfig, init_cache, positions_from_mask
from dora_jax.models.decoder import Params, forward_with_layer_caches, layer_params
from dora_jax.models.lm import logical_specs

FINISH_STOP = 0  # a stop id was emitted (it is part of the response, mask 1)
FINISH_LENGTH = 1  # max_new_tokens were emitted without a stop id
# Decode caches grow in at most MAX_PHASES phases of at least PHASE_TOKENS response slots (see `_sample`).
PHASE_TOKENS, MAX_PHASES = 32, 4


class Rollout(NamedTuple):
    """Responses of one `sample` call. Where `mask_BxN` is 0 (after a stop) tokens are `pad_id` and log-probs 0."""

    tokens_BxN: jax.Array  # int32
    logp_BxN: jax.Array  # f32 log-prob under the policy that drew the token
    policy_BxN: jax.Array  # int32 policy that draws step t (the schedule, also after a row stops)
    mask_BxN: jax.Array  # int32 1 on emitted tokens, the stop token included
    lengths_B: jax.Array  # int32 emitted tokens per row
    finish_B: jax.Array  # int32 FINISH_STOP or FINISH_LENGTH


def _ordered_int32(x: jax.Array) -> jax.Array:
    """Maps float32 to int32 keeping the order, so thresholds can be bisected over exact values."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _highest_threshold(keys_BxV: jax.Array, lo_Bx1: jax.Array, measure, target: float) -> jax.Array:
    """Largest int32 threshold h >= lo with `measure(keys_BxV >= h) >= target` (measure falls as h rises).

    32 halvings of the int32 range give the exact threshold, and cost a few [B, V]
    elementwise passes instead of the [B, V] sort that dominated a CPU decode step.
    """
    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (((lo & 1) + (hi & 1) + 1) >> 1)  # ceil((lo + hi) / 2) without overflow
        ok = measure(keys_BxV >= mid) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    return jax.lax.fori_loop(0, 32, halve, (lo_Bx1, jnp.max(keys_BxV, axis=-1, keepdims=True)))[0]


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets every logit outside the top-k, then outside the nucleus, to -inf.

    top_k = 0 keeps all tokens. The nucleus is the smallest prefix of the tokens sorted by
    probability (renormalised over the top-k) whose mass reaches top_p; it always holds the
    most likely token. Tokens tied with the last kept logit are kept too.
    """
    use_k, use_p = 0 < top_k < logits_BxV.shape[-1], top_p < 1.0
    if not (use_k or use_p):
        return logits_BxV
    keys_BxV = _ordered_int32(logits_BxV)
    cutoff_Bx1 = jnp.min(keys_BxV, axis=-1, keepdims=True)
    if use_k:
        cutoff_Bx1 = _highest_threshold(keys_BxV, cutoff_Bx1, lambda kept: jnp.sum(kept, -1, keepdims=True), top_k)
    if use_p:
        probs_BxV = jax.nn.softmax(jnp.where(keys_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf), axis=-1)
        cutoff_Bx1 = _highest_threshold(keys_BxV, cutoff_Bx1,
                                        lambda kept: jnp.sum(jnp.where(kept, probs_BxV, 0.0), -1, keepdims=True), top_p)
    return jnp.where(keys_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf)


def sample(config: ModelConfig, policies: tuple[Params, ...], prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
           rngs_B: jax.Array, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           stop_ids: tuple[int, ...] = (), pad_id: int = 0, handover_window: int = 0,
           rules: sharding.Rules = sharding.DEFAULT_RULES, group: int = 1) -> Rollout:
    """Samples up to `max_new_tokens` per left-padded prompt from one policy, or two in handover.

    `rngs_B` holds one typed key per row. Recorded log-probs are those of the token under
    softmax(logits / temperature) BEFORE top-k / top-p filtering, which is what
    `scoring.score(..., temperature=temperature)` computes for the trainer. temperature = 0
    decodes greedily and records log-probs at temperature 1 (score with temperature=1.0).

    Handover (paper §5.2): with two policies and `handover_window` = w > 0, step t is drawn
    from policy (t // w) % 2, policy 0 first. Both policies keep their own KV cache over the
    whole context, so both log-probs of every token are recorded.

    `group` = g > 1 says rows come in runs of g with the same prompt (a GRPO group, or a problem's
    samples): each prompt is prefilled once and its caches repeated for the run's rows.

    Parameters placed on a mesh of several devices are sampled there, laid out by `rules`: the
    rows (prompts, keys, KV caches, activations) split over the `batch` axes, heads over
    `tensor`; the parameters are cast to the compute dtype and gathered over the row axes once
    per call (not per decoded token). A rollout spread over several processes comes back
    whole (numpy) on each.

    Compiled once per config, shapes and settings: the settings are normalised here so that
    equal settings spelled differently (a list of stop ids, an omitted default) share it.
    Compile time grows with the depth (layers are unrolled, see `forward_with_layer_caches`) and with the
    number of cache phases (up to MAX_PHASES, see `_sample`).
    """
    K = len(policies)
    if K not in (1, 2):
        raise ValueError(f"sample takes 1 policy, or 2 for handover; got {K}.")
    if (K == 2) != (handover_window > 0):
        raise ValueError(f"handover_window={handover_window} with {K} policies: handover needs exactly 2 policies "
                         "and a window > 0 (a mixture of whole responses samples each policy with its own call).")
    if group < 1 or len(prompt_BxP) % group:
        raise ValueError(f"group={group} must be >= 1 and divide the {len(prompt_BxP)} rows.")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 1; got "
                         f"{temperature}, {top_p}, {top_k}, {max_new_tokens}.")
    layout = layout_of(policies, rules)
    rows = None
    static = _static_args(max_new_tokens, temperature, top_p, top_k, stop_ids, pad_id, handover_window, group)
    if layout is not None:
        rows = row_sharding(layout, len(prompt_BxP))
        prompt_BxP, prompt_mask_BxP = distributed.global_arrays((prompt_BxP, prompt_mask_BxP), (rows, rows))
        # Typed keys cannot be placed across processes; their raw data can.
        rngs_B = jax.random.wrap_key_data(distributed.global_arrays(jax.random.key_data(rngs_B), rows),
                                          impl=jax.random.key_impl(rngs_B))
    rollout = _sample(config, tuple(policies), prompt_BxP, prompt_mask_BxP, rngs_B, *static, layout)
    return _whole(rollout, rows)  # every process scores the whole rollout, so rewards and batches agree everywhere


def score(config: ModelConfig, params: Params, prompt_BxP, prompt_mask_BxP, tokens_BxN, mask_BxN, *,
          temperature: float = 1.0, rules: sharding.Rules = sharding.DEFAULT_RULES) -> np.ndarray:
    """Log-probs [B, N] of given responses under `params`, as `sample` records them for the tokens it draws
    (softmax(logits / temperature), the full distribution; 0 where `mask_BxN` is 0): another policy's responses
    scored as if this one had drawn them. Laid out like `sample`, and whole (numpy) on every process."""
    prompt_len = np.shape(prompt_BxP)[1]
    tokens_BxT = np.concatenate([np.asarray(prompt_BxP), np.asarray(tokens_BxN)], axis=1).astype(np.int32)
    mask_BxT = np.concatenate([np.asarray(prompt_mask_BxP), np.asarray(mask_BxN)], axis=1).astype(np.int32)
    layout = layout_of((params,), rules)
    rows = None
    if layout is not None:
        rows = row_sharding(layout, len(tokens_BxT))
        tokens_BxT, mask_BxT = distributed.global_arrays((tokens_BxT, mask_BxT), (rows, rows))
    logp_BxT = _whole(_score(config, params, tokens_BxT, mask_BxT, float(temperature or 1.0), prompt_len, layout), rows)
    return np.asarray(logp_BxT)[:, prompt_len:] * np.asarray(mask_BxN, np.float32)


def _whole(tree, rows: NamedSharding | None):
    """`tree`, laid out by `rows`, whole on this process: a collective only where some rows live on another."""
    return tree if rows is None or rows.is_fully_addressable else distributed.to_host(tree)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _score(config: ModelConfig, params: Params, tokens_BxT, mask_BxT, temperature: float, prompt_len: int,
           layout: sharding.Layout | None) -> jax.Array:
    with sharding.use(layout):
        return scoring.token_logprobs(config, {"policy": params}, tokens_BxT, mask_BxT, temperature=temperature,
                                      kl=None, entropy_of=(), score_from=prompt_len)["policy"]


def _static_args(max_new_tokens, temperature, top_p, top_k, stop_ids, pad_id, handover_window, group=1) -> tuple:
    return (int(max_new_tokens), float(temperature), float(top_p), int(top_k), tuple(int(i) for i in stop_ids),
            int(pad_id), int(handover_window), int(group))


def lower(config: ModelConfig, policies: tuple[Params, ...], prompt_BxP, prompt_mask_BxP, rngs_B, *,
          layout: sharding.Layout | None, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
          top_k: int = 0, stop_ids: tuple[int, ...] = (), pad_id: int = 0, handover_window: int = 0, group: int = 1):
    """The program `sample` runs, lowered for abstract arguments (`jax.ShapeDtypeStruct`s with shardings) on
    `layout`: `.compile().memory_analysis()` measures it without running it."""
    static = _static_args(max_new_tokens, temperature, top_p, top_k, stop_ids, pad_id, handover_window, group)
    return _sample.lower(config, tuple(policies), prompt_BxP, prompt_mask_BxP, rngs_B, *static, layout)


def layout_of(policies: tuple[Params, ...], rules: sharding.Rules) -> sharding.Layout | None:
    """The layout sampling runs under: the parameters' mesh when they are placed on several devices."""
    placed = getattr(jax.tree.leaves(policies)[0], "sharding", None)
    if isinstance(placed, NamedSharding) and placed.mesh.size > 1:
        return sharding.Layout.of(placed.mesh, rules)
    return None


def row_sharding(layout: sharding.Layout, rows: int) -> NamedSharding:
    """Rows split over the `batch` axes that divide them (with a row axis first: [B, ...] arrays of any rank)."""
    return NamedSharding(layout.mesh, sharding.resolve_spec(P("batch"), (rows,), layout.mesh, layout.rules))


def _compute_tree(config: ModelConfig, params: Params, names: Params) -> Params:
    """The parameters as decoding reads them: in the compute dtype, gathered over the row axes (see `sample`)."""
    return jax.tree.map(lambda w, n: sharding.gather(w, tuple(n), jnp.dtype(config.dtype)), params, names,
                        is_leaf=lambda x: isinstance(x, P))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11, 12, 13))
def _sample(config: ModelConfig, policies: tuple[Params, ...], prompt_BxP, prompt_mask_BxP, rngs_B, N: int,
            temperature: float, top_p: float, top_k: int, stop_ids: tuple[int, ...], pad_id: int,
            handover_window: int, group: int, layout: sharding.Layout | None) -> Rollout:
    names = logical_specs(config)
    with sharding.use(layout):
        return _decode(config, tuple(_compute_tree(config, p, names) for p in policies), prompt_BxP, prompt_mask_BxP, rngs_B,
                       N, temperature, top_p, top_k, stop_ids, pad_id, handover_window, group)


def _decode(config: ModelConfig, policies: tuple[Params, ...], prompt_BxP, prompt_mask_BxP, rngs_B, N: int,
            temperature: float, top_p: float, top_k: int, stop_ids: tuple[int, ...], pad_id: int,
            handover_window: int, group: int = 1) -> Rollout:
    K = len(policies)
    B, P = prompt_BxP.shape
    greedy = temperature == 0
    scale = 1.0 if greedy else temperature
    stop_S = jnp.asarray(stop_ids, jnp.int32)

    # Loop invariants, hoisted: every response slot is visible (causality hides future ones),
    # and step t's input sits at position prompt_len + t - 1 whatever the padding. S = P + N.
    prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)
    kv_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.ones((B, N), jnp.int32)], axis=1)
    prompt_len_Bx1 = jnp.sum(prompt_mask_BxP, axis=1, keepdims=True)
    policy_N = (jnp.arange(N, dtype=jnp.int32) // max(handover_window, 1)) % K

    def draw(logits_KxBxV, t):
        """Step t's token for every row and its log-prob [K, B] under each policy."""
        # f32 temperature scaling and log-softmax: the recorded log-probs feed importance ratios.
        scaled_KxBxV = logits_KxBxV if scale == 1.0 else logits_KxBxV / scale
        drawn_BxV = scaled_KxBxV[0] if K == 1 else scaled_KxBxV[policy_N[t]]
        if greedy:
            token_B = jnp.argmax(drawn_BxV, axis=-1).astype(jnp.int32)
        else:
            filtered_BxV = filter_logits(drawn_BxV, top_k, top_p)
            token_B = jax.vmap(lambda key, row: jax.random.categorical(jax.random.fold_in(key, t), row))(
                rngs_B, filtered_BxV).astype(jnp.int32)
        picked_KxB = jnp.take_along_axis(scaled_KxBxV, jnp.broadcast_to(token_B[None, :, None], (K, B, 1)),
                                         axis=-1)[..., 0]
        return token_B, picked_KxB - jax.nn.logsumexp(scaled_KxBxV, axis=-1)

    def emit(t, logits_KxBxV, done_B, out):
        """Draws step t, blanks rows already stopped, and writes row t of the [N, ...] buffers."""
        token_B, logp_KxB = draw(logits_KxBxV, t)
        token_B = jnp.where(done_B, pad_id, token_B)
        logp_KxB = jnp.where(done_B[None], 0.0, logp_KxB)
        tokens_NxB, logp_NxKxB, mask_NxB = out
        out = (tokens_NxB.at[t].set(token_B), logp_NxKxB.at[t].set(logp_KxB),
               mask_NxB.at[t].set((~done_B).astype(jnp.int32)))
        return token_B, done_B | jnp.any(token_B[:, None] == stop_S[None, :], axis=-1), out

    # Prefill every policy's cache with the prompt (once per run of `group` rows sharing it), then draw
    # step 0 from the last position. The prompt attends over its own P slots only; the N response
    # slots are appended afterwards.
    layers_by_policy = [layer_params(config, params) for params in policies]
    empty = init_cache(config, B // group, P)
    empty = [{"k": empty["k"][i], "v": empty["v"][i]} for i in range(config.num_layers)]
    unique_mask = prompt_mask_BxP[::group]
    prefilled = [forward_with_layer_caches(config, params, layers, empty, prompt_BxP[::group],
                                           positions_from_mask(unique_mask), unique_mask, 0)
                 for params, layers in zip(policies, layers_by_policy)]
    repeat = (lambda x: x) if group == 1 else (lambda x: jnp.repeat(x, group, axis=0))
    logits_KxBxV = jnp.stack([repeat(logits) for logits, _ in prefilled])
    caches = tuple(jax.tree.map(repeat, cache) for _, cache in prefilled)
    out = (jnp.full((N, B), pad_id, jnp.int32), jnp.zeros((N, K, B), jnp.float32), jnp.zeros((N, B), jnp.int32))
    token_B, done_B, out = emit(0, logits_KxBxV, jnp.zeros((B,), bool), out)

    def decode(state, end):
        """Steps t < end with caches of P + end slots; stops early once every row is done."""
        phase_kv_mask = kv_mask_BxS[:, :P + end]

        def body(state):
            t, caches, token_B, done_B, out = state
            # Feed step t-1's token into slot P + t - 1 of every policy's cache.
            stepped = [forward_with_layer_caches(config, params, layers, cache, token_B[:, None],
                                                 prompt_len_Bx1 + t - 1, phase_kv_mask, P + t - 1)
                       for params, layers, cache in zip(policies, layers_by_policy, caches)]
            token_B, done_B, out = emit(t, jnp.stack([logits for logits, _ in stepped]), done_B, out)
            return t + 1, tuple(cache for _, cache in stepped), token_B, done_B, out

        t, caches, token_B, done_B, out = state
        caches = jax.tree.map(lambda x: jnp.pad(x, ((0, 0), (0, P + end - x.shape[1]), (0, 0), (0, 0))), caches)
        return jax.lax.while_loop(lambda s: (s[0] < end) & ~jnp.all(s[3]), body, (t, caches, token_B, done_B, out))

    # Attention reads every cache slot, so the response slots are appended in phases: a phase's
    # steps attend over P + (its end) slots, not P + N. Each phase is one more compiled loop.
    state = (jnp.int32(1), caches, token_B, done_B, out)
    chunk = max(PHASE_TOKENS, -(-N // MAX_PHASES))
    for end in [*range(chunk, N, chunk), N]:
        state = decode(state, end)
    _, _, _, done_B, (tokens_NxB, logp_NxKxB, mask_NxB) = state

    logp_BxNxK = jnp.transpose(logp_NxKxB, (2, 0, 1))  # every policy scores every token (each feeds its cache)
    policy_BxN = jnp.broadcast_to(policy_N[None, :], (B, N))
    mask_BxN = mask_NxB.T
    return Rollout(
        tokens_BxN=tokens_NxB.T,
        logp_BxN=jnp.take_along_axis(logp_BxNxK, policy_BxN[..., None], axis=-1)[..., 0],
        policy_BxN=policy_BxN,
        mask_BxN=mask_BxN,
        lengths_B=jnp.sum(mask_BxN, axis=1),
        finish_B=jnp.where(done_B, FINISH_STOP, FINISH_LENGTH).astype(jnp.int32),
    )
