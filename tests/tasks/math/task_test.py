"""The math task: chat-template prompts from a real tokenizer, grading, resumable batches, TFDS, bad inputs.

Length bucketing itself is tested in tests/data/batching_test.py."""

import json
import shutil

import numpy as np
import pytest

from configs import nora_grpo
from dora_jax.tasks.math import tfds_builder
from dora_jax.tasks.math.task import MathTask
from dora_jax.models.config import UnsupportedModelError
from dora_jax.tasks.math.records import DataError
from tests import math_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return math_world.write(str(tmp_path_factory.mktemp("math")))


def _cfg(world, **overrides):
    c = nora_grpo.get_config("math,smoke").task
    c.update({"tokenizer_dir": world["model"], "train_data": world["train"], "eval_data": world["eval"], **overrides})
    return c


def test_prompts_use_the_chat_template_and_stop_at_the_turn_end(world):
    task = MathTask(_cfg(world))
    assert len(task.splits["rl"]) == 20 and len(task.splits["eval"]) == 5
    assert task.splits["eval"][0]["answer"] == "6"  # an integer AIME answer reads as text
    prompt, mask = task.prompts(task.splits["eval"][:2])
    assert prompt.shape[1] % 16 == 0 and (mask.sum(1) > 0).all()
    text = task.tokenizer.decode(prompt[0][mask[0] == 1])
    assert text.startswith("<|im_start|>user\nCompute 2 times 3. Let's think") and text.endswith("<|im_start|>assistant\n")
    assert "\\boxed{}" in text
    im_end = task.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert task.stop_ids == (im_end, 2)  # the tokenizer's eos, then generation_config.json's
    plain = MathTask(_cfg(world, chat_template=False))
    assert plain.tokenizer.decode(plain.splits["eval"][0]["prompt_ids"]).startswith("Compute 2 times 3. Let's")


def test_score_grades_the_boxed_answer_up_to_the_stop_token(world):
    task = MathTask(_cfg(world))
    problems = task.splits["eval"][:1]  # answer 6
    enc = lambda s: task.tokenizer(s, add_special_tokens=False)["input_ids"]
    stop = task.stop_ids[0]

    def pad(responses):
        width = max(map(len, responses))
        return np.array([r + [task.pad_id] * (width - len(r)) for r in responses])

    tokens = pad([enc("so \\boxed{6}") + [stop] + enc(" \\boxed{7}"), enc("\\boxed{7}") + [stop], enc("six") + [stop],
                  enc("the final answer is 6") + [stop]])
    rewards, formatted, strategy = task.score(problems, tokens)
    np.testing.assert_array_equal(rewards, [1, 0, 0, 1])
    np.testing.assert_array_equal(formatted, [True, True, False, True])
    assert (strategy == -1).all()
    strict = MathTask(_cfg(world, allow_fallback=False, require_think_close=True))
    think = pad([enc("</think> \\boxed{6}") + [stop], enc("\\boxed{6}") + [stop]])
    np.testing.assert_array_equal(strict.score(problems, think)[0], [1, 0])


def test_batches_cover_an_epoch_and_resume_mid_epoch(world):
    task = MathTask(_cfg(world))
    batches = [[p["problem"] for p in task.problems("rl", n * 2, 2, seed=0)] for n in range(10)]
    assert sorted(sum(batches, [])) == sorted(r["problem"] for r in math_world.train_rows())  # one epoch
    restored = MathTask(_cfg(world))  # a new process restoring position 7 of the stream
    assert [p["problem"] for p in restored.problems("rl", 14, 2, seed=0)] == batches[7]
    assert [[p["problem"] for p in task.problems("rl", n * 2, 2, seed=1)] for n in range(10)] != batches


def test_long_prompts_are_dropped_with_a_count(world, capsys):
    lengths = sorted(len(r["prompt_ids"]) for r in MathTask(_cfg(world)).splits["rl"])
    cut = (lengths[0] + lengths[-1]) // 2  # the eval prompts fit under it
    task = MathTask(_cfg(world, max_prompt_len=cut))
    kept = sum(n <= cut for n in lengths)
    assert len(task.splits["rl"]) == kept < 20 and f"dropped {20 - kept} of 20" in capsys.readouterr().out
    with pytest.raises(DataError, match="every prompt is longer than config.task.max_prompt_len=3"):
        MathTask(_cfg(world, max_prompt_len=3))


def test_bad_inputs_fail_with_the_cause(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "a", "answer": "1"}) + "\n" + json.dumps({"question": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: missing field 'problem'"):
        MathTask(_cfg(world, train_data=str(bad)))
    with pytest.raises(DataError, match="tokenizer dir .* does not exist"):
        MathTask(_cfg(world, tokenizer_dir=str(tmp_path / "nowhere")))
    (tmp_path / "notok").mkdir()
    with pytest.raises(DataError, match="cannot load a tokenizer"):
        MathTask(_cfg(world, tokenizer_dir=str(tmp_path / "notok")))
    # A model of another architecture, its tokenizer beside it: named before transformers trips over it.
    mamba = shutil.copytree(world["model"], tmp_path / "mamba")
    config = json.loads((mamba / "config.json").read_text())
    (mamba / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(UnsupportedModelError, match=r"mamba/config\.json: model_type 'mamba' is not supported"):
        MathTask(_cfg(world, tokenizer_dir=str(mamba)))


def test_tfds_builder_serves_the_same_rows_as_the_files(world, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train.jsonl").write_text(open(world["train"]).read())
    (manual / "aime.json").write_text(open(world["eval"]).read())
    source = tfds_builder.data_source(str(manual), str(tmp_path / "tfds"), "aime")
    assert len(source) == 5
    task = MathTask(_cfg(world, source="tfds", tfds_manual_dir=str(manual), tfds_data_dir=str(tmp_path / "tfds"),
                         train_data="train", eval_data="aime"))
    files = MathTask(_cfg(world))
    for split in ("rl", "eval"):
        assert sorted(r["problem"] for r in task.splits[split]) == sorted(r["problem"] for r in files.splits[split])
        assert sorted(r["answer"] for r in task.splits[split]) == sorted(r["answer"] for r in files.splits[split])
    with pytest.raises(DataError, match="not 'test'"):
        tfds_builder.data_source(str(manual), str(tmp_path / "tfds"), "test")
