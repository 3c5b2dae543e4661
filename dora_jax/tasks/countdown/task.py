"""The embedded Countdown task: disjoint splits, prompts, rewards and strategy labels in one object."""

from __future__ import annotations

import dataclasses

import numpy as np

from dora_jax.tasks import streams
from dora_jax.tasks.countdown import problems as countdown
from dora_jax.tasks.countdown import verifier
from dora_jax.sections import require


@dataclasses.dataclass(frozen=True)
class CountdownConfig:
    """The `task` section of the embedded Countdown world (docs/design.md §7), generated from its seed."""

    name: str = "countdown"
    seed: int = 0  # problem generation and the disjoint SFT / RL / held-out split
    num_problems: int = 3000  # distinct problems before the 55/30/15 split
    sft_samples_per_problem: int = 8  # solutions per SFT problem, templates drawn by their corpus weights
    validation_problems: int = 0  # RL problems held out as the "validation" split (eval.split) to tune on; 0 = none

    def __post_init__(self):
        require(self.num_problems >= 20, "num_problems", self.num_problems,
                "generate at least 20 problems, so every split holds some.")
        require(self.sft_samples_per_problem >= 1, "sft_samples_per_problem", self.sft_samples_per_problem,
                "draw at least one solution per SFT problem.")
        require(0 <= self.validation_problems <= 0.5 * 0.30 * self.num_problems, "validation_problems",
                self.validation_problems, "hold out at most half of the RL split (30% of num_problems).")


class CountdownTask:
    """Countdown with disjoint SFT / RL / held-out problem splits, all generated from `cfg.seed`."""

    name = "countdown"
    strategy_names = tuple(t.name for t in countdown.TEMPLATES)
    rare_strategies = tuple(i for i, w in enumerate(countdown.SFT_WEIGHTS) if w <= countdown.RARE_MAX_WEIGHT)
    exact_vocab = True  # the model is built for this tokenizer: another vocabulary means a model of another task
    needs_model_dir = False  # ref is trained from scratch (SFT on the embedded corpus) when no dir is given

    @staticmethod
    def prompt_budget(cfg: CountdownConfig) -> int:
        """The widest prompt in tokens (for the memory planner, without building the task)."""
        return countdown.PROMPT_LEN

    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = countdown.TOKENIZER
        self.splits = countdown.split(countdown.make_problems(cfg.seed, cfg.num_problems))
        self.prompt_len = countdown.PROMPT_LEN
        self.stop_ids = (self.tokenizer.eos_id,)
        self.pad_id = self.tokenizer.pad_id
        self.vocab_size = self.tokenizer.vocab_size
        if cfg.validation_problems:  # tuning runs train on the rest of the RL split and evaluate on these
            rl = self.splits["rl"]
            self.splits["rl"], self.splits["validation"] = rl[:-cfg.validation_problems], rl[-cfg.validation_problems:]

    @staticmethod
    def solved_by(problems) -> np.ndarray:
        """[len(problems), len(strategy_names)] bool: which strategies (templates) solve each problem."""
        return countdown.solvable_matrix(problems)

    @staticmethod
    def rare_only(problems) -> np.ndarray:
        """[len(problems)] bool: the problems only rare templates solve."""
        common = np.asarray(countdown.SFT_WEIGHTS) > countdown.RARE_MAX_WEIGHT
        return ~np.any(CountdownTask.solved_by(problems) & common, axis=1)

    def problems(self, split: str, start: int, count: int, seed: int) -> list:
        """`count` problems of `split` from position `start` of an endless stream of seeded shuffled epochs."""
        pool = self.splits[split]
        return [pool[streams.epoch_item(position, len(pool), seed)] for position in range(start, start + count)]

    def prompts(self, problems) -> tuple[np.ndarray, np.ndarray]:
        return countdown.encode_prompts(problems, self.tokenizer)

    def score(self, problems, responses_BxN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rewards_B, valid_B, strategy_B) of G responses per problem (prompt-major)."""
        return verifier.score_batch(problems, list(np.asarray(responses_BxN)), self.tokenizer)

    def sft_examples(self, seed: int) -> list[tuple[list[int], list[int], int]]:
        return countdown.sft_corpus(self.splits["sft"], seed, self.cfg.sft_samples_per_problem)

    # Token kinds of a response: the operators and parentheses fix the template (the strategy); numbers fill it.
    token_kind_names = ("operator", "parenthesis", "number", "end")

    def token_kinds(self, ids: np.ndarray) -> np.ndarray:
        """Each token id's kind, an index into `token_kind_names` (-1: padding / special)."""
        t = self.tokenizer
        ops = np.array([t.id_of[o] for o in countdown.OPS])
        parens = np.array([t.id_of["("], t.id_of[")"]])
        ids = np.asarray(ids)
        kinds = np.full(ids.shape, -1, np.int32)
        kinds[ids >= t.id_of["0"]] = 2
        kinds[np.isin(ids, ops)] = 0
        kinds[np.isin(ids, parens)] = 1
        kinds[ids == t.eos_id] = 3
        return kinds

    def strategy_name(self, strategy: int) -> str:
        """A strategy id's name; -1 (no template matched: malformed, or a correct non-canonical form) is "invalid/other"."""
        return self.strategy_names[strategy] if 0 <= strategy < len(self.strategy_names) else "invalid/other"

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def describe(self) -> dict:
        return {split: countdown.describe(problems) for split, problems in self.splits.items()}
