"""Per-token log-probs, entropies and exact token KL of a rollout batch under several trees.

    scores = token_logprobs(config, {"ref": p_ref, "nora": p_nora, "policy": p}, tokens_BxT, mask_BxT)
    scores["policy"]            # [B, T] log pi(tokens[t] | tokens[<t]); column 0 is 0 (nothing predicts it)
    scores["entropy/policy"]    # [B, T] entropy of the distribution that produced tokens[t]
    scores["kl/policy_nora"]    # [B, T] exact full-vocabulary KL(policy || nora) at the same positions

All in float32. Each tree's decoder runs once to final hidden states [B, T, D]; logits are
then formed chunk by chunk along the sequence inside a rematerialised scan, so at most
`len(trees_in_a_kl_pair) * B * chunk * V` logits exist at once (never a whole [B, T, V]
per tree), also in the backward pass when the policy's log-probs are differentiated.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from dora_jax import sharding
from dora_jax.models import ModelConfig, apply, positions_from_mask, unembed
from dora_jax.models.decoder import Params


def _head(config: ModelConfig, params: Params) -> Params:
    keep = ("embedding",) if config.tie_word_embeddings else ("lm_head",)
    return {k: params[k] for k in keep}


def default_chunk(T: int) -> int:
    """Half the sequence (so two trees' chunks fit in one [B, T, V]), at most 128 positions."""
    return max(1, min(128, (T - 1) // 2 if T > 2 else 1))


def token_logprobs(config: ModelConfig, params_by_tree: Mapping[str, Params], tokens_BxT: jax.Array,
                   mask_BxT: jax.Array, *, temperature: float = 1.0, kl: tuple[str, str] | None = ("policy", "nora"),
                   entropy_of: tuple[str, ...] = ("policy",), chunk: int | None = None,
                   score_from: int = 1) -> dict[str, jax.Array]:
    """Scores `tokens_BxT` (prompt + response, padding marked 0 in `mask_BxT`) under each tree.

    `temperature` divides the logits first, as the sampler does, so scores equal the
    sampler's recorded log-probs. `kl=(p, q)` adds "kl/p_q" when both trees are given.
    `score_from`: the first column scored (the response's, in a rollout batch); earlier columns
    are 0 and no logits are formed for them (a long prompt costs no [B, P, V] head).
    """
    B, T = tokens_BxT.shape
    start = min(max(score_from, 1), T - 1) - 1  # hidden state `start` predicts column score_from
    positions = positions_from_mask(mask_BxT)
    hidden = {name: apply(config, p, tokens_BxT, positions, mask_BxT, return_hidden=True)[0]
              for name, p in params_by_tree.items()}
    heads = {name: _head(config, p) for name, p in params_by_tree.items()}
    kl = kl if kl is not None and all(k in params_by_tree for k in kl) else None
    entropy_of = tuple(n for n in entropy_of if n in params_by_tree)

    C = chunk or default_chunk(T - start)
    n_chunks = -(-(T - 1 - start) // C)
    # Position t's hidden state predicts token t + 1.
    targets_NxBxC = _chunks(tokens_BxT[:, start + 1:], C, n_chunks)
    hidden_NxBxCxD = {name: _chunks(h[:, start:-1], C, n_chunks) for name, h in hidden.items()}

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk_stats(h_by_tree, tgt_BxC):
        out = {}
        logp_full = {}
        for name, h in h_by_tree.items():
            # f32 log-softmax: bf16 log-probs are too coarse for importance ratios and KL.
            with sharding.vocab_parallel():
                logits = unembed(config, heads[name], sharding.constrain(h, ("batch", "length", "embed")))
            logits = logits / temperature
            lsm = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            out[name] = jnp.take_along_axis(lsm, tgt_BxC[..., None], axis=-1)[..., 0]
            if name in entropy_of:
                out[f"entropy/{name}"] = -jnp.sum(jnp.exp(lsm) * lsm, axis=-1)
            if kl and name in kl:
                logp_full[name] = lsm
        if kl:
            p, q = kl
            out[f"kl/{p}_{q}"] = jnp.sum(jnp.exp(logp_full[p]) * (logp_full[p] - logp_full[q]), axis=-1)
        return out

    stats_NxBxC = jax.lax.map(lambda xs: chunk_stats(*xs), (hidden_NxBxCxD, targets_NxBxC))
    return {k: jnp.pad(v.transpose(1, 0, 2).reshape(B, n_chunks * C)[:, : T - 1 - start], ((0, 0), (1 + start, 0)))
            for k, v in stats_NxBxC.items()}


def _chunks(x_BxTx: jax.Array, C: int, n_chunks: int) -> jax.Array:
    """[B, T, ...] -> [n_chunks, B, C, ...], the sequence zero-padded to n_chunks * C."""
    B, T = x_BxTx.shape[:2]
    pad = [(0, 0), (0, n_chunks * C - T)] + [(0, 0)] * (x_BxTx.ndim - 2)
    x = jnp.pad(x_BxTx, pad).reshape(B, n_chunks, C, *x_BxTx.shape[2:])
    return jnp.moveaxis(x, 1, 0)


@functools.partial(jax.jit, static_argnames=("config", "temperature", "kl", "entropy_of", "chunk", "score_from"))
def score(config: ModelConfig, params_by_tree: Mapping[str, Params], tokens_BxT, mask_BxT, *, temperature: float = 1.0,
          kl: tuple[str, str] | None = ("policy", "nora"), entropy_of: tuple[str, ...] = ("policy",),
          chunk: int | None = None, score_from: int = 1) -> dict[str, jax.Array]:
    """Jitted `token_logprobs`: one XLA call for all trees."""
    return token_logprobs(config, params_by_tree, tokens_BxT, mask_BxT, temperature=temperature, kl=kl,
                          entropy_of=entropy_of, chunk=chunk, score_from=score_from)
