"""The trainer: three parameter trees on a mesh, the jitted update, checkpoints, metrics.

    trainer = Trainer(config, workdir)      # restores the newest checkpoint in workdir if any
    trainer.run(batch_source)               # until config.trainer.num_steps

A batch source produces rollout batches (see `dora_jax.trainer.step` for the fields) and
can save and restore its position: `next_batch(step) -> dict`, `get_state() -> dict`,
`set_state(dict)`. Its state is checkpointed with Dora's, so a resumed run sees exactly
the batches an uninterrupted one would.

In a multi-process run (`dora_jax.distributed`) every process runs the same loop on a mesh
spanning all their devices, with the same batches; process 0 writes metrics.jsonl (and the same
values as TensorBoard events in tensorboard/) and samples.jsonl, and all processes write the orbax
checkpoints together.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from dora_jax import distributed, models, sharding
from dora_jax.models import ModelConfig, checkpoint
from dora_jax.trainer.state import TrainState, init_state, make_optimizer
from dora_jax.trainer.step import BATCH_KEYS, jit_update, make_update
from dora_jax.writers import MetricWriter


class BatchSource(Protocol):
    def next_batch(self, step: int) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...
    # Optional: `publish(params, step)` receives Dora's parameters after every update (and the
    # initial ones), so a sampler can roll out the current policy; `close()` stops it.


class NonFiniteError(FloatingPointError):
    """A metric became NaN/Inf; training stopped without saving the bad state."""


class Trainer:
    """Holds ref and Nora (frozen) and Dora's train state, all laid out on one mesh."""

    def __init__(self, config, workdir: str, devices=None):
        """`devices`: the run's devices (default: every process's); those of the sampler
        (config.rollout.sampler_devices) are left out of the learner's mesh."""
        self.config = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.chief = distributed.is_chief()
        self.mesh = sharding.make_mesh(config.mesh, sharding.split_devices(config, devices)[0])
        self.rules = tuple(tuple(r) for r in config.mesh.rules)

        if config.ref_dir:
            ref = checkpoint.load_policy(config.ref_dir, config.model)
            nora = checkpoint.load_policy(config.nora_dir, config.model) if config.nora_dir else ref
            self.model_config = ref.config
            ref_params, nora_params = ref.params, nora.params
        else:  # random trees: tests and benchmarks
            self.model_config = ModelConfig(**config.model)
            ref_params = models.init_params(self.model_config, jax.random.key(config.seed + 1))
            nora_params = models.init_params(self.model_config, jax.random.key(config.seed + 2))

        boxed = models.lm.boxed_shapes(self.model_config)
        self.param_shardings = sharding.tree_shardings(boxed, self.mesh, self.rules)
        # Through the host: a process can put only a host value (its own identical copy) onto a
        # mesh that spans other processes' devices.
        def on_mesh(params):
            return jax.device_put(jax.device_get(params), self.param_shardings)

        ref_on_mesh = on_mesh(ref_params)
        # Without a nora_dir Nora is ref: the same buffers, not a second copy (neither is ever donated).
        self.frozen = {"ref": ref_on_mesh, "nora": ref_on_mesh if nora_params is ref_params else on_mesh(nora_params)}
        self.tx = make_optimizer(config.optim, config.trainer.num_steps)
        abstract_state = jax.eval_shape(lambda p: init_state(p, self.tx), boxed)
        self.state_shardings = sharding.tree_shardings(abstract_state, self.mesh, self.rules)
        if config.dora_init not in ("nora", "ref", "random"):
            raise ValueError(f"config.dora_init={config.dora_init!r}: use 'nora', 'ref' or 'random'.")
        init_params = self.frozen.get(config.dora_init) or on_mesh(
            models.init_params(self.model_config, jax.random.key(config.seed)))
        # Dora starts as a copy (jnp.copy inside jit is a new buffer): the frozen tree must not
        # alias the donated train state.
        init = jax.jit(lambda p: init_state(jax.tree.map(jnp.copy, p), self.tx),
                       out_shardings=self.state_shardings)
        self.state: TrainState = init(init_params)

        self.batch_shardings = {k: sharding.batch_sharding(self.mesh, self.rules, 2 if k.endswith("BxT") else 1)
                                for k in BATCH_KEYS}
        update = make_update(self.model_config, config.objective, self.tx, temperature=config.rollout.temperature,
                             grad_accum=config.optim.grad_accum, response_budget=config.rollout.max_new_tokens)
        self.update = jit_update(update, self.state_shardings, {"ref": self.param_shardings, "nora": self.param_shardings},
                                 self.batch_shardings, metrics_sharding=NamedSharding(self.mesh, P()))
        self.ckpt = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=config.trainer.keep_checkpoints, create=True))
        self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")
        self.samples_path = os.path.join(self.workdir, "samples.jsonl")
        self._source_state: dict | None = None
        self.stopped_early: str | None = None  # why training stopped before num_steps (kept in checkpoints)
        self.stopped_kl: float | None = None  # the KL that tripped trainer.stop_kl
        self._restore()

    # ------------------------------------------------------------------ checkpoints
    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def _restore(self) -> None:
        latest = self.ckpt.latest_step()
        distributed.assert_same(-1 if latest is None else latest,
                                f"the newest checkpoint in {self.workdir}/checkpoints",
                                "Every process must see the same workdir: put it on a filesystem they all share.")
        if latest is None:  # lines of a run that died before its first checkpoint are recomputed
            for path in (self.metrics_path, self.samples_path) if self.chief else ():
                _truncate_jsonl(path, -1)
            return
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state,
                                self.state_shardings)
        try:
            restored = self.ckpt.restore(latest, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises several types; the message is what matters
            raise RuntimeError(
                f"{self.workdir}/checkpoints/{latest}: cannot be restored ({type(e).__name__}: {e}). It was written by "
                "a run with a different model or optimizer config; use a new --workdir or the original config.") from e
        self.state = restored["state"]
        self._source_state = restored["meta"].get("source")
        stopped = restored["meta"].get("stopped_early")
        # A stop is kept only while the cap that caused it still applies (stop_kl = 0 or a higher cap trains on).
        cap = self.config.trainer.get("stop_kl", 0.0)
        if stopped and cap and cap <= restored["meta"].get("stopped_kl", cap):
            self.stopped_early, self.stopped_kl = stopped, restored["meta"]["stopped_kl"]
        for path in (self.metrics_path, self.samples_path) if self.chief else ():
            _truncate_jsonl(path, latest)
        print(f"Resumed from {self.workdir}/checkpoints at step {latest}.")

    def save(self, source: BatchSource | None) -> None:
        meta = {"step": self.step, "source": source.get_state() if source is not None else None,
                "stopped_early": self.stopped_early, "stopped_kl": self.stopped_kl}
        self.ckpt.save(self.step, args=ocp.args.Composite(state=ocp.args.StandardSave(self.state),
                                                          meta=ocp.args.JsonSave(meta)), force=True)
        self.ckpt.wait_until_finished()

    def export(self, out_dir: str) -> None:
        """Writes Dora's current parameters as a dora_jax model checkpoint (loadable as ref_dir / nora_dir).

        Every process of a multi-process run calls it: the parameters are gathered from all of them.
        """
        saved_config = self.model_config.replace(dtype=self.config.model.param_dtype, remat=False, unroll_layers=False)
        checkpoint.save(out_dir, saved_config, distributed.to_host(self.state.params))

    # ------------------------------------------------------------------ training
    def run(self, source: BatchSource, num_steps: int | None = None,
            evaluate: Callable[[Any, int], dict[str, float]] | None = None, eval_every: int = 0,
            desc: str = "train") -> list[dict]:
        """Trains until `num_steps` (default config.trainer.num_steps); returns the metrics written.

        `evaluate(params, step) -> {"eval/...": value}` runs on the initial parameters, every
        `eval_every` updates and after the last one; its values join that step's metrics line.
        """
        num_steps = num_steps or self.config.trainer.num_steps
        if self._source_state is not None:
            source.set_state(self._source_state)
            self._source_state = None
        publish = getattr(source, "publish", None)
        start = self.step
        if self.stopped_early:
            print(f"Not training further: {self.stopped_early}")
            return []
        written: list[dict] = []
        bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, unit="step",
                        disable=not (self.config.trainer.progress and self.chief), dynamic_ncols=True)

        def eval_due(step: int) -> dict:
            due = evaluate is not None and (step == num_steps or (eval_every and step % eval_every == 0))
            return evaluate(self.state.params, step) if due else {}

        try:
            self._train(source, start, num_steps, publish, eval_due, evaluate, bar, written)
        finally:
            bar.close()
            close = getattr(source, "close", None)
            if close is not None:
                close()
        return written

    def _train(self, source, start, num_steps, publish, eval_due, evaluate, bar, written) -> None:
        pending = None
        last_time = time.perf_counter()
        # Every process computes the same metrics; process 0 writes them, also as TensorBoard scalars. Events a
        # killed run logged after its checkpoint are hidden, as _restore drops those lines of metrics.jsonl.
        with (open(self.metrics_path if self.chief else os.devnull, "a") as log,
              MetricWriter(self.workdir, self.chief, purge_step=start + 1 if start else 0) as self._tb):
            if start == 0 and evaluate is not None:
                self._write(log, written, {"step": 0, **evaluate(self.state.params, 0)})
            if publish is not None:
                publish(self.state.params, start)
            for step in range(start, num_steps):
                batch = source.next_batch(step)
                host_metrics = batch.pop("host_metrics", {})  # e.g. the rollout's validity, computed on the host
                tokens = int(np.sum(batch["mask_BxT"]))
                batch = distributed.global_arrays(batch, self.batch_shardings)
                self.state, metrics = self.update(self.state, self.frozen, batch)
                if publish is not None:
                    publish(self.state.params, step + 1)
                # Read step t-1's metrics only after step t is dispatched: host and device overlap.
                if pending is not None:
                    last_time = self._log(log, bar, written, *pending, last_time)
                pending = (step + 1, metrics, tokens, {**host_metrics, **eval_due(step + 1)})
                stop = self._check_stop(written[-1] if written else {})
                if stop or (step + 1) % self.config.trainer.checkpoint_every == 0 or step + 1 == num_steps:
                    last_time = self._log(log, bar, written, *pending, last_time)
                    pending = None
                    self.save(source)
                if stop:
                    tqdm.tqdm.write(self.stopped_early)
                    break

    def _check_stop(self, record: dict) -> bool:
        """The KL cap: Dora far from Nora stops being a useful explorer (it forgets the task itself)."""
        cap = self.config.trainer.get("stop_kl", 0.0)
        kl = record.get("kl/dora_nora_token")
        if cap and kl is not None and kl > cap and self.stopped_early is None:
            self.stopped_kl = kl
            self.stopped_early = (f"stopped at step {self.step}: KL(Dora || Nora) = {kl:.3f} nats per token at step "
                                  f"{record['step']} exceeded config.trainer.stop_kl = {cap} (rerun with a higher cap, or 0, to train on).")
            return True
        return False

    def _write(self, log, written: list[dict], record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        self._tb.scalars(record["step"], {k: v for k, v in record.items() if k != "step"})
        written.append(record)

    def _log(self, log, bar, written, step, metrics, tokens, extra, last_time) -> float:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            latest = self.ckpt.latest_step()
            kept = (f"the last good checkpoint (step {latest}) in {self.workdir}/checkpoints is kept"
                    if latest is not None else "no checkpoint had been written yet")
            raise NonFiniteError(
                f"step {step}: metric {bad[0]!r} is {values[bad[0]]} (non-finite: {', '.join(sorted(bad))}). Training "
                f"stopped before saving this state; {kept}. Check the batch at step {step} for NaN/Inf (rewards, "
                f"behaviour log-probs) and lower config.optim.lr={self.config.optim.lr} if the loss diverged.")
        now = time.perf_counter()
        values["perf/step_s"] = now - last_time
        values["perf/tokens_per_s"] = tokens / max(now - last_time, 1e-9)
        values.update(extra)
        self._write(log, written, {"step": step, **dict(sorted(values.items()))})
        bar.update(step - bar.n)
        postfix = {"loss": f"{values['loss']:.4f}", "reward": f"{values['reward/mean']:.3f}"}
        if "eval/accuracy" in values:
            postfix["eval"] = f"{values['eval/accuracy']:.3f}"
        bar.set_postfix(postfix)
        return now


def _truncate_jsonl(path: str, step: int) -> None:
    """Drops lines written after the restored checkpoint's step (they will be recomputed)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut short by a killed process: dropped, it is recomputed
    with open(path, "w") as f:
        f.writelines(keep)
