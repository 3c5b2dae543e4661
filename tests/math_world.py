"""A tiny real-math world written to disk: a random Qwen2 with a trained BPE tokenizer and chat template,
a 20-row DeepScaleR-format training file and a 5-row AIME-format eval file."""

from __future__ import annotations

import json
import os

from tests import hf_models


def train_rows() -> list[dict]:
    rows = []
    for i in range(20):  # prompts of two lengths, for the length buckets
        a, b = i % 7 + 1, i // 7 + 2
        rows.append({"problem": f"What is {a} + {b}?" + (" Add the two numbers and show the work." if i % 3 else ""),
                     "answer": str(a + b), "solution": f"{a} + {b} = {a + b}."})
    return rows


def eval_rows() -> list[dict]:
    return [{"problem": f"Compute {a} times {b}.", "answer": a * b} for a, b in [(2, 3), (4, 5), (3, 3), (6, 2), (7, 1)]]


def write(root: str) -> dict[str, str]:
    """Writes the world under `root`; returns {"model", "train", "eval"} paths."""
    model_dir = os.path.join(root, "model")
    corpus = [r["problem"] + " " + r["solution"] + " The answer is \\boxed{" + r["answer"] + "}." for r in train_rows()]
    corpus += [r["problem"] for r in eval_rows()] + ["Let's think step by step and output the final answer within "
                                                     "\\boxed{}.", "user assistant"]
    vocab = hf_models.build_tokenizer(model_dir, corpus * 4)
    hf_models.build("qwen2_tied", model_dir, vocab=vocab, hidden=32, layers=2, heads=4, kv_heads=2)
    paths = {"model": model_dir, "train": os.path.join(root, "deepscaler.jsonl"),
             "eval": os.path.join(root, "aime.json")}
    with open(paths["train"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_rows())
    with open(paths["eval"], "w") as f:
        json.dump(eval_rows(), f)
    return paths
