"""Inline rollouts on devices of their own (config.rollout.sampler_devices) equal rollouts on the learner's."""

import jax
import numpy as np
import pytest

from configs import common
from dora_jax.tasks import make_task
from dora_jax.rollout.source import InlineRollouts
from dora_jax.trainer import Trainer
from dora_jax.sharding import split_devices


def _config(sampler_devices):
    c = common.get_config()
    common.smoke(c)
    c.model.vocab_size = make_task(c.task).vocab_size
    c.optim.lr = 1e-3
    c.eval.every = 0
    c.rollout.sampler_devices = sampler_devices
    c.trainer.update(num_steps=3, checkpoint_every=100)
    return c


class _Recorder(InlineRollouts):
    """Keeps a host copy of every batch, and the devices each published tree went to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches, self.placed_on = [], set()

    def publish(self, params, step):
        super().publish(params, step)
        self.placed_on |= {d for x in jax.tree.leaves(self.params) for d in x.devices()}

    def next_batch(self, step):
        batch, host_metrics = super().next_batch(step)
        self.batches.append({k: np.copy(v) for k, v in batch._asdict().items()})
        return batch, host_metrics


def _run(config, devices, workdir):
    trainer = Trainer.from_config(config, str(workdir), devices=devices)
    source = _Recorder(make_task(config.task), trainer.model_config, config, devices=devices)
    records = trainer.run(source)
    learner = {d for x in jax.tree.leaves(trainer.state.params) for d in x.devices()}
    return source, records, learner


def test_sampler_on_its_own_devices_gives_the_same_batches(tmp_path):
    devices = jax.devices()[:4]
    shared, shared_records, shared_learner = _run(_config(0), devices[:2], tmp_path / "shared")
    split, split_records, split_learner = _run(_config(2), devices, tmp_path / "split")
    assert shared_learner == shared.placed_on == set(devices[:2])
    assert split_learner == set(devices[:2]) and split.placed_on == set(devices[2:])  # disjoint device sets
    assert len(shared.batches) == len(split.batches) == 3
    # Same tokens; log-probs of rows split over two devices differ from the whole batch's in f32 ulps.
    for a, b in zip(shared.batches, split.batches):
        for key in a:
            atol = 0 if a[key].dtype.kind == "i" else 1e-5
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)
    for a, b in zip(shared_records, split_records):
        for key in a:
            if not key.startswith("perf/"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key


def test_split_devices_keeps_a_learner_device_per_process():
    c = _config(3)
    learner, sampler = split_devices(c, jax.devices()[:4])
    assert learner == jax.devices()[:1] and sampler == jax.devices()[1:4]
    c.rollout.sampler_devices = 4
    with pytest.raises(ValueError, match="sampler_devices=4"):
        split_devices(c, jax.devices()[:4])


def test_drift_warning_compares_with_the_first_batch(capsys):
    """A base model that formats half its answers is not 'drifting' at step 0; falling well below its own
    first rate is, and is said once."""
    from dora_jax.rollout.source import HostSide, MadeBatch

    host = HostSide(None)
    for step, valid in enumerate([0.45, 0.5, 0.4, 0.3, 0.2]):
        host.receive(MadeBatch(None, {"rollout/valid_frac": valid}, []), step)
    out = capsys.readouterr().out
    assert out.count("Warning") == 1 and "at step 3 30% of the rollouts" in out and "down from 45%" in out
