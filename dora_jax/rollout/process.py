"""`rollout.mode = "process"`: the sampler in its own OS process with its own JAX runtime.

    learner                                   sampler process
    publish(params, v) --shared memory-->     newest params with version >= n - max_staleness
    next_batch(n)      <--bounded queue---    batch n (rewards computed here, on its host side)

Weights travel through one shared-memory block per slot: the learner copies every leaf
into it (a single memcpy per leaf, no pickling of the tree) and sends only the version
number; the sampler copies them out under the slot's lock. Two slots let the learner
write version v + 1 while the sampler still reads v. Batches carry the version that
sampled them; one older than `max_staleness` updates is dropped and counted, and its
behaviour log-probs let the loss importance-correct the ones that are used. With
max_staleness = 0 every batch n is sampled with exactly the parameters after n updates,
so the rollouts equal `InlineRollouts`'.

A sampler that dies (exception or signal) makes `next_batch` raise `SamplerDiedError`
with its traceback or exit signal within about a second; nothing hangs.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from multiprocessing import shared_memory
from typing import Any

import jax
import ml_collections
import numpy as np

from dora_jax.models import ModelConfig, checkpoint, param_shapes
from dora_jax.batch import RolloutBatch
from dora_jax.rollout.source import HostSide, MadeBatch, RolloutConfig, RolloutMaker, samples_nora, samples_ref
from dora_jax.sections import parse
from dora_jax.tasks import make_task

_POLL_S = 0.5  # how often a blocked side checks that the other is alive
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


_MAX_ERROR_CHARS = 30_000  # a traceback's tail; well under a pipe's buffer, so sending it never blocks


class SamplerDiedError(RuntimeError):
    """The sampler process exited; the message holds its traceback or exit signal."""


class _Layout:
    """Byte offsets of every parameter leaf in one slot, from the model config alone (both sides agree)."""

    def __init__(self, model_config: ModelConfig):
        shapes = param_shapes(model_config)
        self.leaves, self.treedef = jax.tree.flatten(shapes)
        self.offsets, offset = [], 0
        for leaf in self.leaves:
            offset = -(-offset // 64) * 64  # 64-byte aligned views
            self.offsets.append(offset)
            offset += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        self.slot_bytes = -(-offset // 64) * 64 + 64  # + the version header

    def views(self, buf, slot: int) -> tuple[np.ndarray, list[np.ndarray]]:
        base = slot * self.slot_bytes
        version = np.ndarray((1,), np.int64, buf, base + self.slot_bytes - 64)
        return version, [np.ndarray(leaf.shape, leaf.dtype, buf, base + off)
                         for leaf, off in zip(self.leaves, self.offsets)]


def _sampler_main(config_json: str, model_config_json: str, shm_name: str, locks, versions, batches, errors,
                  start: int, parent: int):
    """The sampler process: wait for fresh enough params, make batch n, put it on the queue, repeat."""
    _die_with(parent)
    # Exiting must never wait for the queue's feeder thread to push a batch into a pipe nobody reads.
    batches.cancel_join_thread()
    shm = None
    try:
        config = ml_collections.ConfigDict(json.loads(config_json))
        model_config = ModelConfig.from_json_dict(json.loads(model_config_json))
        layout = _Layout(model_config)
        shm = shared_memory.SharedMemory(name=shm_name)
        frozen = {name: jax.device_put(checkpoint.load_policy(path, config.model).params) if needed else None
                  for name, path, needed in (("nora", config.nora_dir or config.ref_dir, samples_nora(config)),
                                             ("ref", config.ref_dir, samples_ref(config)))}
        maker = RolloutMaker(make_task(config.task), model_config, config, nora_params=frozen["nora"],
                             ref_params=frozen["ref"])
        newest, params, loaded = -1, None, -1
        position = start
        while True:
            newest = _newest_version(versions, newest, position - config.rollout.max_staleness, parent)
            if newest is None:  # the learner said stop, or is gone
                return
            if newest > loaded:
                loaded, params = _read_params(layout, shm, locks, newest % 2)
            made = maker.make(position, params)
            made.version = loaded
            while True:
                try:
                    batches.put(made, timeout=_POLL_S)
                    break
                except queue.Full:
                    if os.getppid() != parent:
                        return
            position += 1
    except BaseException:  # report anything, then exit non-zero
        # Through a pipe of its own, written before exiting: the batch queue's feeder thread is not waited
        # for at exit (see above), so an error put there could be lost.
        errors.send(traceback.format_exc()[-_MAX_ERROR_CHARS:])
        raise
    finally:
        if shm is not None:
            shm.close()


def _die_with(parent: int) -> None:
    """Asks Linux to SIGKILL this process when the learner dies, even by SIGKILL (PR_SET_PDEATHSIG); the
    learner's resource tracker then frees the shared memory and semaphores. Elsewhere the sampler notices a
    dead learner at its next poll (os.getppid)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the learner died before the call: nobody will read our batches
        os._exit(0)


def _newest_version(versions, newest: int, need: int, parent: int) -> int | None:
    """Reads the learner's version notices: blocks until one is at least `need`, then returns the newest
    (None when the learner sent its stop notice or has died)."""
    while True:
        blocking = newest < need
        try:
            message = versions.get(timeout=_POLL_S) if blocking else versions.get_nowait()
        except queue.Empty:
            if not blocking:
                return newest
            if os.getppid() != parent:  # the learner is gone: nobody will read our batches
                return None
            continue
        if message is None:
            return None
        newest = max(newest, message)


def _read_params(layout: _Layout, shm, locks, slot: int) -> tuple[int, Any]:
    """(version, parameters on the sampler's device) of one shared-memory slot, read under its lock."""
    with locks[slot]:
        version, leaves = layout.views(shm.buf, slot)
        loaded = int(version[0])
        params = jax.tree.unflatten(layout.treedef, [jax.device_put(np.array(x)) for x in leaves])
        del version, leaves  # release the views so the block can close
    return loaded, params


class ProcessRollouts:
    """A `BatchSource` fed by a sampler process; `publish` pushes the policy's parameters to it."""

    def __init__(self, model_config: ModelConfig, config, samples_path: str | None = None):
        r = parse(RolloutConfig, config.rollout, "rollout")  # checks sync_every against max_staleness
        if jax.process_count() > 1:
            raise ValueError("rollout.mode='process' runs one sampler next to a single-process learner; with "
                             f"{jax.process_count()} JAX processes use rollout.mode='inline'.")
        if r.sampler_devices:
            raise ValueError(f"config.rollout.sampler_devices={r.sampler_devices} gives devices to the inline sampler; "
                             "the sampler process has a runtime of its own. Set rollout.sampler_devices=0 or use "
                             "rollout.mode='inline'.")
        if (samples_nora(config) or samples_ref(config)) and not config.ref_dir:
            raise ValueError("the sampler process loads Nora and Ref from their directories, and config.ref_dir is "
                             "empty (a random Ref); set config.ref_dir to a saved policy or use rollout.mode='inline'.")
        self.model_config, self.config, self.rollout = model_config, config, r
        self.sync_s = 0.0  # seconds the last parameter push took
        self.host = HostSide(samples_path)
        self.layout = _Layout(model_config)
        self.position = 0
        self.dropped = 0
        self.process = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: its own JAX runtime, no forked XLA threads
        self.shm = shared_memory.SharedMemory(create=True, size=2 * self.layout.slot_bytes)
        self.locks = (ctx.Lock(), ctx.Lock())
        self.versions = ctx.Queue()
        self.batches = ctx.Queue(maxsize=self.rollout.queue_size)
        self.errors, errors = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_sampler_main, name="dora_jax-sampler", daemon=True,
            args=(self.config.to_json_best_effort(), self.model_config.to_json(), self.shm.name, self.locks,
                  self.versions, self.batches, errors, self.position, os.getpid()))
        self.process.start()
        errors.close()  # the child holds the writing end

    def publish(self, params, step: int) -> None:
        first = self.process is None  # the sampler needs the starting parameters, whatever the step
        if first:
            self._start()
        if not first and step % self.rollout.sync_every:
            return
        start = time.perf_counter()
        host_leaves = jax.device_get(jax.tree.leaves(params))
        slot = step % 2
        with self.locks[slot]:
            version, leaves = self.layout.views(self.shm.buf, slot)
            for dst, src in zip(leaves, host_leaves):
                np.copyto(dst, src, casting="no")
            version[0] = step
            del version, leaves
        self.versions.put(step)
        self.sync_s = time.perf_counter() - start

    def next_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        while True:
            made = self._get()
            self.position += 1
            staleness = step - made.version
            if staleness <= self.rollout.max_staleness:
                break
            self.dropped += 1
        made.host_metrics.update({"rollout/staleness": float(staleness), "rollout/dropped": float(self.dropped),
                                  "rollout/sync_s": self.sync_s})
        return self.host.receive(made, step)

    def _get(self) -> MadeBatch:
        while True:
            try:
                return self.batches.get(timeout=_POLL_S)
            except queue.Empty:
                alive = self.process.is_alive()
                error = self._error()  # read after the liveness check: a dead sampler's traceback is there by now
                if error is not None:
                    self.close()
                    raise SamplerDiedError(f"the sampler process failed:\n{error}") from None
                if not alive:
                    code, pid = self.process.exitcode, self.process.pid
                    how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                           else f"exited with code {code}")
                    self.close()
                    raise SamplerDiedError(
                        f"the sampler process (pid {pid}) {how} without sending a batch. Check its "
                        "output above (out of memory? killed?); the learner stopped, its last checkpoint is intact, "
                        "and rerunning the same command resumes from it.") from None

    def _error(self) -> str | None:
        """The sampler's traceback if it sent one (a killed sampler closes the pipe without a message)."""
        try:
            return self.errors.recv() if self.errors.poll() else None
        except EOFError:
            return None

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            self.versions.put(None)
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(timeout=5)
        for q in (self.versions, self.batches):
            q.cancel_join_thread()
            q.close()
        self.errors.close()
        self.shm.close()
        self.shm.unlink()
        self.process = None

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
