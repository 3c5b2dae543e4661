"""Multi-process training: 2 processes x 2 CPU devices equal 1 process x 4; a dead process stops the other, and
both resume.

Each run is a fresh interpreter (`jax.distributed` starts once per process) training the
smoke Countdown model from random trees with inline rollouts on a (data=2, fsdp=2) mesh.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from configs import common
from dora_jax.tasks import make_task
from dora_jax.eval.evaluate import Evaluator
from dora_jax.models import checkpoint
from dora_jax.rollout.source import InlineRollouts
from dora_jax.trainer import Trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HEARTBEAT_S = 10  # a killed process is noticed after this long
pytestmark = pytest.mark.slow

_CHILD = textwrap.dedent("""
    import os, sys
    workdir, devices, port, num_processes, process_id = sys.argv[1:3] + [int(a) for a in sys.argv[3:]]
    sys.path.insert(0, {root!r})
    from tests import xla_flags
    os.environ["XLA_FLAGS"] = xla_flags(int(devices))
    from dora_jax import distributed
    if num_processes > 1:
        distributed.initialize(f"127.0.0.1:{{port}}", num_processes, process_id, heartbeat_timeout_s={heartbeat})
    from tests.trainer.multiprocess_test import train
    train(workdir)
""")


def config():
    c = common.get_config()  # no `build` section and no ref_dir: random ref and Nora trees
    common.smoke(c)
    c.model.vocab_size = make_task(c.task).vocab_size
    c.optim.lr = 1e-3
    c.mesh.update(data=2, fsdp=2, tensor=1)
    c.trainer.update(num_steps=6, checkpoint_every=2)
    return c


def train(workdir: str) -> None:
    """What `pipeline.run` does for training, on every process of the run."""
    c = config()
    jax.config.update("jax_numpy_rank_promotion", "raise")
    trainer = Trainer.from_config(c, workdir)
    task = make_task(c.task)
    source = InlineRollouts(task, trainer.model_config, c, trainer.samples_path)
    trainer.run(source, evaluate=Evaluator(task, trainer.model_config, c).quick, eval_every=c.eval.every)
    trainer.export(os.path.join(workdir, "policy"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env():
    """The children's environment: the suite's, on the CPU."""
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _start(tmp_path, workdir, env, num_processes: int, devices: int) -> list[tuple[subprocess.Popen, str]]:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=ROOT, heartbeat=HEARTBEAT_S))
    port, started = _free_port(), []
    for pid in range(num_processes):
        log = str(tmp_path / f"{os.path.basename(workdir)}-{pid}-{time.monotonic_ns()}.log")
        with open(log, "w") as out:
            args = [str(workdir), str(devices), str(port), str(num_processes), str(pid)]
            proc = subprocess.Popen([sys.executable, str(script), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        started.append((proc, log))
    return started


def _tail(log: str) -> str:
    with open(log) as f:
        return f.read()[-3000:]


def _finish(started, timeout=180) -> list[str]:
    """Waits for every process to succeed; returns their logs."""
    for proc, log in started:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p, _ in started:
                p.kill()
            raise AssertionError(f"timed out:\n{_tail(log)}") from None
        assert rc == 0, f"process exited with {rc}:\n{_tail(log)}"
    return [open(log).read() for _, log in started]


def _metrics(workdir) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == len({r["step"] for r in rows}), "a step was written twice"
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows}


def _assert_same_run(a_dir, b_dir) -> None:
    a, b = _metrics(a_dir), _metrics(b_dir)
    assert sorted(a) == sorted(b) == list(range(7))
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        for k in a[step]:
            assert a[step][k] == pytest.approx(b[step][k], rel=1e-5, abs=1e-5), (step, k)


def test_two_processes_equal_one_with_as_many_devices_and_resume_after_one_is_killed(tmp_path, env):
    """One run covers what a multi-process run must do: train like one process with 4 devices, stop when a process
    dies, and resume on both processes into the same run (one reference run and one 2-process run keep the suite's
    cost down; each step below is checked on its own)."""
    reference = tmp_path / "reference"  # one process with 4 devices: the run the 2-process run must reproduce
    _finish(_start(tmp_path, reference, env, num_processes=1, devices=4))

    workdir = tmp_path / "run"
    started = _start(tmp_path, workdir, env, num_processes=2, devices=2)
    (survivor, survivor_log), (victim, victim_log) = started
    # Kill process 1 as soon as the step-4 checkpoint is on disk (steps 3-4 ran on after the step-2 save); process 0
    # must stop by itself.
    deadline = time.monotonic() + 600  # only guards against a hang: a loaded machine may take minutes
    while not (workdir / "checkpoints" / "4").is_dir():
        assert time.monotonic() < deadline and survivor.poll() is None and victim.poll() is None, _tail(victim_log)
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait()
    try:
        rc = survivor.wait(timeout=60)
    except subprocess.TimeoutExpired:
        survivor.kill()
        raise AssertionError(f"process 0 still runs 60 s after process 1 died:\n{_tail(survivor_log)}") from None
    assert rc != 0 and time.monotonic() - killed_at < 60
    with open(survivor_log) as f:
        log = f.read()
    assert "another task died" in log, _tail(survivor_log)  # jax's own message
    assert "Resumed" not in log  # a fresh workdir starts from step 0

    logs = _finish(_start(tmp_path, workdir, env, num_processes=2, devices=2))
    for log in logs:
        assert f"Resumed from {workdir}/checkpoints at step 4." in log, log[-3000:]
    # Steps 1-4 come from the first 2-process run, steps 5-6 from the resumed one: each equals the reference.
    _assert_same_run(reference, workdir)
    # Process 0 alone wrote the per-run files: no line twice, none lost across the resume.
    assert (workdir / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text() != ""
    # The export gathered Dora's parameters from both processes.
    exported, expected = checkpoint.load(str(workdir / "policy")), checkpoint.load(str(reference / "policy"))
    for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
