"""The trainer: three parameter trees on a mesh, the jitted update, checkpoints, metrics.

    trainer = Trainer.from_config(config, workdir)   # restores the newest checkpoint in workdir if any
    trainer.run(batch_source)               # until config.trainer.num_steps

A batch source produces rollout batches (`dora_jax.batch.RolloutBatch`) and can save and
restore its position: `next_batch(step) -> (RolloutBatch, host metrics)`, `get_state() -> dict`,
`set_state(dict)`. Its state is checkpointed with the policy's, so a resumed run sees exactly
the batches an uninterrupted one would.

In a multi-process run (`dora_jax.distributed`) every process runs the same loop on a mesh
spanning all their devices, with the same batches; process 0 writes metrics.jsonl (and the same
values as TensorBoard events in tensorboard/) and samples.jsonl, and all processes write the orbax
checkpoints together.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from dora_jax import distributed, models, sharding
from dora_jax.batch import RolloutBatch
from dora_jax.models import ModelConfig, checkpoint, gguf_io
from dora_jax.models.hf import read_config as hf_read_config
from dora_jax.sharding import MeshConfig
from dora_jax.trainer.state import OptimConfig, TrainState, init_state, make_optimizer
from dora_jax.trainer.step import KL_METRIC, jit_update, make_update
from dora_jax.sections import parse, require
from dora_jax.writers import MetricWriter


class BatchSource(Protocol):
    def next_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...
    # Optional: `publish(params, step)` receives the policy's parameters after every update (and the
    # initial ones), so a sampler can roll out the current policy; `close()` stops it.


class NonFiniteError(FloatingPointError):
    """A metric became NaN/Inf; training stopped without saving the bad state."""


StopRule = Callable[[dict], "str | None"]  # a metrics record -> why training must stop (None: train on)


def kl_cap(cap: float, metric: str = KL_METRIC) -> StopRule:
    """Stops once `metric` (KL(Dora || Nora) per token) exceeds `cap` nats: Dora far from Nora stops being a
    useful explorer (she forgets the task itself)."""

    def rule(record: dict) -> str | None:
        kl = record.get(metric)
        if kl is None or kl <= cap:
            return None
        return (f"KL(Dora || Nora) = {kl:.3f} nats per token at step {record['step']} exceeded "
                f"config.trainer.stop_kl = {cap}; that update was not applied, the policy kept is the one measured "
                "(rerun with a higher cap, or 0, to train on).")

    return rule


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The `trainer` config section: how long the loop runs, what it keeps, when it stops early."""

    num_steps: int = 60  # updates
    checkpoint_every: int = 20  # updates between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    progress: bool = True  # tqdm progress bar with ETA
    stop_kl: float = 0.0  # stop once KL(policy || Nora) per token exceeds this many nats (0 = never)

    def __post_init__(self):
        require(self.num_steps >= 1, "num_steps", self.num_steps, "train for at least one update.")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every,
                "checkpoint every 1 or more updates (the last update is always saved).")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "keep at least one checkpoint.")
        require(self.stop_kl >= 0, "stop_kl", self.stop_kl, "use 0 (never stop) or a cap in nats per token.")


@dataclasses.dataclass
class _Pending:
    """An update whose metrics are still on the device (read after the next update is dispatched)."""

    step: int
    metrics: dict
    tokens: int
    extra: dict


class Trainer:
    """Holds the frozen trees (ref, Nora) and the trained policy's state, all laid out on one mesh.

    It is built from components; `Trainer.from_config(config, workdir)` builds them from a config.
    """

    def __init__(self, model_config: ModelConfig, frozen: dict[str, Any], init_params: Any,
                 tx: optax.GradientTransformation, update: Callable, mesh: jax.sharding.Mesh, rules, workdir: str,
                 options: TrainerConfig, stop_rules: Sequence[StopRule] = (), export_dtype: str = "float32"):
        """`frozen`: {"ref": params, "nora": params} (host or device trees; the same object twice is held once);
        `init_params`: the policy's initial parameters (may be one of the frozen trees); `update`: the pure
        `update(state, frozen, batch) -> (state, metrics)` of `trainer.step.make_update`, jitted here;
        `export_dtype`: the parameter dtype of exported policies."""
        self.model_config, self.mesh, self.options, self.export_dtype = model_config, mesh, options, export_dtype
        self.rules = tuple(tuple(r) for r in rules)
        self.stop_rules = tuple(stop_rules)
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.chief = distributed.is_chief()
        laid = UpdateLayout.of(model_config, tx, mesh, self.rules)
        self.param_shardings, self.state_shardings, self.batch_shardings = laid.params, laid.state, laid.batch
        placed = self._place({**frozen, "init": init_params})  # init may be a frozen tree: placed once
        self.frozen = {name: placed[name] for name in frozen}
        # The policy starts as a copy (jnp.copy inside jit is a new buffer): a frozen tree must not
        # alias the donated train state.
        init = jax.jit(lambda p: init_state(jax.tree.map(jnp.copy, p), tx), out_shardings=self.state_shardings)
        self.state: TrainState = init(placed["init"])
        self.update = laid.jit(update, tuple(self.frozen))
        self.ckpt = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=options.keep_checkpoints, create=True))
        self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")
        self.samples_path = os.path.join(self.workdir, "samples.jsonl")
        self._source_state: dict | None = None
        self.stopped_early: str | None = None  # why training stopped before num_steps (kept in checkpoints)
        self._stop_record: dict | None = None  # the metrics record that tripped a stop rule
        self._restore()

    @classmethod
    def from_config(cls, config, workdir: str, devices=None) -> "Trainer":
        """The trainer `config` describes. `devices`: the run's devices (default: every process's); those of
        the sampler (config.rollout.sampler_devices) are left out of the learner's mesh."""
        options = parse(TrainerConfig, config.trainer, "trainer")
        mesh_cfg = parse(MeshConfig, config.mesh, "mesh")
        mesh = sharding.make_mesh(mesh_cfg, sharding.split_devices(config, devices)[0])
        model_config = model_config_of(config)
        model_config.check_tensor_parallel(mesh.shape["tensor"])
        # Loaded straight into the trainer's layout: no tree is staged whole on one device.
        shardings = sharding.tree_shardings(models.lm.boxed_shapes(model_config), mesh, mesh_cfg.rules)
        model_config, frozen, init_params = initial_trees(config, shardings)
        tx, update = update_of(config, model_config)
        return cls(model_config, frozen, init_params, tx, update, mesh, mesh_cfg.rules, workdir, options,
                   stop_rules=[kl_cap(options.stop_kl)] if options.stop_kl else [],
                   export_dtype=config.model.param_dtype)

    def _place(self, trees: dict[str, Any]) -> dict[str, Any]:
        """`trees` on the mesh; a tree already laid out there (as `from_config` loads them) is kept as it is.
        Others go through the host: a process can put only a host value (its own identical copy) onto a mesh
        that spans other processes' devices. A tree given twice is placed once."""
        placed: dict[int, Any] = {}
        for tree in trees.values():
            if id(tree) in placed:
                continue
            if all(getattr(x, "sharding", None) == s for x, s in zip(jax.tree.leaves(tree),
                                                                      jax.tree.leaves(self.param_shardings))):
                placed[id(tree)] = tree
            else:
                placed[id(tree)] = jax.device_put(jax.device_get(tree), self.param_shardings)
        return {name: placed[id(tree)] for name, tree in trees.items()}

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
        # Shapes are compared first: a restore that fails inside orbax leaves its reads running and buries the
        # cause under pages of shutdown errors.
        differs = _shape_difference(os.path.join(self.workdir, "checkpoints"), latest, abstract)
        if differs:
            raise RuntimeError(f"{self.workdir}/checkpoints/{latest}: cannot be restored: {differs}. It was written "
                               "by a run with a different model or optimizer config; use a new --workdir or the "
                               "original config.")
        try:
            restored = self.ckpt.restore(latest, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises several types; the message is what matters
            raise RuntimeError(
                f"{self.workdir}/checkpoints/{latest}: cannot be restored ({type(e).__name__}: {e}). It was written by "
                "a run with a different model or optimizer config; use a new --workdir or the original config.") from e
        self.state = restored["state"]
        self._source_state = restored["meta"].get("source")
        # A stop is kept only while a rule still fires on the record that caused it (a higher cap, or none, trains on).
        record = restored["meta"].get("stop_record")
        if record is not None and self._stop_reason(record):
            self.stopped_early, self._stop_record = restored["meta"]["stopped_early"], record
        for path in (self.metrics_path, self.samples_path) if self.chief else ():
            _truncate_jsonl(path, latest)
        print(f"Resumed from {self.workdir}/checkpoints at step {latest}.")

    def save(self, source: BatchSource | None) -> None:
        meta = {"step": self.step, "source": source.get_state() if source is not None else None,
                "stopped_early": self.stopped_early, "stop_record": self._stop_record}
        self._check_disk_space()
        self.ckpt.save(self.step, args=ocp.args.Composite(state=ocp.args.StandardSave(self.state),
                                                          meta=ocp.args.JsonSave(meta)), force=True)
        self.ckpt.wait_until_finished()

    def _check_disk_space(self) -> None:
        """Refuses a checkpoint that cannot fit on the workdir's disk before a byte is written: orbax fails
        deep inside its writer threads on a full disk and buries the cause under pages of errors."""
        need = sum(shard.data.nbytes for leaf in jax.tree.leaves(self.state) for shard in leaf.addressable_shards
                   if shard.replica_id == 0)
        free = shutil.disk_usage(self.ckpt.directory).free
        if free < 1.1 * need + 2**20:
            kept = self.ckpt.latest_step()
            raise OSError(errno.ENOSPC, f"{self.ckpt.directory}: {free / 2**20:.1f} MiB free, the checkpoint of step "
                          f"{self.step} needs about {need / 2**20:.1f} MiB. Free space or move --workdir to a larger "
                          "disk and rerun to resume; " + (f"the checkpoint of step {kept} is kept." if kept is not None
                                                          else "no checkpoint was written yet."))

    def export(self, out_dir: str) -> None:
        """Writes the policy's current parameters as a dora_jax model checkpoint (loadable as ref_dir / nora_dir).

        Every process of a multi-process run calls it: the parameters are gathered from all of them.
        """
        saved_config = self.model_config.replace(dtype=self.export_dtype, remat=False, unroll_layers=False)
        checkpoint.save(out_dir, saved_config, self.state.params)  # orbax writes each process's shards

    # ------------------------------------------------------------------ training
    def run(self, source: BatchSource, num_steps: int | None = None,
            evaluate: Callable[[Any, int], dict[str, float]] | None = None, eval_every: int = 0,
            desc: str = "train") -> list[dict]:
        """Trains until `num_steps` (default options.num_steps); returns the metrics written.

        `evaluate(params, step) -> {"eval/...": value}` runs on the initial parameters, every
        `eval_every` updates and after the last one; its values join that step's metrics line.
        """
        num_steps = num_steps or self.options.num_steps
        if self._source_state is not None:
            source.set_state(self._source_state)
            self._source_state = None
        if self.stopped_early:
            print(f"Not training further: {self.stopped_early}")
            return []
        self._written: list[dict] = []
        self._bar = tqdm.tqdm(total=num_steps, initial=self.step, desc=desc, unit="step",
                              disable=not (self.options.progress and self.chief), dynamic_ncols=True)

        def eval_due(step: int) -> dict:
            due = evaluate is not None and (step == num_steps or (eval_every and step % eval_every == 0))
            return evaluate(self.state.params, step) if due else {}

        try:
            self._train(source, num_steps, eval_due, evaluate)
        finally:
            self._bar.close()
            close = getattr(source, "close", None)
            if close is not None:
                close()
        return self._written

    def _train(self, source: BatchSource, num_steps: int, eval_due: Callable, evaluate: Callable | None) -> None:
        start, pending = self.step, None
        publish = getattr(source, "publish", None)
        self._last_time = time.perf_counter()
        # Every process computes the same metrics; process 0 writes them, also as TensorBoard scalars. Events a
        # killed run logged after its checkpoint are hidden, as _restore drops those lines of metrics.jsonl.
        with (open(self.metrics_path if self.chief else os.devnull, "a") as self._log_file,
              MetricWriter(self.workdir, self.chief, purge_step=start + 1 if start else 0) as self._tb):
            if start == 0 and evaluate is not None:
                self._write({"step": 0, **evaluate(self.state.params, 0)})
            if publish is not None:
                publish(self.state.params, start)
            for step in range(start, num_steps):
                batch, host_metrics = source.next_batch(step)  # host metrics: e.g. the rollout's validity
                tokens = int(np.sum(batch.mask_BxT))
                batch = distributed.global_arrays(batch, self.batch_shardings)
                started = time.perf_counter()
                self.state, metrics = self.update(self.state, self.frozen, batch)
                # Timed to completion (the next rollout needs these parameters anyway): scoring under every
                # tree, the objective, the backward pass and AdamW are one compiled program.
                jax.block_until_ready(metrics)
                update_s = time.perf_counter() - started
                host_metrics = {**host_metrics, "perf/update_s": update_s,
                                "perf/update_tokens_per_s": tokens / max(update_s, 1e-9)}
                if publish is not None:
                    publish(self.state.params, step + 1)
                # Step t-1's metrics line is written after step t's update (with the host metrics of both). With stop
                # rules an update's metrics are read at once, so the update whose record trips a rule is the last.
                if pending is not None:
                    self._log(pending)
                pending, stop = _Pending(step + 1, metrics, tokens, {**host_metrics, **eval_due(step + 1)}), False
                if self.stop_rules:
                    self._log(pending)
                    pending, stop = None, self._check_stop(self._written[-1])
                if stop or (step + 1) % self.options.checkpoint_every == 0 or step + 1 == num_steps:
                    if pending is not None:
                        self._log(pending)
                        pending = None
                    self.save(source)
                if stop:
                    tqdm.tqdm.write(self.stopped_early)
                    break

    def _stop_reason(self, record: dict) -> str | None:
        return next((reason for rule in self.stop_rules if (reason := rule(record))), None)

    def _check_stop(self, record: dict) -> bool:
        """Whether a stop rule fires on `record`, the update just applied; the first time one does, it is the last."""
        reason = self._stop_reason(record) if self.stopped_early is None else None
        if reason:
            self.stopped_early, self._stop_record = f"stopped at step {self.step}: {reason}", record
        return bool(reason)

    def _write(self, record: dict) -> None:
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        self._tb.scalars(record["step"], {k: v for k, v in record.items() if k != "step"})
        self._written.append(record)

    def _log(self, pending: _Pending) -> None:
        """Writes an update's metrics line (checked for NaN/Inf) and moves the progress bar."""
        values = {k: float(v) for k, v in jax.device_get(pending.metrics).items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            latest = self.ckpt.latest_step()
            kept = (f"the last good checkpoint (step {latest}) in {self.workdir}/checkpoints is kept"
                    if latest is not None else "no checkpoint had been written yet")
            raise NonFiniteError(
                f"step {pending.step}: metric {bad[0]!r} is {values[bad[0]]} (non-finite: {', '.join(sorted(bad))}). "
                f"Training stopped before saving this state; {kept}. Check the batch at step {pending.step} for "
                "NaN/Inf (rewards, behaviour log-probs) and lower config.optim.lr if the loss diverged.")
        now = time.perf_counter()
        values["perf/step_s"] = now - self._last_time
        values["perf/tokens_per_s"] = pending.tokens / max(now - self._last_time, 1e-9)
        self._last_time = now
        values.update(pending.extra)
        self._write({"step": pending.step, **dict(sorted(values.items()))})
        self._bar.update(pending.step - self._bar.n)
        postfix = {name: f"{values[key]:.{digits}f}" for name, key, digits in
                   (("loss", "loss", 4), ("reward", "reward/mean", 3), ("eval", "eval/accuracy", 3),
                    ("sample_s", "perf/sample_s", 1), ("update_s", "perf/update_s", 1)) if key in values}
        self._bar.set_postfix(postfix)


POLICY_INITS = ("nora", "ref", "ref_nora_mean", "random")


def update_of(config, model_config: ModelConfig) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, pure update function) of `config` for a model of `model_config`."""
    options = parse(TrainerConfig, config.trainer, "trainer")
    optim = parse(OptimConfig, config.optim, "optim")
    tx = make_optimizer(optim, options.num_steps)
    return tx, make_update(model_config, config.objective, tx, temperature=config.rollout.temperature,
                           grad_accum=optim.grad_accum, response_budget=config.rollout.max_new_tokens,
                           stop_kl=options.stop_kl)


class UpdateLayout(NamedTuple):
    """Where the update's inputs live on a mesh, and the jitted update that reads them there."""

    params: Any  # NamedShardings of one parameter tree (the policy, ref, Nora)
    state: Any  # of the policy's TrainState
    batch: RolloutBatch  # of the batch's arrays (rows over the batch axes)
    layout: sharding.Layout  # what the activations are laid out by

    @classmethod
    def of(cls, model_config: ModelConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
           rules) -> "UpdateLayout":
        model_config.check_tensor_parallel(mesh.shape["tensor"])
        layout = sharding.Layout.of(mesh, rules)
        boxed = models.lm.boxed_shapes(model_config)
        state = jax.eval_shape(lambda p: init_state(p, tx), boxed)
        # The optimizer state is split over every device (with data > 1 too: ZeRO-1), so the step's
        # moment updates are too; the parameters are laid out by the rules.
        state = sharding.tree_shardings(state, mesh, layout.rules).replace(
            opt_state=sharding.tree_shardings(state.opt_state, mesh, layout.spread_rules()))
        return cls(params=sharding.tree_shardings(boxed, mesh, layout.rules), state=state,
                   batch=RolloutBatch(*(sharding.batch_sharding(mesh, layout.rules, 2 if k.endswith("BxT") else 1)
                                        for k in RolloutBatch._fields)),
                   layout=layout)

    def jit(self, update: Callable, frozen: Sequence[str]) -> Callable:
        """`update` jitted for these shardings, with the frozen trees `frozen` laid out like the policy."""
        return jit_update(update, self.state, {k: self.params for k in frozen}, self.batch,
                          metrics_sharding=NamedSharding(self.layout.mesh, P()), layout=self.layout)


def model_config_of(config) -> ModelConfig:
    """The model a config trains: the config of `ref_dir` (only its config file is read) with `config.model`'s
    compute options, or `config.model` itself when the trees are random."""
    if not config.ref_dir:
        return ModelConfig(**config.model)
    path = os.path.expanduser(config.ref_dir)
    if gguf_io.is_source(path):  # a GGUF file or packaged model: its metadata, before any conversion
        model_config = gguf_io.file_config(path, config.model.param_dtype)
    else:
        model_config = (checkpoint.read_config(path) if checkpoint.is_checkpoint(path)
                        else hf_read_config(path, config.model.param_dtype))
    return checkpoint.with_compute(model_config, config.model)


def initial_trees(config, shardings=None) -> tuple[ModelConfig, dict[str, Any], Any]:
    """(model config, {"ref": params, "nora": params}, the policy's initial params) of `config`.

    ref_dir / nora_dir are loaded (no nora_dir: Nora is ref, the same object); without a ref_dir the trees
    are random (tests and benchmarks). `config.policy_init` picks the policy's start: "nora", "ref", "random" or
    "ref_nora_mean" (the mean of Ref's and Nora's parameters, halfway along Nora's fine-tuning).
    `shardings` (of one parameter tree) places every tree's shards straight on their devices.
    """
    if config.policy_init not in POLICY_INITS:
        raise ValueError(f"config.policy_init={config.policy_init!r}: use one of {', '.join(POLICY_INITS)}.")
    init_fn = models.init_params if shardings is None else jax.jit(
        models.init_params.__wrapped__, static_argnums=0, out_shardings=shardings)  # random trees, laid out
    if config.ref_dir:
        ref = checkpoint.load_policy(config.ref_dir, config.model, shardings)
        nora = checkpoint.load_policy(config.nora_dir, config.model, shardings) if config.nora_dir else ref
        model_config, frozen = ref.config, {"ref": ref.params, "nora": nora.params}
    else:
        model_config = ModelConfig(**config.model)
        frozen = {"ref": init_fn(model_config, jax.random.key(config.seed + 1)),
                  "nora": init_fn(model_config, jax.random.key(config.seed + 2))}
    init = frozen.get(config.policy_init)
    if config.policy_init == "ref_nora_mean":
        init = jax.tree.map(lambda r, n: (r + n) / 2, frozen["ref"], frozen["nora"])
    if init is None:
        init = init_fn(model_config, jax.random.key(config.seed))
    return model_config, frozen, init


def _shape_difference(ckpt_dir: str, step: int, abstract: Any) -> str | None:
    """How the train state saved at `step` differs in shape from `abstract` (None: it does not)."""
    manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "meta"), item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    try:
        stored = manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore itself will say what is wrong
        return None
    finally:
        manager.close()

    def shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
        leaves = jax.tree_util.tree_leaves_with_path(getattr(tree, "tree", tree), is_leaf=lambda x: hasattr(x, "shape"))
        return {tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): tuple(x.shape)
                for path, x in leaves}

    have, want = shapes(stored), shapes(abstract)
    if set(have) != set(want):
        missing = sorted(set(want) - set(have)) or sorted(set(have) - set(want))
        return f"its train state has other parameters (e.g. {'/'.join(missing[0])})"
    for name, shape in want.items():
        if have[name] != shape:
            return f"{'/'.join(name)} is stored as {list(have[name])}, this config needs {list(shape)}"
    return None


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
    # Written beside the file, then renamed over it: a kill mid-write leaves the old file, never a cut one.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
