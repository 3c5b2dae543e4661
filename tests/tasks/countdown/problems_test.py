"""Tests for dora_jax.tasks.countdown.problems: tokenizer, templates, solutions worked by hand, splits, corpus."""

import collections
import itertools
import random

import numpy as np
import pytest

from dora_jax.tasks.countdown import problems as cd

TOK = cd.TOKENIZER


@pytest.fixture(scope="module")
def problems():
    return cd.make_problems(0, 600)


def test_tokenizer_round_trip_and_ids():
    assert TOK.vocab_size <= 256
    assert (TOK.pad_id, TOK.tokens[TOK.bos_id], TOK.tokens[TOK.eos_id]) == (0, "<bos>", "<eos>")
    for text in ["<bos> 3 5 7 target 26", "( 12 - 1 ) * 11 <eos>", "0 200 / + - * ( ) target"]:
        ids = TOK.encode(text)
        assert len(ids) == len(text.split())  # one token per integer and per symbol
        assert TOK.decode(ids) == text


def test_tokenizer_decode_stops_and_marks_unknown():
    ids = TOK.encode("3 * 7 + 5 <eos> 9 9")
    assert TOK.decode([0, 0] + ids) == "3 * 7 + 5 <eos>"  # left padding skipped, stop after <eos>
    assert TOK.decode(TOK.encode("3 * 7") + [0, TOK.id_of["5"]]) == "3 * 7"  # stop at right padding
    assert TOK.decode([TOK.id_of["3"], 999, -1]) == "3 <unk:999> <unk:-1>"
    with pytest.raises(ValueError, match="not in the Countdown vocabulary"):
        TOK.encode("3 * 201")


def test_templates_are_distinct_strategies():
    assert len(cd.TEMPLATES) == len(cd.SFT_WEIGHTS) == cd.NUM_TEMPLATES == 10
    assert cd.SFT_WEIGHTS == (8, 8, 8, 4, 2, 1, 1, 1, 2, 1)
    patterns = [t.pattern for t in cd.TEMPLATES]
    assert patterns == ["a + b + c", "a * b + c", "a * b - c", "( a + b ) * c", "a * b * c", "( a - b ) * c",
                        "a * b / c", "( a + b ) / c", "a + b - c", "( a - b ) / c"]
    assert cd.MAX_RESPONSE_LEN == 8 and cd.PROMPT_LEN == 6
    # Genuinely different: every template solves some problem that no other template solves.
    only_by = collections.Counter()
    for numbers in itertools.combinations_with_replacement(range(1, cd.MAX_NUMBER + 1), 3):
        for target, by_template in cd._solution_table(numbers).items():
            if len(by_template) == 1:
                only_by[next(iter(by_template))] += 1
    assert set(only_by) == set(range(cd.NUM_TEMPLATES))


def test_render_puts_parentheses_where_needed():
    assert cd.render(("-", 9, ("+", 2, 3))) == "9 - ( 2 + 3 )"
    assert cd.render(("/", 8, ("*", 2, 2))) == "8 / ( 2 * 2 )"
    assert cd.render(("+", ("*", 2, 3), ("-", 5, 1))) == "2 * 3 + 5 - 1"


def test_evaluate_follows_game_rules():
    assert cd.evaluate(("/", ("*", 2, 3), 1)) == 6
    assert cd.evaluate(("*", ("/", 3, 2), 4)) is None  # 3/2 is not an integer
    assert cd.evaluate(("+", ("-", 3, 7), 5)) is None  # -4 is not positive
    assert cd.evaluate(("/", 5, ("-", 3, 3))) is None  # zero divisor never divides


def test_solutions_worked_by_hand():
    # 1 2 3 -> 6: every a + b + c, every a * b * c, and a * b / c with c = 1; no other template.
    found = cd.solutions(cd.Problem((3, 1, 2), 6))
    assert sorted(found) == [0, 4, 6]
    assert sorted(found[0]) == sorted(f"{a} + {b} + {c}" for a, b, c in itertools.permutations((1, 2, 3)))
    assert sorted(found[4]) == sorted(f"{a} * {b} * {c}" for a, b, c in itertools.permutations((1, 2, 3)))
    assert sorted(found[6]) == ["2 * 3 / 1", "3 * 2 / 1"]
    # 1 2 3 -> 2: only the rare ( a + b ) / c and a + b - c.
    assert cd.solutions(cd.Problem((1, 2, 3), 2)) == {7: ["( 1 + 3 ) / 2", "( 3 + 1 ) / 2"],
                                                      8: ["1 + 3 - 2", "3 + 1 - 2"]}
    # Repeated numbers give each distinct response once.
    assert cd.solutions(cd.Problem((2, 2, 2), 8)) == {3: ["( 2 + 2 ) * 2"], 4: ["2 * 2 * 2"]}
    assert cd.solutions(cd.Problem((1, 2, 3), 199)) == {}


def test_problem_numbers_are_canonical():
    assert cd.Problem((7, 3, 5), 26) == cd.Problem((3, 5, 7), 26)
    assert cd.prompt_text(cd.Problem((7, 3, 5), 26)) == "<bos> 3 5 7 target 26"


def test_make_problems_deterministic_unique_solvable(problems):
    assert problems == cd.make_problems(0, 600)
    assert problems[:100] == cd.make_problems(0, 100)  # a prefix of a longer draw
    assert problems != cd.make_problems(1, 600)
    assert len(set(problems)) == len(problems)
    for p in problems:
        assert len(p.numbers) == 3 and all(1 <= x <= cd.MAX_NUMBER for x in p.numbers)
        assert 1 <= p.target <= cd.MAX_TARGET
        assert cd.solutions(p)


def test_split_disjoint_deterministic_order_free(problems):
    s = cd.split(problems)
    assert [len(s[k]) for k in ("sft", "rl", "eval")] == [330, 180, 90]
    assert set(s["sft"]).isdisjoint(s["rl"]) and set(s["sft"]).isdisjoint(s["eval"]) and \
        set(s["rl"]).isdisjoint(s["eval"])
    assert set(s["sft"]) | set(s["rl"]) | set(s["eval"]) == set(problems)
    shuffled = list(problems)
    random.Random(0).shuffle(shuffled)
    assert {k: set(v) for k, v in cd.split(shuffled).items()} == {k: set(v) for k, v in s.items()}
    with pytest.raises(ValueError, match="distinct"):
        cd.split(problems[:3] + problems[:1])
    with pytest.raises(ValueError, match="sum to 1"):
        cd.split(problems, (0.5, 0.3, 0.1))


def test_sft_corpus_follows_weights_among_solving_templates():
    # Solved by templates 0 (weight 8), 4 (weight 2) and 6 (weight 1): expect 8/11, 2/11, 1/11.
    problem = cd.Problem((1, 2, 3), 6)
    corpus = cd.sft_corpus([problem], seed=0, samples_per_problem=11_000)
    freq = collections.Counter(t for _, _, t in corpus)
    np.testing.assert_allclose([freq[0], freq[4], freq[6]], [8000, 2000, 1000], rtol=0.06)
    found = cd.solutions(problem)
    for prompt_ids, response_ids, t in corpus[:200]:
        assert TOK.decode(prompt_ids) == "<bos> 1 2 3 target 6"
        assert response_ids[-1] == TOK.eos_id and TOK.decode(response_ids[:-1]) in found[t]
    assert cd.sft_corpus([problem], 0, 5) == cd.sft_corpus([problem], 0, 5)


def test_sft_corpus_on_many_problems(problems):
    # Pooled over problems, observed template counts match the expected weighted mixture.
    corpus = cd.sft_corpus(problems, seed=1, samples_per_problem=8)
    assert len(corpus) == 8 * len(problems)
    expected = np.zeros(cd.NUM_TEMPLATES)
    for p in problems:
        ids = list(cd.solutions(p))
        w = np.asarray([cd.SFT_WEIGHTS[t] for t in ids], float)
        expected[ids] += 8 * w / w.sum()
    observed = np.bincount([t for _, _, t in corpus], minlength=cd.NUM_TEMPLATES)
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected) + 5)
    assert max(len(p) + len(r) for p, r, _ in corpus) <= cd.PROMPT_LEN + cd.MAX_RESPONSE_LEN


def test_encode_prompts_left_pads():
    prompt_BxP, mask_BxP = cd.encode_prompts([cd.Problem((3, 5, 7), 26), cd.Problem((3, 4), 7)])
    assert prompt_BxP.dtype == mask_BxP.dtype == np.int32 and prompt_BxP.shape == (2, 6)
    np.testing.assert_array_equal(mask_BxP, [[1] * 6, [0, 1, 1, 1, 1, 1]])
    assert prompt_BxP[1, 0] == TOK.pad_id
    assert TOK.decode(prompt_BxP[0]) == "<bos> 3 5 7 target 26"
    assert TOK.decode(prompt_BxP[1]) == "<bos> 3 4 target 7"


def test_statistics():
    hand = [cd.Problem((1, 2, 3), 6), cd.Problem((1, 2, 3), 2)]
    solvable_NxK = cd.solvable_matrix(hand)
    assert solvable_NxK.shape == (2, 10)
    assert np.flatnonzero(solvable_NxK[0]).tolist() == [0, 4, 6] and np.flatnonzero(solvable_NxK[1]).tolist() == [7, 8]
    assert cd.rare_only_fraction(hand) == 0.5
    stats = cd.describe(hand)
    assert stats["solvable_by_template"]["sum"] == 1 and stats["rare_only_fraction"] == 0.5
    assert stats["max_sequence_len"] == 6 + 8  # "( 1 + 3 ) / 2 <eos>" after a 6-token prompt
    assert stats["vocab_size"] == TOK.vocab_size


def test_generated_problems_have_rare_only_share(problems):
    assert 0.1 <= cd.rare_only_fraction(problems) <= 0.35
