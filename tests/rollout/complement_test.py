"""The complementarity reward: rewards scaled by Nora's success on the problem, or in the response's strategy."""

import numpy as np
import pytest

from configs import common
from dora_jax.rollout import source
from dora_jax.rollout.sampler import Rollout


def _rollout(strategy_and_correct):
    """Rows whose first token is a strategy id and second token 1 when correct (what `_Task.score` reads)."""
    tokens = np.asarray(strategy_and_correct, np.int32)
    ones = np.ones_like(tokens)
    return Rollout(tokens, np.zeros(tokens.shape, np.float32), 0 * ones, ones, ones.sum(1), 0 * ones[:, 0])


class _Task:
    name, stop_ids, pad_id, strategy_names = "stub", (9,), 0, ("s0", "s1", "s2")

    def score(self, problems, tokens_BxN):
        tokens_BxN = np.asarray(tokens_BxN)
        return tokens_BxN[:, 1].astype(np.float32), np.ones(len(tokens_BxN), bool), tokens_BxN[:, 0]


# Nora's 4 samples of problem 0: strategy 0 correct twice, 1 and 2 wrong; of problem 1: strategy 1 correct once.
NORA = _rollout([[0, 1], [0, 1], [1, 0], [2, 0], [1, 1], [0, 0], [0, 0], [0, 0]])
# The policy's 2 samples of each, all correct: strategies 0 and 1 on problem 0, 1 and 2 on problem 1.
POLICY = _rollout([[0, 1], [1, 1], [1, 1], [2, 1]])


@pytest.mark.parametrize("by, weight, expected", [
    ("problem", 1.0, [0.5, 0.5, 0.75, 0.75]),  # 1 - her success on the problem
    ("strategy", 1.0, [0.5, 1.0, 0.75, 1.0]),  # 1 - her correct share in the strategy
    ("problem", 0.5, [0.75, 0.75, 0.875, 0.875]),  # 1 - 0.5 x her success
    ("modes", 1.0, [1 / 3, 2 / 3, 2 / 3, 1.0]),  # 1 - her batch-wide correct share in the strategy: 0 2/3, 1 1/3
])
def test_complementarity_reward(monkeypatch, by, weight, expected):
    c = common.get_config()
    c.objective.nora_samples, c.objective.nora_reward_by, c.objective.nora_reward_weight = 4, by, weight
    monkeypatch.setattr(source, "sample", lambda *args, **kwargs: NORA)
    maker = source.RolloutMaker(_Task(), None, c, nora_params=object())
    prompt_QxP = np.ones((2, 3), np.int32)
    nora = maker._sample_nora([0, 1], prompt_QxP, prompt_QxP, 0)
    rewards, metrics, clusters = maker._complement(prompt_QxP, prompt_QxP, POLICY, np.ones(4, np.float32),
                                                   np.asarray(POLICY.tokens_BxN)[:, 0], *nora)
    np.testing.assert_allclose(rewards, expected)
    assert metrics["rollout/nora_success"] == pytest.approx(3 / 8)
    if by == "strategy":  # the joint clustering also gives the advantage its clusters (task labels: the strategies)
        np.testing.assert_array_equal(clusters, [[0, 1], [1, 2]])
    else:
        assert clusters is None


@pytest.mark.parametrize("guide, rows, frac", [(1, [1, 3], 1 / 2), (2, [1, 0, 3], 3 / 4)])
def test_nora_guided_groups(monkeypatch, guide, rows, frac):
    """The last rows of each group become Nora's correct samples (first drawn first, as many as she has), scored
    by the policy: problem 0 has two of hers to give, problem 1 one."""
    c = common.get_config()
    c.objective.nora_samples, c.objective.nora_guide = 4, guide
    monkeypatch.setattr(source, "sample", lambda *args, **kwargs: NORA)
    monkeypatch.setattr(source, "score", lambda config, params, p, m, tokens, mask, **kw: np.full(tokens.shape, -0.5))
    maker = source.RolloutMaker(_Task(), None, c, nora_params=object())
    prompt_QxP = np.ones((2, 3), np.int32)
    wrong = _rollout([[2, 0], [2, 0], [0, 0], [0, 0]])  # the policy's own: all wrong
    nora = maker._sample_nora([0, 1], prompt_QxP, prompt_QxP, 0)
    guided, rewards, strategy, replaced = maker._guide(None, np.repeat(prompt_QxP, 2, 0), np.repeat(prompt_QxP, 2, 0),
                                                       wrong, np.zeros(4, np.float32), np.array([2, 2, 0, 0]), *nora)
    hers = {1: [0, 1], 0: [0, 1], 3: [1, 1]}  # row -> Nora's sample put there
    expected = [hers[row] if row in rows else list(np.asarray(wrong.tokens_BxN)[row]) for row in range(4)]
    np.testing.assert_array_equal(guided.tokens_BxN, expected)
    np.testing.assert_array_equal(rewards, [float(row in rows) for row in range(4)])
    np.testing.assert_array_equal(strategy, [e[0] for e in expected])
    np.testing.assert_array_equal(guided.logp_BxN[:, 0], [-0.5 if row in rows else 0.0 for row in range(4)])
    assert replaced == frac


def test_nora_guide_is_checked():
    from dora_jax.objectives import ObjectiveConfig
    with pytest.raises(ValueError, match="set nora_samples >= 1"):
        ObjectiveConfig(nora_guide=2)
    with pytest.raises(ValueError, match="fewer rows than the group"):
        ObjectiveConfig(nora_guide=8, nora_samples=8)


def test_nora_reward_by_and_weight_are_checked():
    from dora_jax.objectives import ObjectiveConfig
    with pytest.raises(ValueError, match="nora_reward_by"):
        ObjectiveConfig(nora_reward_by="cluster")
    with pytest.raises(ValueError, match="nora_reward_weight"):
        ObjectiveConfig(nora_reward_weight=1.5)


def test_nora_samples_without_nora_parameters_name_the_setting():
    c = common.get_config()
    c.objective.nora_samples = 4
    with pytest.raises(ValueError, match=r"config.objective.nora_samples=4 samples Nora.*set config.nora_dir"):
        source.RolloutMaker(_Task(), None, c, nora_params=None)
