"""The sampler process: same rollouts and metrics as inline sampling, fails fast when it dies."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import common
from dora_jax.tasks import make_task
from dora_jax.rollout.process import ProcessRollouts, SamplerDiedError
from dora_jax.models import ModelConfig, checkpoint, init_params, param_shapes
from dora_jax.pipeline import batch_source
from dora_jax.trainer import Trainer


def _config(**trainer):
    c = common.get_config("smoke")
    common.smoke(c)
    c.model.vocab_size = make_task(c.task).vocab_size
    c.policy_init = "random"
    c.objective.loss = "grpo"
    c.optim.lr = 1e-3
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.eval.every = 0
    c.trainer.update({"num_steps": 3, "checkpoint_every": 100, **trainer})
    return c


class Recorder:
    """Wraps a source and keeps a copy of every batch it hands out."""

    def __init__(self, source, kill_after=None):
        self.source, self.batches, self.kill_after = source, [], kill_after

    def __getattr__(self, name):
        return getattr(self.source, name)

    def next_batch(self, step):
        if self.kill_after is not None and step == self.kill_after:
            self.killed_at = time.monotonic()
            os.kill(self.source.process.pid, signal.SIGKILL)
        batch, host_metrics = self.source.next_batch(step)
        self.batches.append({k: np.copy(v) for k, v in batch._asdict().items()})
        return batch, host_metrics


def _run(config, workdir, mode):
    """The batches and records of training `config` on the batch source the pipeline picks for `mode`."""
    config = copy.deepcopy(config)
    config.rollout.mode = mode
    trainer = Trainer.from_config(config, str(workdir), devices=jax.devices()[:1])
    recorder = Recorder(batch_source(config, make_task(config.task), trainer, None, None))
    records = trainer.run(recorder)
    return recorder.batches, records


def _with_saved_ref_and_nora(config, root):
    """`config` reading Ref and Nora from checkpoints (two random policies), as the sampler process must."""
    model_config = ModelConfig(**config.model)
    for role, seed in (("ref", 11), ("nora", 12)):
        checkpoint.save(str(root / role), model_config, init_params(model_config, jax.random.key(seed)))
        config[f"{role}_dir"] = str(root / role)
    config.policy_init = "ref"
    return config


@pytest.mark.parametrize("frozen", ["none", "nora", "ref_guide"])
def test_process_mode_equals_inline_mode_at_zero_staleness(tmp_path, frozen):
    config = _config()
    if frozen != "none":  # the sampler process loads Ref and Nora from their checkpoints
        config = _with_saved_ref_and_nora(config, tmp_path)
        config.objective.nora_samples = 2  # the complementarity reward samples Nora
    if frozen == "nora":  # handover puts her tokens in the batch
        config.rollout.handover_window = 2
    if frozen == "ref_guide":  # Ref is sampled too (random policies solve nothing, so no row is replaced)
        config.objective.guide, config.objective.guide_from = 1, "ref"
    inline_batches, inline_records = _run(config, tmp_path / "inline", "inline")
    process_batches, process_records = _run(config, tmp_path / "process", "process")
    assert all(("rollout/nora_success" in r) == (frozen != "none") for r in inline_records + process_records)
    assert all(("rollout/guided_frac" in r) == (frozen == "ref_guide") for r in inline_records + process_records)
    assert len(inline_batches) == len(process_batches) == 3
    for a, b in zip(inline_batches, process_batches):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert len(inline_records) == len(process_records) == 3
    for a, b in zip(inline_records, process_records):
        assert b["rollout/staleness"] == 0 and b["rollout/dropped"] == 0
        for key in a:
            if not key.startswith("perf/"):
                assert a[key] == b[key], key  # bitwise: same batches, same update


def test_killed_sampler_fails_fast_and_keeps_the_checkpoint(tmp_path):
    config = _config(num_steps=6, checkpoint_every=2)
    config.rollout.mode = "process"
    trainer = Trainer.from_config(config, str(tmp_path), devices=jax.devices()[:1])
    source = Recorder(ProcessRollouts(trainer.model_config, config), kill_after=3)
    with pytest.raises(SamplerDiedError, match="SIGKILL"):
        trainer.run(source)
    assert time.monotonic() - source.killed_at < 30
    assert source.source.process is None  # closed: no orphan left behind
    resumed = Trainer.from_config(config, str(tmp_path), devices=jax.devices()[:1])
    assert resumed.step == 2
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2]


def test_sampler_exception_carries_its_traceback():
    config = _config()
    model_config = ModelConfig(**config.model)
    config.task.name = "no_such_task"  # fails inside the sampler process only
    source = ProcessRollouts(model_config, config)
    source.publish(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model_config)), 0)
    with pytest.raises(SamplerDiedError, match="no_such_task") as err:
        source.next_batch(0)
    assert "Traceback" in str(err.value)


def test_staleness_must_cover_the_sync_interval():
    config = _config()
    config.rollout.update(sync_every=3, max_staleness=1)
    with pytest.raises(ValueError, match="max_staleness >= sync_every - 1"):
        ProcessRollouts(None, config)



def test_sync_every_pushes_parameters_every_other_update(tmp_path):
    config = _config(num_steps=4)
    config.rollout.update(sync_every=2, max_staleness=1)
    trainer = Trainer.from_config(config, str(tmp_path), devices=jax.devices()[:1])
    records = trainer.run(ProcessRollouts(trainer.model_config, config))
    # Versions 0, 2, 4 are pushed; batch n waits for a version >= n - 1, so staleness alternates.
    assert [r["rollout/staleness"] for r in records] == [0, 1, 0, 1]
    assert all(r["rollout/dropped"] == 0 for r in records)


def test_a_killed_learner_leaves_no_sampler_and_no_shared_memory():
    """SIGKILL the learner: the kernel kills its sampler (PR_SET_PDEATHSIG) and the shared block is freed."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-m", "tests.rollout.orphan_script"], capture_output=True, text=True,
                            cwd=root, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    pid, shm_name = result.stdout.splitlines()[-1].split()  # the last line: the warning of a random policy before

    def running() -> bool:  # a zombie (killed, not yet reaped by whoever adopted it) runs no more
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    for _ in range(600):  # polled, not timed: the only bound is the test's own patience
        if not running() and not os.path.exists(f"/dev/shm/{shm_name}"):
            break
        time.sleep(0.1)
    assert not running(), f"the sampler process {pid} outlived its learner"
    assert not os.path.exists(f"/dev/shm/{shm_name}"), "the learner's shared memory block leaked"
