"""TensorBoard event files hold what metrics.jsonl holds: the same scalars at the same steps, across a resume too."""

import glob
import io
import json
import os
import struct

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from dora_jax.testing import RandomRollouts
from dora_jax.trainer import NonFiniteError, Trainer
from dora_jax.writers import MetricWriter
from tests.trainer.loop_test import SHAPE, _PoisonAt, smoke_config


def read_events(logdir: str) -> dict[str, list]:
    """{tag: [(step, value), ...]} as TensorBoard reads `logdir`: files in name order, records checked against
    their CRCs, and a SessionLog START at step s hiding what earlier events logged at step >= s."""
    out: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            while header := f.read(8):  # TFRecord: length, crc(length), data, crc(data)
                assert struct.unpack("<I", f.read(4))[0] == masked_crc32c(header), path
                data = f.read(struct.unpack("<Q", header)[0])
                assert struct.unpack("<I", f.read(4))[0] == masked_crc32c(data), path
                event = event_pb2.Event.FromString(data)
                if event.session_log.status == event_pb2.SessionLog.START:
                    out = {tag: [(s, v) for s, v in items if s < event.step] for tag, items in out.items()}
                    out = {tag: items for tag, items in out.items() if items}
                for v in event.summary.value:
                    kind = v.WhichOneof("value")
                    value = {"simple_value": v.simple_value, "image": v.image.encoded_image_string,
                             "tensor": v.tensor.string_val[0].decode() if v.tensor.string_val else None}[kind]
                    out.setdefault(v.tag, []).append((event.step, value))
    return out


def test_metric_writer_round_trips_scalars_text_and_images(tmp_path):
    MetricWriter(str(tmp_path / "other"), enabled=False).scalars(1, {"loss": 1.0})
    assert not os.path.exists(tmp_path / "other")  # a non-chief process writes nothing

    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 4), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "figure.png")
    with MetricWriter(str(tmp_path), enabled=True) as tb:
        tb.scalars(1, {"loss": 0.25, "reward/mean": 1, "psi/mean": np.float32(0.5), "name": "x", "none": None})
        tb.scalars(2, {"loss": 0.125})
        tb.text(2, "samples", "**12 + 3 = 15**")
        tb.image(2, "figures/curve", str(tmp_path / "figure.png"))
    # A second writer in the same second, as a resumed run: a new file, and its purge hides step 2 of the first.
    with MetricWriter(str(tmp_path), enabled=True, purge_step=2) as tb:
        tb.scalars(2, {"loss": 9.0})
    events = read_events(str(tmp_path / "tensorboard"))
    assert len(glob.glob(str(tmp_path / "tensorboard" / "events.*"))) == 2
    assert set(events) == {"loss", "reward/mean", "psi/mean"}  # text and image at step 2 were purged too
    assert events["loss"] == [(1, 0.25), (2, 9.0)]
    assert events["reward/mean"] == [(1, 1.0)] and events["psi/mean"] == [(1, 0.5)]

    with MetricWriter(str(tmp_path / "again"), enabled=True) as tb:
        tb.text(3, "samples", "**12 + 3 = 15**")
        tb.image(3, "figures/curve", str(tmp_path / "figure.png"))
    events = read_events(str(tmp_path / "again" / "tensorboard"))
    assert events["samples/text_summary"] == [(3, "**12 + 3 = 15**")]
    [(step, png)] = events["figures/curve"]
    assert step == 3 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


def test_trainer_scalars_equal_metrics_jsonl_across_a_resume(tmp_path):
    c = smoke_config(num_steps=5, checkpoint_every=2)
    c.mesh.update(data=1)

    def evaluate(params, step):
        return {"eval/accuracy": step / 8}

    # Steps 1-3 are logged, the checkpoint is at step 2, step 4 is NaN; the resumed run logs steps 3-5 again.
    with pytest.raises(NonFiniteError):
        Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1]).run(_PoisonAt(bad_step=3, seed=1, **SHAPE),
                                                                 evaluate=evaluate, eval_every=2)
    Trainer.from_config(c, str(tmp_path), devices=jax.devices()[:1]).run(RandomRollouts(seed=1, **SHAPE), evaluate=evaluate,
                                                             eval_every=2)

    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5]
    expected: dict[str, list] = {}
    for r in records:
        for tag, value in r.items():
            if tag != "step":
                expected.setdefault(tag, []).append((r["step"], value))
    events = read_events(str(tmp_path / "tensorboard"))
    assert {"loss", "reward/mean", "kl/policy_nora_token", "perf/step_s", "eval/accuracy"} <= set(expected)
    assert set(events) == set(expected)
    for tag, items in expected.items():
        # Each step once: the killed run's step 3 is hidden behind the resumed run's.
        assert [s for s, _ in events[tag]] == [s for s, _ in items], tag
        # Events hold float32: the jsonl value rounded to float32 is exactly what was written.
        np.testing.assert_array_equal(np.float32([v for _, v in events[tag]]), np.float32([v for _, v in items]),
                                      err_msg=tag)
    assert events["eval/accuracy"] == [(0, 0.0), (2, 0.25), (4, 0.5), (5, 0.625)]
