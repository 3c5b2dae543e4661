"""Unbiased pass@k, mixed pass@k of two policies, and per-problem strategy diversity (docs/design.md §8).

    pass_at_k(n_P, c_P, k)                              # [P]: n samples per problem, c correct
    mixed_pass_at_k(n_a, c_a, k_a, n_b, c_b, k_b)       # k_a samples of policy A plus k_b of policy B
    strategy_entropy(strategies_PxG, rewards_PxG)       # bits, per problem, averaged
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _fail_prob(n: int, c: int, k: int) -> float:
    """C(n - c, k) / C(n, k): k samples drawn without replacement from n all miss the c correct ones.

    Product form prod_{i=n-c+1..n} (1 - k/i): no huge binomials, so exact to float precision.
    """
    if not 0 <= c <= n or not 0 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 0 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 0.0
    return float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


_fail_prob_vec = np.vectorize(_fail_prob, otypes=[np.float64])


def pass_at_k(n: ArrayLike, c: ArrayLike, k: ArrayLike) -> np.ndarray | float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n - c, k) / C(n, k), elementwise (broadcasts)."""
    out = 1.0 - _fail_prob_vec(n, c, k)
    return float(out) if out.ndim == 0 else out


def mixed_pass_at_k(n_a: ArrayLike, c_a: ArrayLike, k_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike,
                    k_b: ArrayLike) -> np.ndarray | float:
    """pass@(k_a + k_b) of k_a samples from policy A and k_b from B, drawn independently:

    1 - [C(n_a - c_a, k_a) / C(n_a, k_a)] * [C(n_b - c_b, k_b) / C(n_b, k_b)].
    """
    out = 1.0 - _fail_prob_vec(n_a, c_a, k_a) * _fail_prob_vec(n_b, c_b, k_b)
    return float(out) if out.ndim == 0 else out


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself last."""
    if n < 1:
        raise ValueError(f"ks_up_to needs n >= 1, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def _counted_PxG(strategies_PxG: ArrayLike, rewards_PxG: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    strategies_PxG = np.asarray(strategies_PxG)
    if strategies_PxG.ndim != 2:
        raise ValueError(f"strategies must be [P, G], got shape {strategies_PxG.shape}")
    # Strategy -1 is "no recognised strategy" (docs/design.md §3, degenerate responses): never counted.
    counted_PxG = strategies_PxG >= 0
    if rewards_PxG is not None:
        rewards_PxG = np.asarray(rewards_PxG)
        if rewards_PxG.shape != strategies_PxG.shape:
            raise ValueError(f"rewards shape {rewards_PxG.shape} != strategies shape {strategies_PxG.shape}")
        counted_PxG &= rewards_PxG > 0
    return strategies_PxG, counted_PxG


def strategy_entropy(strategies_PxG: ArrayLike, rewards_PxG: ArrayLike | None = None, *,
                     num_strategies: int | None = None) -> float:
    """Mean over problems of the entropy (bits) of each problem's strategy histogram.

    Per problem, not pooled: a policy that uses a different single strategy on every problem
    is mode-collapsed yet has a high pooled entropy. With `rewards_PxG`, only correct samples
    (reward > 0) count. Problems with no counted sample are skipped; 0.0 if none is left.
    """
    strategies_PxG, counted_PxG = _counted_PxG(strategies_PxG, rewards_PxG)
    if num_strategies is not None and np.any(strategies_PxG >= num_strategies):
        raise ValueError(f"strategy ids must be < num_strategies={num_strategies}, got {strategies_PxG.max()}")
    entropies = []
    for strategies_G, counted_G in zip(strategies_PxG, counted_PxG):
        if counted_G.any():
            probs = np.unique(strategies_G[counted_G], return_counts=True)[1] / counted_G.sum()
            entropies.append(float(-np.sum(probs * np.log2(probs))))
    return float(np.mean(entropies)) if entropies else 0.0


def distinct_correct_strategies(strategies_PxG: ArrayLike, rewards_PxG: ArrayLike) -> float:
    """Mean over all problems of the number of distinct strategies among correct samples (0 if none is correct)."""
    strategies_PxG, counted_PxG = _counted_PxG(strategies_PxG, rewards_PxG)
    if strategies_PxG.shape[0] == 0:
        return 0.0
    return float(np.mean([len(np.unique(s_G[m_G])) for s_G, m_G in zip(strategies_PxG, counted_PxG)]))
