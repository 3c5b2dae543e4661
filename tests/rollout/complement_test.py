"""The complementarity reward: rewards scaled by Nora's success on the problem, or in the response's strategy."""

import jax
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
    rare_strategies = (2,)

    def score(self, problems, tokens_BxN):
        tokens_BxN = np.asarray(tokens_BxN)
        return tokens_BxN[:, 1].astype(np.float32), np.ones(len(tokens_BxN), bool), tokens_BxN[:, 0]


# Nora's 4 samples of problem 0: strategy 0 correct twice, 1 and 2 wrong; of problem 1: strategy 1 correct once.
NORA = _rollout([[0, 1], [0, 1], [1, 0], [2, 0], [1, 1], [0, 0], [0, 0], [0, 0]])
# The policy's 2 samples of each, all correct: strategies 0 and 1 on problem 0, 1 and 2 on problem 1.
POLICY = _rollout([[0, 1], [1, 1], [1, 1], [2, 1]])


@pytest.mark.parametrize("by, weight, spare_rare, expected", [
    ("problem", 1.0, False, [0.5, 0.5, 0.75, 0.75]),  # 1 - her success on the problem
    ("strategy", 1.0, False, [0.5, 1.0, 0.75, 1.0]),  # 1 - her correct share in the strategy
    ("problem", 0.5, False, [0.75, 0.75, 0.875, 0.875]),  # 1 - 0.5 x her success
    ("modes", 1.0, False, [1 / 3, 2 / 3, 2 / 3, 1.0]),  # 1 - her batch-wide correct share in the strategy: 0 2/3, 1 1/3
    ("problem", 1.0, True, [0.5, 0.5, 0.75, 1.0]),  # the last row is in the rare strategy 2: its reward stays whole
])
def test_complementarity_reward(monkeypatch, by, weight, spare_rare, expected):
    c = common.get_config()
    c.objective.nora_samples, c.objective.nora_reward_by, c.objective.nora_reward_weight = 4, by, weight
    c.objective.spare_rare = spare_rare
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


@pytest.mark.parametrize("guide, rows", [(1, {2: 0, 5: 5}), (2, {2: 0, 1: 2, 5: 5})])
def test_nora_guided_groups(monkeypatch, guide, rows):
    """The last rows of each group of 3 become Nora's correct samples, first drawn first, as many as she has up to
    `guide` (problem 0 has two to give, problem 1 one), with her tokens, masks, lengths, finish flags, rewards and
    strategies, and log-probs scored by the policy. `rows`: policy row -> Nora's sample put there."""
    c = common.get_config()
    c.objective.group_size, c.objective.nora_samples, c.objective.guide = 3, 4, guide
    # Nora's 4 samples of each problem as [strategy, correct, id]; her correct ones stop a token early.
    tokens = np.array([[0, 1, 11], [1, 0, 12], [0, 1, 13], [2, 0, 14], [1, 0, 15], [1, 1, 16], [0, 0, 17], [0, 0, 18]],
                      np.int32)
    mask = np.ones_like(tokens)
    mask[tokens[:, 1] > 0, 2] = 0
    nora = Rollout(tokens, np.zeros(tokens.shape, np.float32), 0 * tokens, mask, mask.sum(1),
                   (tokens[:, 1] == 0).astype(np.int32))
    monkeypatch.setattr(source, "sample", lambda *args, **kwargs: nora)
    monkeypatch.setattr(source, "score", lambda config, params, p, m, tokens, mask, **kw: np.full(tokens.shape, -0.5))
    maker = source.RolloutMaker(_Task(), None, c, nora_params=object())
    prompt_QxP = np.ones((2, 3), np.int32)
    own = np.array([[2, 0, 0]] * 6, np.int32)  # the policy's own: all wrong, full length
    ones = np.ones_like(own)
    wrong = Rollout(own, np.zeros(own.shape, np.float32), 0 * ones, ones, ones.sum(1), ones[:, 0])
    drawn = maker._sample_nora([0, 1], prompt_QxP, prompt_QxP, 0)
    guided, rewards, strategy, guided_B = maker._guide(None, np.repeat(prompt_QxP, 3, 0), np.repeat(prompt_QxP, 3, 0),
                                                       wrong, np.zeros(6, np.float32), own[:, 0], *drawn)
    for name in ("tokens_BxN", "mask_BxN", "lengths_B", "finish_B"):
        expected = [getattr(nora, name)[rows[b]] if b in rows else getattr(wrong, name)[b] for b in range(6)]
        np.testing.assert_array_equal(getattr(guided, name), expected, err_msg=name)
    np.testing.assert_array_equal(rewards, [float(b in rows) for b in range(6)])
    np.testing.assert_array_equal(strategy, [tokens[rows[b], 0] if b in rows else 2 for b in range(6)])
    np.testing.assert_array_equal(guided.logp_BxN[:, 0], [-0.5 if b in rows else 0.0 for b in range(6)])
    np.testing.assert_array_equal(guided_B, [b in rows for b in range(6)])


class _Problems(_Task):
    """A task whose prompts `make` can build: problem i's prompt is three tokens i."""

    def problems(self, split, start, count, seed):
        return list(range(start, start + count))

    def prompts(self, problems):
        prompt_QxP = np.repeat(np.asarray(problems, np.int32)[:, None], 3, axis=1) + 1
        return prompt_QxP, np.ones_like(prompt_QxP)

    def decode(self, ids):
        return " ".join(map(str, ids))

    def strategy_name(self, i):
        return self.strategy_names[i]


@pytest.mark.parametrize("with_nora", [False, True])
def test_ref_guided_groups(monkeypatch, with_nora):
    """guide_from='ref': the guide rows come from G draws of Ref's per prompt (keys of their own), and the batch
    carries Ref's correct answers where the policy's last rows were. Nora is sampled only for the complementarity
    reward, which then scales the guided rows' rewards like the policy's (her success on problem 0 is 1/2)."""
    c = common.get_config()
    c.objective.group_size, c.objective.guide, c.objective.guide_from = 2, 1, "ref"
    c.objective.nora_samples = 2 if with_nora else 0
    c.rollout.prompts_per_step, c.rollout.samples_every = 2, 1
    drawn = {"policy": _rollout([[2, 0], [2, 0], [0, 0], [0, 0]]),  # all wrong
             "ref": _rollout([[0, 0], [1, 1], [2, 0], [0, 0]]),  # correct once on problem 0, never on problem 1
             "nora": _rollout([[0, 1], [0, 0], [0, 0], [0, 0]])}  # correct once on problem 0
    calls = []

    def fake_sample(config, policies, prompt_BxP, mask_BxP, keys, **kwargs):
        calls.append((policies[0], len(prompt_BxP), int(jax.random.key_data(keys)[0, -1])))
        return drawn[policies[0]]

    monkeypatch.setattr(source, "sample", fake_sample)
    monkeypatch.setattr(source, "score", lambda config, params, p, m, tokens, mask, **kw: np.full(tokens.shape, -0.5))
    with pytest.raises(ValueError, match="guide_from='ref' samples Ref"):
        source.RolloutMaker(_Problems(), None, c, nora_params="nora")
    made = source.RolloutMaker(_Problems(), None, c, nora_params="nora", ref_params="ref").make(0, "policy")
    assert [name for name, _, _ in calls] == ["policy"] + ["nora"] * with_nora + ["ref"]
    assert len({key for _, _, key in calls}) == len(calls) and calls[-1][1] == 4  # Ref: G per prompt, own keys
    np.testing.assert_array_equal(made.batch.tokens_BxT[:, 3:], [[2, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(made.batch.rewards_B, [0, 0.5 if with_nora else 1, 0, 0])
    np.testing.assert_array_equal(made.batch.logp_old_BxT[:, 3], [0, -0.5, 0, 0])
    assert made.host_metrics["rollout/guided_frac"] == 1 / 4
    assert made.host_metrics["rollout/valid_frac"] == 1.0 and made.host_metrics["rollout/strategy/s2"] == 0.5
    assert [(s["response"], s["guided"]) for s in made.samples] == [("2 0", False), ("1 1", True)]


def test_guide_is_checked():
    from dora_jax.objectives import ObjectiveConfig
    with pytest.raises(ValueError, match="set nora_samples >= guide"):
        ObjectiveConfig(guide=2)
    with pytest.raises(ValueError, match="set nora_samples >= guide"):
        ObjectiveConfig(guide=3, nora_samples=2)
    with pytest.raises(ValueError, match="fewer rows than the group"):
        ObjectiveConfig(guide=8, nora_samples=8)
    with pytest.raises(ValueError, match="use 'nora' .* or 'ref'"):
        ObjectiveConfig(guide=2, guide_from="dora")
    assert ObjectiveConfig(guide=2, guide_from="ref").nora_samples == 0  # Ref's draws need none of Nora's


def test_nora_reward_by_and_weight_are_checked():
    from dora_jax.objectives import ObjectiveConfig
    with pytest.raises(ValueError, match="nora_reward_by"):
        ObjectiveConfig(nora_reward_by="cluster")
    with pytest.raises(ValueError, match="nora_reward_weight"):
        ObjectiveConfig(nora_reward_weight=1.5)
    with pytest.raises(ValueError, match="set objective.nora_samples > 0"):
        ObjectiveConfig(spare_rare=True)


def test_spare_rare_needs_a_task_that_says_which_strategies_are_rare():
    from configs import indicator
    from dora_jax import pipeline, sections, tasks
    c = indicator.get_config("from_ref,grpo,nora_reward,spare_rare")
    pipeline.check_config(c)  # countdown labels its rare templates
    c.task = tasks.default_config("math")
    with pytest.raises(sections.ConfigError, match="spare_rare=True reads which strategies are rare.*math"):
        pipeline.check_config(c)


def test_nora_samples_without_nora_parameters_name_the_setting():
    c = common.get_config()
    c.objective.nora_samples = 4
    with pytest.raises(ValueError, match=r"config.objective.nora_samples=4 samples Nora.*set config.nora_dir"):
        source.RolloutMaker(_Task(), None, c, nora_params=None)
