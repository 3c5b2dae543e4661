"""Countdown reward: a 1/0 verdict, a validity flag and the strategy label of a response.

    score_response(Problem((3, 5, 7), 26), "3 * 7 + 5 <eos>")  # Verdict(1.0, True, 1)   mul_add
    score_response(Problem((3, 5, 7), 26), "5 + 3 * 7")        # Verdict(1.0, True, -1)  no template's pattern
    score_response(Problem((3, 5, 7), 26), "3 + 5 + 7")        # Verdict(0.0, True, 0)   wrong value

valid: a well-formed expression over exactly the problem's numbers, each once.
reward: valid, every intermediate a positive integer (the game's rules), value == target.
strategy: the template whose token pattern (numbers as slots) the response matches, else -1;
          labelled for wrong answers too, so diversity can be measured over all samples.
Model output is parsed by a recursive-descent parser over tokens, never `eval`-ed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np

from dora_jax.tasks.countdown.problems import TEMPLATES, TOKENIZER, Problem, Tokenizer, Tree, evaluate

# Longer responses are garbage anyway; the cap also bounds the parser's recursion depth.
MAX_EXPRESSION_TOKENS = 32
_STOP_TOKENS = ("<eos>", "<pad>")
_SYMBOLS = frozenset(("+", "-", "*", "/", "(", ")"))
_TEMPLATE_OF_PATTERN = {" ".join("#" if w in "abc" else w for w in t.pattern.split()): i
                        for i, t in enumerate(TEMPLATES)}

Response = Union[str, Sequence[int], np.ndarray]


class Verdict(NamedTuple):
    reward: float
    valid: bool
    strategy: int


INVALID = Verdict(0.0, False, -1)


class _ParseError(Exception):
    pass


def _is_number(word: str) -> bool:
    # Canonical non-negative integers only ("07" and "+3" are not numbers).
    return word.isascii() and word.isdigit() and word == str(int(word))


class _Parser:
    """expr := term (("+" | "-") term)*;  term := factor (("*" | "/") factor)*;  factor := NUMBER | "(" expr ")"."""

    def __init__(self, words: list[str]):
        self.words, self.pos = words, 0

    def parse(self) -> Tree:
        tree = self._expr()
        if self.pos != len(self.words):
            raise _ParseError(f"trailing {self.words[self.pos]!r}")
        return tree

    def _peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def _binary(self, ops: tuple[str, str], operand) -> Tree:
        tree = operand()
        while (word := self._peek()) is not None and word in ops:
            self.pos += 1
            tree = (word, tree, operand())
        return tree

    def _expr(self) -> Tree:
        return self._binary(("+", "-"), self._term)

    def _term(self) -> Tree:
        return self._binary(("*", "/"), self._factor)

    def _factor(self) -> Tree:
        word = self._peek()
        self.pos += 1
        if word == "(":
            tree = self._expr()
            if self._peek() != ")":
                raise _ParseError("unbalanced parenthesis")
            self.pos += 1
            return tree
        if word is not None and _is_number(word):
            return int(word)
        raise _ParseError(f"expected a number or '(', got {word!r}")


def _leaves(tree: Tree) -> list[int]:
    return _leaves(tree[1]) + _leaves(tree[2]) if isinstance(tree, tuple) else [tree]


def _words(response: Response, tokenizer: Tokenizer) -> list[str]:
    """Response words up to the first <eos> or <pad>; ids become token strings ("<unk:ID>" if unknown)."""
    if isinstance(response, str):
        words = response.split()
    else:
        words = [tokenizer.token(i) for i in np.asarray(response).ravel()]
    for stop in _STOP_TOKENS:
        if stop in words:
            words = words[:words.index(stop)]
    return words


def score_response(problem: Problem, response: Response, tokenizer: Tokenizer = TOKENIZER) -> Verdict:
    """Scores one response (text, or token ids of the response part only)."""
    return _score_words(problem, tuple(_words(response, tokenizer)))


def _score_words(problem: Problem, words: tuple[str, ...]) -> Verdict:
    if not words or len(words) > MAX_EXPRESSION_TOKENS:
        return INVALID
    if not all(_is_number(w) or w in _SYMBOLS for w in words):
        return INVALID
    try:
        tree = _Parser(list(words)).parse()
    except _ParseError:
        return INVALID
    if sorted(_leaves(tree)) != sorted(problem.numbers):
        return INVALID
    pattern = " ".join("#" if _is_number(w) else w for w in words)
    reward = 1.0 if evaluate(tree) == problem.target else 0.0
    return Verdict(reward, True, _TEMPLATE_OF_PATTERN.get(pattern, -1))


def score_batch(problems: Sequence[Problem], responses: Sequence[Response] | np.ndarray,
                tokenizer: Tokenizer = TOKENIZER) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rewards_B float32, valid_B bool, strategy_B int32) for G responses per problem, prompt-major.

    Response i belongs to problems[i // G]. Identical (problem, response) pairs, common once
    a policy collapses, are parsed once.
    """
    B, P = len(responses), len(problems)
    if P == 0 or B % P:
        raise ValueError(f"{B} responses for {P} problems: need the same number G >= 1 of responses per problem")
    G = B // P
    memo: dict[tuple[Problem, tuple[str, ...]], Verdict] = {}
    rewards_B = np.zeros(B, np.float32)
    valid_B = np.zeros(B, bool)
    strategy_B = np.zeros(B, np.int32)
    for i in range(B):
        key = (problems[i // G], tuple(_words(responses[i], tokenizer)))
        if key not in memo:
            memo[key] = _score_words(*key)
        rewards_B[i], valid_B[i], strategy_B[i] = memo[key]
    return rewards_B, valid_B, strategy_B
