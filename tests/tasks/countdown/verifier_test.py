"""Tests for dora_jax.tasks.countdown.verifier: listed solutions score 1 with their template, garbage scores 0."""

import builtins

import numpy as np
import pytest

from dora_jax.tasks.countdown import problems as cd
from dora_jax.tasks.countdown.verifier import MAX_EXPRESSION_TOKENS, Verdict, score_batch, score_response

TOK = cd.TOKENIZER
P = cd.Problem((3, 5, 7), 26)


@pytest.fixture(autouse=True)
def no_eval(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model output must never be eval-ed")
    monkeypatch.setattr(builtins, "eval", refuse)


def test_every_listed_solution_scores_one_with_its_template():
    for problem in cd.make_problems(0, 300):
        for t, responses in cd.solutions(problem).items():
            for response in responses:
                assert score_response(problem, response) == (1.0, True, t)
                assert score_response(problem, TOK.encode(response + " <eos>") + [TOK.pad_id] * 3) == (1.0, True, t)


@pytest.mark.parametrize("response, verdict", [
    ("3 * 7 + 5 <eos>", (1.0, True, 1)),
    ("7 * 3 + 5", (1.0, True, 1)),
    ("( 3 * 7 ) + 5", (1.0, True, -1)),      # right value, not a template's token pattern
    ("5 + 3 * 7", (1.0, True, -1)),
    ("3 + 5 + 7", (0.0, True, 0)),            # well-formed, wrong value: still labelled
    ("( 7 - 5 ) * 3", (0.0, True, 5)),
    ("( ( 3 ) ) * 7 + 5", (1.0, True, -1)),
    ("3 * 7 + 5 <eos> 9 9 (", (1.0, True, 1)),  # whatever follows <eos> is not the response
])
def test_verdicts_worked_by_hand(response, verdict):
    assert score_response(P, response) == verdict


def test_game_rules_break_reward_not_validity():
    # 3 / 2 * 4 = 6 passes through 3/2; 3 - 7 + 5 = 1 passes through -4.
    assert score_response(cd.Problem((2, 3, 4), 6), "3 / 2 * 4") == (0.0, True, -1)
    assert score_response(cd.Problem((3, 5, 7), 1), "3 - 7 + 5") == (0.0, True, -1)
    assert score_response(cd.Problem((3, 3, 5), 5), "5 / ( 3 - 3 )") == (0.0, True, -1)


@pytest.mark.parametrize("response", [
    "", "<eos>", "( 3 * 7 + 5", "3 * 7 + 5 )", ") 3 * 7 + 5 (", "3 * 7 +", "* 3 7 5", "3 7 5",
    "3 * 7 + 5 5",          # a number reused
    "3 * 7",                # a number missing
    "3 * 8 + 2",            # numbers not in the problem
    "3 * 7 + 5 / 0",        # "/ 0": 0 is not a given number
    "26", "3 * 07 + 5", "3 * 7 + +5", "3 ** 7 + 5", "3 * 7 + 5 target", "<bos> 3 * 7 + 5",
    "( " * 500 + "3 * 7 + 5" + " )" * 500,
    " ".join(["(", "3", "+", ")"] * 250),
    "__import__('os').system('true')",
])
def test_garbage_is_invalid(response):
    assert score_response(P, response) == (0.0, False, -1)


def test_garbage_ids_are_invalid():
    rng = np.random.default_rng(0)
    assert score_response(P, rng.integers(1, TOK.vocab_size, size=1000)) == (0.0, False, -1)
    assert score_response(P, [TOK.id_of["3"], 999, TOK.id_of["7"]]) == (0.0, False, -1)
    assert score_response(P, []) == (0.0, False, -1)
    assert score_response(P, [TOK.pad_id] * 8) == (0.0, False, -1)
    # Exactly the length cap parses; one more token is refused.
    at_cap = "( " * 11 + "3 * 7 + 5" + " )" * 11
    assert len(at_cap.split()) == 27 <= MAX_EXPRESSION_TOKENS
    assert score_response(P, at_cap).valid
    assert not score_response(P, "( " * 14 + "3 * 7 + 5" + " )" * 14).valid


def test_score_batch_is_prompt_major():
    q = cd.Problem((1, 2, 3), 2)
    responses = ["3 * 7 + 5", "3 + 5 + 7", "junk", "( 1 + 3 ) / 2", "1 + 3 - 2", "3 * 7 + 5"]
    rewards_B, valid_B, strategy_B = score_batch([P, q], responses)
    assert (rewards_B.dtype, valid_B.dtype, strategy_B.dtype) == (np.float32, bool, np.int32)
    np.testing.assert_array_equal(rewards_B, [1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(valid_B, [True, True, False, True, True, False])
    np.testing.assert_array_equal(strategy_B, [1, 0, -1, 7, 8, -1])
    ids_BxT = np.zeros((6, 10), np.int32)
    for i, r in enumerate(responses[:2] + ["(", *responses[3:]]):
        ids = TOK.encode(r + " <eos>")
        ids_BxT[i, :len(ids)] = ids
    for got, want in zip(score_batch([P, q], ids_BxT), (rewards_B, valid_B, strategy_B)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="per problem"):
        score_batch([P, q], responses[:5])


def test_verdict_is_a_named_tuple():
    v = score_response(P, "3 * 7 + 5")
    assert isinstance(v, Verdict) and (v.reward, v.valid, v.strategy) == (1.0, True, 1)
