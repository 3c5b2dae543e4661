"""The distillation corpus: Dora's correct samples (STaR), optionally only strategies Nora rarely uses."""

import types

import numpy as np
import pytest

from dora_jax.rollout.sft import DistillConfig, distill_corpus


class FakeEvaluator:
    """Two problems x 4 samples with chosen outcomes; tokens encode (problem, sample)."""

    def __init__(self, results):
        self.results = results
        self.task = types.SimpleNamespace(prompts=lambda problems: (np.array([[0, 7], [8, 9]]), np.array([[0, 1], [1, 1]])))

    def sample(self, params, problems, n, seed, desc=None):
        r = dict(self.results[params])
        tokens = np.arange(2 * n * 3).reshape(2, n, 3)
        return {**r, "tokens": tokens, "mask": np.ones_like(tokens)}


def _cfg(rare_only, rare_share=0.25, nora_replay=False):
    return DistillConfig(samples_per_problem=4, rare_only=rare_only, rare_share=rare_share, nora_replay=nora_replay)


RESULTS = {
    "dora": {"correct": np.array([[1, 1, 0, 1], [0, 0, 0, 1]], bool), "strategy": np.array([[0, 1, 1, 2], [0, 0, 0, -1]])},
    "nora": {"correct": np.ones((2, 4), bool), "strategy": np.array([[0, 0, 0, 1], [0, 0, 0, 0]])},
}


def test_star_filter_keeps_every_correct_sample():
    corpus = distill_corpus(FakeEvaluator(RESULTS), ["p0", "p1"], "dora", "nora", _cfg(False), 0)
    assert [(c[0], c[2]) for c in corpus] == [([7], 0), ([7], 1), ([7], 2), ([8, 9], -1)]
    assert corpus[1][1] == [3, 4, 5]  # problem 0, sample 1


def test_rare_only_keeps_strategies_nora_rarely_uses():
    corpus = distill_corpus(FakeEvaluator(RESULTS), ["p0", "p1"], "dora", "nora", _cfg(True), 0)
    # Nora uses strategy 0 in 3/4 and 1 in 1/4 of her samples on problem 0, never 2; -1 never counts.
    assert [c[2] for c in corpus] == [2]
    assert [c[2] for c in distill_corpus(FakeEvaluator(RESULTS), ["p0", "p1"], "dora", "nora", _cfg(True, 0.3), 0)] == [1, 2]


def test_nora_replay_adds_noras_own_correct_samples():
    corpus = distill_corpus(FakeEvaluator(RESULTS), ["p0", "p1"], "dora", "nora", _cfg(True, nora_replay=True), 0)
    # Dora's one rare sample, then Nora's 8 correct ones (strategies 0, 0, 0, 1 and 0, 0, 0, 0).
    assert [c[2] for c in corpus] == [2, 0, 0, 0, 1, 0, 0, 0, 0]
    assert corpus[5][0] == [8, 9]


def test_nothing_kept_is_a_clear_error():
    results = {**RESULTS, "dora": {**RESULTS["dora"], "correct": np.zeros((2, 4), bool)}}
    with pytest.raises(ValueError, match="kept none of Dora's 8 samples"):
        distill_corpus(FakeEvaluator(results), ["p0", "p1"], "dora", "nora", _cfg(False), 0)
