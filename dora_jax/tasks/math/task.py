"""Real math (docs/design.md §7): DeepScaleR-format training rows, AIME-format eval rows, the model's own chat template.

    task = MathTask(config.task)      # config.task.name = "math"; the section is MathConfig below
    batch = task.problems("rl", n * Q, Q, seed)          # batch n of the length-bucketed grain stream
    prompt_QxP, mask_QxP = task.prompts(batch)
    rewards_B, formatted_B, strategy_B = task.score(batch, response_BxN)

Prompts are `problem + prompt_suffix` as the user turn of the tokenizer's chat template (with
the generation prompt), tokenised once at start-up. Prompts longer than `max_prompt_len` tokens
are dropped with a count, as veRL and DeepScaleR do. Rewards come from `dora_jax.tasks.math.grader`
(last `\\boxed{}`, sympy equivalence in a killable worker); math has no strategy labels (-1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from dora_jax.models.config import SUPPORTED_MODEL_TYPES, UnsupportedModelError
from dora_jax.tasks.math import records, tfds_builder
from dora_jax.tasks.streams import LengthBucketed, left_pad, prompt_stream
from dora_jax.tasks.math import grader
from dora_jax.sections import require

SOURCES = ("files", "tfds")


@dataclasses.dataclass(frozen=True)
class MathConfig:
    """The `task` section of real math: DeepScaleR-format training file, AIME-format eval file, a local model's
    tokenizer and chat template (`configs/common.py:math`)."""

    name: str = "math"
    source: str = "files"  # files: local .json / .jsonl / .parquet | tfds: splits of a TFDS dataset from a manual dir
    train_data: str = "data/deepscaler.jsonl"  # comma-separated training files (tfds: a split name)
    eval_data: str = "data/aime2025.jsonl"  # held-out file (tfds: a split name); launch/eval.py takes any
    problem_field: str = "problem"  # column holding the problem text
    answer_field: str = "answer"  # column holding the gold answer (text or number)
    tfds_manual_dir: str = ""  # tfds: dir with SPLIT.jsonl / .json / .parquet files
    tfds_data_dir: str = "~/tensorflow_datasets"  # tfds: where the prepared ArrayRecord dataset is written
    tokenizer_dir: str = ""  # local HF dir with the tokenizer and chat template ("" = ref_dir)
    chat_template: bool = True  # wrap the problem as the chat template's user turn (False: plain text)
    system_prompt: str = ""  # the chat's system turn ("" = the template's own default, if any)
    prompt_suffix: str = " Let's think step by step and output the final answer within \\boxed{}."
    max_prompt_len: int = 1_024  # tokens; longer problems are dropped with a count
    pad_multiple: int = 64  # prompt widths round up to this, so batches share a few compiled shapes
    bucket_window: int = 8  # batches per length-sorting window (1 = no bucketing)
    require_think_close: bool = False  # DeepScaleR: a response without </think> scores 0 and is unformatted
    allow_fallback: bool = True  # grade "final answer is X" / "answer: X" when there is no \\boxed{}
    grade_timeout_s: float = 2.0  # hard limit per sympy comparison (the worker process is killed past it)

    def __post_init__(self):
        require(self.source in SOURCES, "source", self.source, f"use one of {', '.join(SOURCES)}.")
        require(self.max_prompt_len >= 1, "max_prompt_len", self.max_prompt_len, "allow prompts of 1+ tokens.")
        require(self.pad_multiple >= 1, "pad_multiple", self.pad_multiple, "use 1 (no rounding) or more.")
        require(self.bucket_window >= 1, "bucket_window", self.bucket_window, "use 1 (no bucketing) or more.")
        require(self.grade_timeout_s > 0, "grade_timeout_s", self.grade_timeout_s, "give the grader a positive limit.")


def load_tokenizer(path: str):
    """The HF tokenizer of a local model dir (tokenizer.json / tokenizer_config.json); nothing is downloaded."""
    import transformers

    if not path or not os.path.isdir(os.path.expanduser(path)):
        raise records.DataError(f"tokenizer dir {path!r} does not exist. Set config.task.tokenizer_dir (or ref_dir) to "
                                "a local Hugging Face model dir holding tokenizer.json / tokenizer_config.json.")
    config_path = os.path.join(os.path.expanduser(path), "config.json")
    if os.path.exists(config_path):  # a model of another architecture fails inside transformers, so name it first
        try:
            with open(config_path) as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(f"{config_path}: model_type {model_type!r} is not supported; supported: "
                                        f"{sorted(SUPPORTED_MODEL_TYPES)}. Point config.task.tokenizer_dir / "
                                        "config.ref_dir at a Qwen2 or Llama model dir.")
    try:
        return transformers.AutoTokenizer.from_pretrained(os.path.expanduser(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a dir it cannot use
        raise records.DataError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {e}). The dir needs "
                                "tokenizer.json (or the files of a slow tokenizer) and tokenizer_config.json.") from e


def stop_ids_of(tokenizer, model_dir: str) -> tuple[int, ...]:
    """EOS ids of the tokenizer and of the model's generation_config.json (chat models end turns with their own id)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    path = os.path.join(os.path.expanduser(model_dir), "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    if not ids:
        raise records.DataError(f"{model_dir}: the tokenizer has no eos_token and generation_config.json no "
                                "eos_token_id, so responses could never stop. Add eos_token to tokenizer_config.json.")
    return tuple(dict.fromkeys(int(i) for i in ids))


class MathTask:
    """Train / eval rows from local files (or a TFDS manual dir), prompts by the model's chat template."""

    name = "math"
    strategy_names: tuple[str, ...] = ()  # math has no strategy labels
    exact_vocab = False  # the tokenizer's ids need only fit the model's (often padded) embedding
    needs_model_dir = True  # the tokenizer and the starting weights come from a local model dir

    @staticmethod
    def prompt_budget(cfg: MathConfig) -> int:
        """The widest prompt in tokens (for the memory planner, without reading the data)."""
        return cfg.max_prompt_len

    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        self.stop_ids = stop_ids_of(self.tokenizer, cfg.tokenizer_dir)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])
        self.vocab_size = len(self.tokenizer)
        self.prompt_len = cfg.max_prompt_len
        self.splits = {split: self._rows(split) for split in self._split_names()}  # a bad file fails now
        self._streams: dict[tuple[str, int, int], LengthBucketed] = {}

    def _split_names(self) -> tuple[str, ...]:
        """Both splits; only "eval" when train_data is empty (an evaluation never reads the training file)."""
        return ("rl", "eval") if self.cfg.train_data else ("eval",)

    def _rows(self, split: str) -> list[dict]:
        """The rows of split "rl" or "eval", each with its prompt's token ids."""
        spec = {"rl": self.cfg.train_data, "eval": self.cfg.eval_data}[split]
        if not spec:
            raise records.DataError("config.task.eval_data is empty: name the held-out file(s).")
        return self._load(spec)

    def _load(self, spec: str) -> list[dict]:
        fields = {"problem": self.cfg.problem_field, "answer": self.cfg.answer_field}
        if self.cfg.source == "files":
            rows = [row for path in spec.split(",") for row in records.read_rows(path.strip(), fields)]
        elif self.cfg.source == "tfds":
            rows = tfds_builder.read_split(self.cfg.tfds_manual_dir, self.cfg.tfds_data_dir, spec, fields)
        else:  # MathConfig allows no other source
            raise ValueError(f"config.task.source={self.cfg.source!r}: use 'files' or 'tfds'.")
        return self._encoded(rows, spec)

    def _encoded(self, rows: list[dict], spec: str) -> list[dict]:
        """`rows` with their prompt ids; prompts over max_prompt_len are dropped with a count."""
        ids = self.encode([r["problem"] for r in rows])
        kept = [{**r, "prompt_ids": x} for r, x in zip(rows, ids) if len(x) <= self.cfg.max_prompt_len]
        if len(kept) < len(rows):
            print(f"{spec}: dropped {len(rows) - len(kept)} of {len(rows)} problems longer than "
                  f"config.task.max_prompt_len={self.cfg.max_prompt_len} tokens.")
        if not kept:
            raise records.DataError(f"{spec}: every prompt is longer than config.task.max_prompt_len="
                                    f"{self.cfg.max_prompt_len} tokens; raise it.")
        return kept

    def encode(self, problems: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each problem's prompt: the chat template's user turn plus the generation prompt."""
        texts = [p + self.cfg.prompt_suffix for p in problems]
        if self.cfg.chat_template:
            if not self.tokenizer.chat_template:
                raise records.DataError(f"{self.cfg.tokenizer_dir}: the tokenizer has no chat template; add one to "
                                        "tokenizer_config.json or set --config.task.chat_template=False for plain prompts.")
            texts = [self.tokenizer.apply_chat_template(self._messages(t), add_generation_prompt=True, tokenize=False)
                     for t in texts]
        # The template already holds any BOS token; adding special tokens again would double it.
        return [tuple(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _messages(self, text: str) -> list[dict]:
        """The chat of one prompt: the system turn (when configured) and the problem as the user turn."""
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return [*system, {"role": "user", "content": text}]

    def problems(self, split: str, start: int, count: int, seed: int) -> list[dict]:
        """Batch start // count of the split's length-bucketed stream (batches of `count` problems)."""
        if start % count:
            raise ValueError(f"start={start} is not a multiple of the batch size {count}.")
        key = (split, count, seed)
        if key not in self._streams:
            # Every host reads the whole batch: the learner lays rows onto its global mesh itself.
            stream = prompt_stream(self.splits[split], seed, shard=(0, 1))
            self._streams[key] = LengthBucketed(stream, lambda r: len(r["prompt_ids"]), count, self.cfg.bucket_window,
                                                seed)
        return self._streams[key][start // count]

    def prompts(self, problems: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        return left_pad([p["prompt_ids"] for p in problems], self.pad_id, multiple=self.cfg.pad_multiple)

    def decode(self, ids) -> str:
        """Text of real tokens (no padding), special tokens included: the logged samples show the template."""
        return self.tokenizer.decode([int(i) for i in np.asarray(ids)], skip_special_tokens=False)

    def _response_ids(self, ids) -> list[int]:
        """Token ids up to the first stop id (the sampler pads past it)."""
        ids = [int(i) for i in np.asarray(ids)]
        stops = [i for i, t in enumerate(ids) if t in self.stop_ids]
        return ids[: stops[0]] if stops else ids

    def score(self, problems: Sequence[dict], responses_BxN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rewards_B, formatted_B, strategy_B = -1) of G responses per problem (prompt-major)."""
        B = len(responses_BxN)
        if not problems or B % len(problems):
            raise ValueError(f"{B} responses for {len(problems)} problems: need G >= 1 responses per problem.")
        G = B // len(problems)
        texts = self.tokenizer.batch_decode([self._response_ids(r) for r in responses_BxN], skip_special_tokens=True)
        grades = [grader.grade(t, problems[i // G]["answer"], require_think_close=self.cfg.require_think_close,
                                    allow_fallback=self.cfg.allow_fallback, timeout_s=self.cfg.grade_timeout_s)
                  for i, t in enumerate(texts)]
        return (np.array([g.reward for g in grades], np.float32), np.array([g.formatted for g in grades], bool),
                np.full(B, -1, np.int32))

    def strategy_name(self, strategy: int) -> str:
        del strategy
        return "unlabelled"

    def sft_examples(self, seed: int):
        raise ValueError("the math task has no SFT corpus: point config.ref_dir at a local model instead of building one.")

    def describe(self) -> dict:
        return {split: {"problems": len(rows), "max_prompt_tokens": max(len(r["prompt_ids"]) for r in rows)}
                for split, rows in self.splits.items()}
