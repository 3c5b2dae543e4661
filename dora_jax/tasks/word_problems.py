"""Arithmetic word problems generated from a seed: a real-model task that needs no download.

    task = WordProblemsTask(config.task)        # config.task.name = "word_problems"
    task.splits["rl"], task.splits["eval"]      # disjoint, from config.task.seed
    rewards_B, formatted_B, strategy_B = task.score(problems, response_BxN)

Each problem is one of a few kinds of story: one step (more, fewer, groups) or two (shopping,
change, sharing, perimeter, seating, ages), with numbers drawn up to `max_number`; several kinds
have more than one natural route (a rectangle's perimeter as 2(a + b) or a + b + a + b; a change
as (a - b) + c or a - (b - c)). Prompts go through the model's own chat template, after a system
turn and one worked example exchange; answers are graded by the math grader on the last `\\boxed{}`. The rows look
like the math task's (`problem`, `answer`), so everything downstream is shared with it.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dora_jax.sections import require
from dora_jax.tasks.math.task import MathTask

_NAMES = ("Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo", "Mia", "Noor", "Omar",
          "Pia", "Raj", "Sara", "Tom", "Uma")
_ITEMS = ("pens", "apples", "stickers", "cards", "books", "cups", "balls", "shells")


def _shopping(rng, n):
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    k, price, extra = rng.integers(2, 10), rng.integers(2, n + 1), rng.integers(2, n + 1)
    return (f"{who} buys {k} {item} at {price} dollars each and a bag for {extra} dollars. "
            f"How many dollars does {who} spend in total?", k * price + extra)


def _change(rng, n):
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    lost = rng.integers(2, n + 1)
    start = lost + rng.integers(1, n + 1)
    found = rng.integers(2, n + 1)
    return (f"{who} has {start} {item}, gives {lost} to a friend, then gets {found} more. "
            f"How many {item} does {who} have now?", start - lost + found)


def _sharing(rng, n):
    a, b, item = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_ITEMS)
    people, each = rng.integers(2, 7), rng.integers(2, n + 1)
    first = rng.integers(1, people * each)
    return (f"{a} has {first} {item} and {b} has {people * each - first}. They put them together and share them "
            f"equally among {people} children. How many {item} does each child get?", each)


def _perimeter(rng, n):
    width, length = rng.integers(2, n + 1), rng.integers(2, n + 1)
    return (f"A garden is a rectangle {length} meters long and {width} meters wide. A fence goes all the way around "
            "it. How many meters of fence are needed?", 2 * (length + width))


def _seating(rng, n):
    rows, seats = rng.integers(2, 10), rng.integers(2, n + 1)
    empty = rng.integers(1, rows * seats)
    return (f"A hall has {rows} rows of {seats} chairs. {empty} chairs are empty. "
            "How many chairs are taken?", rows * seats - empty)


def _ages(rng, n):
    a, b = rng.choice(_NAMES), rng.choice(_NAMES)
    age, gap = rng.integers(3, n + 1), rng.integers(1, n + 1)
    return (f"{a} is {age} years old. {b} is {gap} years older than {a}. "
            f"What is the sum of their ages?", 2 * age + gap)


def _more(rng, n):
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.integers(2, n + 1), rng.integers(2, n + 1)
    return f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?", a + b


def _fewer(rng, n):
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    b = rng.integers(1, n + 1)
    a = b + rng.integers(1, n + 1)
    return f"{who} has {a} {item} and gives away {b}. How many {item} does {who} have left?", a - b


def _groups(rng, n):
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    k, each = rng.integers(2, 10), rng.integers(2, n + 1)
    return f"{who} has {k} boxes with {each} {item} in each box. How many {item} are there in all?", k * each


KINDS = {"more": _more, "fewer": _fewer, "groups": _groups, "shopping": _shopping, "change": _change,
         "sharing": _sharing, "perimeter": _perimeter, "seating": _seating, "ages": _ages}


def make_problems(seed: int, count: int, kinds: tuple[str, ...], max_number: int) -> list[dict]:
    """`count` distinct problems (kinds in turn), in a fixed order from `seed`."""
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for attempt in range(count * 50):
        if len(rows) == count:
            break
        kind = kinds[attempt % len(kinds)]
        text, answer = KINDS[kind](rng, max_number)
        if text not in seen:
            seen.add(text)
            rows.append({"problem": text, "answer": str(int(answer)), "kind": kind})
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} distinct problems exist with max_number={max_number}; raise it or ask "
                         "for fewer problems.")
    return rows


@dataclasses.dataclass(frozen=True)
class WordProblemsConfig:
    """The `task` section of the generated word problems (also what the math task's prompt and grader read)."""

    name: str = "word_problems"
    seed: int = 0  # problem generation and the disjoint RL / held-out split
    num_problems: int = 3_000  # distinct problems before the split
    eval_problems: int = 500  # of them held out (the evaluation reads config.eval.max_problems of these)
    # Comma-separated problem kinds (KINDS); the default mix puts SmolLM2-135M's pass@1 near 0.2.
    kinds: str = "more,fewer,groups,change,ages"
    max_number: int = 10  # largest number drawn for a price, count or length (difficulty)
    tokenizer_dir: str = ""  # local HF dir with the tokenizer and chat template ("" = ref_dir)
    chat_template: bool = True  # wrap the problem as the chat template's user turn (False: plain text)
    system_prompt: str = "Solve the problem, then give the answer in \\boxed{}."  # "" = the template's own
    # One worked example as an earlier chat exchange: a small model then answers in the same form.
    shot_problem: str = "Ann has 3 pens and buys 4 more. How many pens does Ann have now?"  # "" = no example
    shot_answer: str = "Ann has 3 + 4 = 7 pens. The answer is \\boxed{7}."
    prompt_suffix: str = ""  # appended to each problem
    max_prompt_len: int = 256  # tokens; longer problems are dropped with a count
    pad_multiple: int = 16  # prompt widths round up to this
    bucket_window: int = 1  # batches per length-sorting window (1 = no bucketing)
    require_think_close: bool = False
    allow_fallback: bool = False  # only a \\boxed{} answer counts
    grade_timeout_s: float = 2.0  # hard limit per sympy comparison

    def __post_init__(self):
        unknown = [k for k in self.kinds.split(",") if k.strip() not in KINDS]
        require(not unknown, "kinds", self.kinds, f"use a comma-separated subset of {', '.join(KINDS)}.")
        require(self.max_number >= 4, "max_number", self.max_number, "use 4 or more.")
        require(0 < self.eval_problems < self.num_problems, "eval_problems", self.eval_problems,
                f"hold out between 1 and num_problems - 1 (= {self.num_problems - 1}) problems.")
        require(self.max_prompt_len >= 1, "max_prompt_len", self.max_prompt_len, "allow prompts of 1+ tokens.")
        require(self.grade_timeout_s > 0, "grade_timeout_s", self.grade_timeout_s, "give the grader a positive limit.")


class WordProblemsTask(MathTask):
    """Generated word problems with the math task's prompts, grader and streams."""

    name = "word_problems"

    @staticmethod
    def prompt_budget(cfg: WordProblemsConfig) -> int:
        return cfg.max_prompt_len

    def _messages(self, text: str) -> list[dict]:
        chat = super()._messages(text)
        if self.cfg.shot_problem:
            chat[-1:-1] = [{"role": "user", "content": self.cfg.shot_problem},
                           {"role": "assistant", "content": self.cfg.shot_answer}]
        return chat

    def _split_names(self) -> tuple[str, ...]:
        return ("rl", "eval")

    @functools.cached_property
    def _generated(self) -> dict[str, list[dict]]:
        """Both splits' problems, generated once: `eval_problems` of them held out at random from the seed."""
        cfg = self.cfg
        rows = make_problems(cfg.seed, cfg.num_problems, tuple(k.strip() for k in cfg.kinds.split(",")),
                             cfg.max_number)
        held_out = set(np.random.default_rng(cfg.seed + 1).permutation(len(rows))[: cfg.eval_problems].tolist())
        return {"rl": [r for i, r in enumerate(rows) if i not in held_out],
                "eval": [rows[i] for i in sorted(held_out)]}

    def _rows(self, split: str) -> list[dict]:
        return self._encoded(self._generated[split], split)
