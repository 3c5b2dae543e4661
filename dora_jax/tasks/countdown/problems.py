"""Countdown, the embedded task (docs/design.md §7): reach a target from three numbers, each used once.

    problem  = Problem(numbers=(3, 5, 7), target=26)
    prompt   "<bos> 3 5 7 target 26"          (PROMPT_LEN tokens)
    response "3 * 7 + 5 <eos>"                (<= MAX_RESPONSE_LEN tokens)

A response's strategy is its operator template (`TEMPLATES`: the token pattern with the
numbers replaced by slots), so strategy labels are recoverable from any response. The SFT
corpus samples templates with `SFT_WEIGHTS`, so pi_ref is multi-modal but some templates are
rare; problems are drawn with the same template prior, which leaves ~20% of them solvable
only by rare templates (18% of 2,000 problems, 21% of 3,000, 30% of 4,000): the strategies
GRPO forgets and Dora has to rediscover.

Game rules (classic Countdown): exact arithmetic, every intermediate and the final value
must be a positive integer (so division is exact and nothing divides by zero).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import operator
from fractions import Fraction
from typing import NamedTuple, Sequence, Union

import numpy as np

from dora_jax.tasks.streams import left_pad

MAX_NUMBER = 12  # Problem numbers are drawn from 1..MAX_NUMBER.
NUM_NUMBERS = 3
MAX_TARGET = 200  # Largest target; also the largest integer token.
PROMPT_LEN = 1 + NUM_NUMBERS + 2  # <bos> a b c target T
RARE_MAX_WEIGHT = 2  # A template with SFT weight <= this is "rare".

# An expression tree: an int leaf, a slot name ("a", "b", "c") in a template, or (op, left, right).
Tree = Union[int, str, tuple]

OPS = ("+", "-", "*", "/")
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
SYMBOL_TOKENS = OPS + ("(", ")", "target")


class Tokenizer:
    """Word-level: specials, operators, parens, "target", then one token per integer 0..max_value."""

    def __init__(self, max_value: int = MAX_TARGET):
        self.tokens = SPECIAL_TOKENS + SYMBOL_TOKENS + tuple(str(i) for i in range(max_value + 1))
        self.id_of = {tok: i for i, tok in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id = (self.id_of[t] for t in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Space-separated words to ids; an unknown word raises ValueError."""
        words = text.split()
        unknown = [w for w in words if w not in self.id_of]
        if unknown:
            raise ValueError(f"words {unknown[:5]} are not in the Countdown vocabulary ({self.vocab_size} tokens)")
        return [self.id_of[w] for w in words]

    def token(self, token_id: int) -> str:
        """The token string, or "<unk:ID>" so a bad id is visible in logs."""
        token_id = int(token_id)
        return self.tokens[token_id] if 0 <= token_id < self.vocab_size else f"<unk:{token_id}>"

    def decode(self, ids: Sequence[int]) -> str:
        """Skips left padding, then renders up to a pad (excluded) or the first <eos> (included)."""
        words = []
        for token_id in ids:
            if int(token_id) == self.pad_id:
                if words:
                    break
                continue
            words.append(self.token(token_id))
            if int(token_id) == self.eos_id:
                break
        return " ".join(words)


TOKENIZER = Tokenizer()


@dataclasses.dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]  # Stored sorted, so a multiset of numbers is one problem with one prompt.
    target: int

    def __post_init__(self):
        object.__setattr__(self, "numbers", tuple(sorted(int(x) for x in self.numbers)))
        object.__setattr__(self, "target", int(self.target))


class Template(NamedTuple):
    name: str
    tree: Tree  # Over the slots "a", "b", "c", each used once.

    @property
    def pattern(self) -> str:
        """Canonical token pattern, e.g. "( a + b ) * c"."""
        return render(self.tree)


TEMPLATES = (
    Template("sum", ("+", ("+", "a", "b"), "c")),
    Template("mul_add", ("+", ("*", "a", "b"), "c")),
    Template("mul_sub", ("-", ("*", "a", "b"), "c")),
    Template("add_mul", ("*", ("+", "a", "b"), "c")),
    Template("product", ("*", ("*", "a", "b"), "c")),
    Template("sub_mul", ("*", ("-", "a", "b"), "c")),
    Template("mul_div", ("/", ("*", "a", "b"), "c")),
    Template("add_div", ("/", ("+", "a", "b"), "c")),
    Template("add_sub", ("-", ("+", "a", "b"), "c")),
    Template("sub_div", ("/", ("-", "a", "b"), "c")),
)
NUM_TEMPLATES = len(TEMPLATES)
SFT_WEIGHTS = (8, 8, 8, 4, 2, 1, 1, 1, 2, 1)
_SLOTS = ("a", "b", "c")


def render(tree: Tree) -> str:
    """Space-separated tokens with only the parentheses the precedence rules need."""
    if not isinstance(tree, tuple):
        return str(tree)
    op, left, right = tree
    left_s, right_s = render(left), render(right)
    if isinstance(left, tuple) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        left_s = f"( {left_s} )"
    # Equal precedence on the right needs parens too: a - (b + c) != a - b + c.
    if isinstance(right, tuple) and (_PRECEDENCE[right[0]] < _PRECEDENCE[op]
                                     or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in ("-", "/"))):
        right_s = f"( {right_s} )"
    return f"{left_s} {op} {right_s}"


# Longest template plus <eos>: every solution fits; sample with at least this many new tokens.
MAX_RESPONSE_LEN = max(len(t.pattern.split()) for t in TEMPLATES) + 1


def evaluate(tree: Tree) -> int | None:
    """Exact value of an int-leaf tree, or None if any node is not a positive integer."""
    value = _evaluate(tree)
    return int(value) if value is not None else None


def _evaluate(tree: Tree) -> Fraction | None:
    if not isinstance(tree, tuple):
        return Fraction(tree) if tree > 0 else None
    op, left, right = tree
    x, y = _evaluate(left), _evaluate(right)
    if x is None or y is None:
        return None
    value = _APPLY[op](x, y)  # y > 0 here, so "/" never divides by zero.
    return value if value > 0 and value.denominator == 1 else None


def instantiate(tree: Tree, numbers: Sequence[int]) -> Tree:
    """Fills the slots a, b, c with `numbers` in that order."""
    if isinstance(tree, tuple):
        return (tree[0], instantiate(tree[1], numbers), instantiate(tree[2], numbers))
    return numbers[_SLOTS.index(tree)] if isinstance(tree, str) else tree


@functools.lru_cache(maxsize=None)
def _solution_table(numbers: tuple[int, ...]) -> dict[int, dict[int, tuple[str, ...]]]:
    """target -> template id -> response strings, over all orderings of a sorted multiset."""
    table: dict[int, dict[int, tuple[str, ...]]] = {}
    orderings = list(dict.fromkeys(itertools.permutations(numbers)))
    for t, template in enumerate(TEMPLATES):
        for order in orderings:
            tree = instantiate(template.tree, order)
            value = evaluate(tree)
            if value is not None and value <= MAX_TARGET:
                by_template = table.setdefault(value, {})
                by_template[t] = by_template.get(t, ()) + (render(tree),)
    return table


def solutions(problem: Problem) -> dict[int, list[str]]:
    """Template id -> every response (without <eos>) of that template that hits the target."""
    found = _solution_table(problem.numbers).get(problem.target, {})
    return {t: list(responses) for t, responses in sorted(found.items())}


def prompt_text(problem: Problem) -> str:
    return " ".join(["<bos>", *map(str, problem.numbers), "target", str(problem.target)])


def make_problems(seed: int, n: int, weights: Sequence[float] = SFT_WEIGHTS) -> list[Problem]:
    """`n` distinct solvable problems; a prefix of a longer list with the same seed.

    Each draw: a sorted multiset of numbers, a template from `weights` (the corpus prior,
    which keeps the share of rare-only problems near 20% for n ~ 3,000; drawing problems
    uniformly would give ~40%), an ordering; its value is the target. Duplicates and values
    above MAX_TARGET are redrawn.
    """
    probs = np.asarray(weights, np.float64) / np.sum(weights)
    rng = np.random.default_rng(seed)
    problems: dict[Problem, None] = {}
    for _ in range(100 * n + 10_000):
        if len(problems) == n:
            return list(problems)
        numbers = tuple(sorted(int(x) for x in rng.integers(1, MAX_NUMBER + 1, size=NUM_NUMBERS)))
        template = TEMPLATES[rng.choice(NUM_TEMPLATES, p=probs)]
        value = evaluate(instantiate(template.tree, [numbers[i] for i in rng.permutation(NUM_NUMBERS)]))
        if value is not None and value <= MAX_TARGET:
            problems[Problem(numbers, value)] = None
    raise ValueError(f"found only {len(problems)} distinct problems, asked for {n}: with numbers in "
                     f"1..{MAX_NUMBER} and targets <= {MAX_TARGET} there are about 4,700; ask for fewer")


def _split_key(problem: Problem) -> bytes:
    return hashlib.blake2b(repr((problem.numbers, problem.target)).encode(), digest_size=8).digest()


def split(problems: Sequence[Problem], fractions: tuple[float, float, float] = (0.55, 0.30, 0.15)
          ) -> dict[str, list[Problem]]:
    """Disjoint "sft" / "rl" / "eval" splits, assigned by a hash of each problem.

    Hashing (not input order) decides membership, so the split is the same for any order
    of the same problems; within a split the input order is kept.
    """
    if len(set(problems)) != len(problems):
        raise ValueError("split() needs distinct problems, or the splits would share some")
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    n = len(problems)
    n_sft = round(fractions[0] * n)
    n_rl = min(n - n_sft, round(fractions[1] * n))
    by_hash = sorted(range(n), key=lambda i: _split_key(problems[i]))
    name_of = {i: "sft" if r < n_sft else "rl" if r < n_sft + n_rl else "eval" for r, i in enumerate(by_hash)}
    out: dict[str, list[Problem]] = {"sft": [], "rl": [], "eval": []}
    for i, problem in enumerate(problems):
        out[name_of[i]].append(problem)
    return out


def sft_corpus(problems: Sequence[Problem], seed: int, samples_per_problem: int,
               weights: Sequence[float] = SFT_WEIGHTS, tokenizer: Tokenizer = TOKENIZER
               ) -> list[tuple[list[int], list[int], int]]:
    """(prompt_ids, response_ids ending in <eos>, template_id) examples.

    Per sample, a template is drawn with probability proportional to its weight among the
    templates that solve the problem, then one of its orderings uniformly: pi_ref learns
    that weighted mixture of strategies. Problems whose solving templates all weigh 0 are left out.
    """
    rng = np.random.default_rng(seed)
    corpus = []
    for problem in problems:
        found = solutions(problem)
        ids = list(found)
        w = np.asarray([weights[t] for t in ids], np.float64)
        if w.sum() <= 0:
            continue
        prompt_ids = tokenizer.encode(prompt_text(problem))
        for _ in range(samples_per_problem):
            t = ids[rng.choice(len(ids), p=w / w.sum())]
            response = found[t][rng.integers(len(found[t]))]
            corpus.append((prompt_ids, tokenizer.encode(response + " <eos>"), t))
    return corpus


def encode_prompts(problems: Sequence[Problem], tokenizer: Tokenizer = TOKENIZER) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_BxP int32, mask_BxP int32), left-padded so every prompt ends at column P - 1."""
    return left_pad([tokenizer.encode(prompt_text(p)) for p in problems], tokenizer.pad_id)


def solvable_matrix(problems: Sequence[Problem]) -> np.ndarray:
    """[N, NUM_TEMPLATES] bool: which templates solve each problem."""
    solvable_NxK = np.zeros((len(problems), NUM_TEMPLATES), bool)
    for row, problem in enumerate(problems):
        solvable_NxK[row, list(solutions(problem))] = True
    return solvable_NxK


def rare_only_fraction(problems: Sequence[Problem], weights: Sequence[float] = SFT_WEIGHTS,
                       rare_max_weight: float = RARE_MAX_WEIGHT) -> float:
    """Share of problems that only templates with weight <= rare_max_weight solve."""
    if not problems:
        return 0.0
    common_K = np.asarray(weights) > rare_max_weight
    return float(np.mean(~np.any(solvable_matrix(problems) & common_K, axis=1)))


def describe(problems: Sequence[Problem], weights: Sequence[float] = SFT_WEIGHTS,
             tokenizer: Tokenizer = TOKENIZER) -> dict:
    """Summary statistics of a problem set, for reports."""
    solvable_NxK = solvable_matrix(problems)
    return {
        "num_problems": len(problems),
        "solvable_by_template": {t.name: int(c) for t, c in zip(TEMPLATES, solvable_NxK.sum(0))},
        "templates_per_problem/mean": float(solvable_NxK.sum(1).mean()) if problems else 0.0,
        "rare_only_fraction": rare_only_fraction(problems, weights),
        "max_sequence_len": max((len(prompt_text(p).split()) + len(r.split()) + 1
                                 for p in problems for rs in solutions(p).values() for r in rs), default=0),
        "vocab_size": tokenizer.vocab_size,
    }
