"""Tests for dora_jax.eval.passk: pass@k against brute-force enumeration, hand values, diversity."""

import itertools
import math

import numpy as np
import pytest

from dora_jax.eval import distinct_correct_strategies, ks_up_to, mixed_pass_at_k, pass_at_k, strategy_entropy


def brute_pass(n, c, k):
    """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 6, 3) == 1.0  # fewer than k wrong samples
    assert pass_at_k(8, 3, 0) == 0.0


def test_pass_at_k_equals_brute_force():
    n = 8
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass(n, c, k), abs=1e-12)


def test_pass_at_k_vectorised_and_stable():
    n_P, c_P = np.array([8, 8, 5, 16]), np.array([0, 3, 2, 16])
    np.testing.assert_allclose(pass_at_k(n_P, c_P, 2), [brute_pass(n, c, 2) for n, c in zip(n_P, c_P)])
    assert pass_at_k(n_P, c_P, 2).shape == (4,)
    # Large n: binomials overflow float64 but the product form does not.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - math.comb(1997, 1000) / math.comb(2000, 1000))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_ks_up_to():
    assert ks_up_to(1) == [1]
    assert ks_up_to(8) == [1, 2, 4, 8]
    assert ks_up_to(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        ks_up_to(0)


def test_mixed_pass_at_k_hand_value_and_brute_force():
    # [C(3,2)/C(4,2)] * [C(2,2)/C(4,2)] = (1/2) * (1/6).
    assert mixed_pass_at_k(4, 1, 2, 4, 2, 2) == pytest.approx(11 / 12)
    n_a, n_b = 5, 4
    for c_a, c_b, k_a, k_b in itertools.product(range(n_a + 1), range(n_b + 1), range(n_a + 1), range(n_b + 1)):
        pairs = list(itertools.product(itertools.combinations(range(n_a), k_a),
                                       itertools.combinations(range(n_b), k_b)))
        brute = sum(any(i < c_a for i in sa) or any(j < c_b for j in sb) for sa, sb in pairs) / len(pairs)
        assert mixed_pass_at_k(n_a, c_a, k_a, n_b, c_b, k_b) == pytest.approx(brute, abs=1e-12)


def test_mixed_reduces_to_single_policy():
    assert mixed_pass_at_k(8, 3, 4, 8, 5, 0) == pytest.approx(pass_at_k(8, 3, 4))
    np.testing.assert_allclose(mixed_pass_at_k(np.array([8, 8]), np.array([1, 2]), 2, 8, 0, 2),
                               pass_at_k(np.array([8, 8]), np.array([1, 2]), 2))


def test_strategy_entropy_golden_values():
    assert strategy_entropy([[0, 1, 2, 3]]) == pytest.approx(2.0)
    assert strategy_entropy([[1, 1, 1, 1]]) == 0.0
    assert strategy_entropy([[0, 0, 1, 1], [2, 2, 2, 2]]) == pytest.approx(0.5)  # mean of 1 and 0 bits
    # Per problem, not pooled: a different single strategy per problem is collapsed (0), not 2 bits.
    assert strategy_entropy([[0, 0], [1, 1], [2, 2], [3, 3]]) == 0.0
    # -1 (no strategy) never counts; with rewards only correct samples count; empty problems are skipped.
    assert strategy_entropy([[0, 1, -1, -1]]) == pytest.approx(1.0)
    assert strategy_entropy([[0, 1, 2, 3], [0, 1, 2, 3]], [[1, 1, 0, 0], [0, 0, 0, 0]]) == pytest.approx(1.0)
    assert strategy_entropy([[0, 1]], [[0, 0]]) == 0.0
    with pytest.raises(ValueError):
        strategy_entropy([[0, 10]], num_strategies=10)


def test_distinct_correct_strategies():
    strategies = [[0, 1, 1, -1], [2, 2, 2, 2], [0, 1, 2, 3]]
    rewards = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert distinct_correct_strategies(strategies, rewards) == pytest.approx((2 + 1 + 0) / 3)
    with pytest.raises(ValueError):
        distinct_correct_strategies(strategies, [[1, 1]])
