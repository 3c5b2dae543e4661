"""Mesh construction and logical-axis -> mesh sharding resolution, for parameters and activations.

Rules map logical names (from the decoder's parameter metadata and its activation
constraints) to mesh axes. An axis whose size a dimension does not divide is dropped for
that dimension (replicated), so one rule set serves tiny test models and 7B models alike.

Parameters are laid out by `tree_shardings`. Activations are laid out while a function is
traced under `use(layout)` (the trainer's update, the sampler, the scorer): `constrain` pins
an activation to its logical axes, and `gather` gives a weight in the layout it is computed
in (cast first, then gathered over the row axes: FSDP's per-layer all-gather in the compute
dtype, whose transpose reduce-scatters the gradient). Outside `use` both are no-ops, so the
same model code runs unsharded.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dora_jax import sections
from dora_jax.sections import require

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]


DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` config section: axis sizes (-1 = all remaining devices) and logical-axis -> mesh-axis rules."""

    data: int = -1  # data-parallel rows
    fsdp: int = 1  # rows, with parameters and optimizer state sharded over the axis
    tensor: int = 1  # heads / MLP / vocabulary split over the axis
    rules: tuple = DEFAULT_RULES  # (logical axis, mesh axis or axes) pairs

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        require(all(s == -1 or s >= 1 for s in sizes) and sizes.count(-1) <= 1, "data", sizes,
                "each of data, fsdp, tensor is a positive size, and at most one is -1 (the remaining devices).")


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of `mesh_cfg` (a MeshConfig or a mapping of its axis sizes) over `devices` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    mesh_cfg = sections.parse(MeshConfig, mesh_cfg, "mesh")
    sizes = [getattr(mesh_cfg, a) for a in MESH_AXES]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by the fixed axes {dict(zip(MESH_AXES, sizes))}.")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, {len(devices)} "
                         "are available. Fix config.mesh (use -1 for one axis to take the rest).")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def split_devices(config, devices: Sequence[jax.Device] | None = None) -> tuple[list[jax.Device], list[jax.Device]]:
    """(learner devices, sampler devices) of a run: each process lends its last devices to the sampler.

    `config.rollout.sampler_devices` (0 = none: the sampler shares the learner's mesh) is a
    total over all processes, so every process keeps the same number of learner devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    total = config.rollout.sampler_devices
    if not total:
        return devices, []
    processes = sorted({d.process_index for d in devices})
    local = {p: [d for d in devices if d.process_index == p] for p in processes}
    per_process = total // len(processes)
    if total % len(processes) or not 0 < per_process < min(len(ds) for ds in local.values()):
        raise ValueError(f"config.rollout.sampler_devices={total}: {len(processes)} process(es) with "
                         f"{min(len(ds) for ds in local.values())} device(s) each must split them evenly and keep at "
                         "least one per process for the learner; use a multiple of the process count below the "
                         "device count, or 0 to sample on the learner's devices.")
    learner = [d for p in processes for d in local[p][:-per_process]]
    sampler = [d for p in processes for d in local[p][-per_process:]]
    return learner, sampler


def _mesh_axes(rules: Rules, name: str | None) -> tuple[str, ...]:
    for logical, mesh_axes in rules:
        if logical == name:
            return _axes_tuple(mesh_axes)
    return ()


def resolve_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """A logical PartitionSpec -> a mesh PartitionSpec valid for `shape` on `mesh`."""
    used: set[str] = set()
    out = []
    for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        axes = []
        size = 1
        for axis in _mesh_axes(rules, name):
            if axis in used or mesh.shape[axis] == 1:
                continue
            if dim % (size * mesh.shape[axis]) == 0:
                axes.append(axis)
                size *= mesh.shape[axis]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def tree_shardings(boxed_abstract: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for an abstract tree whose leaves may carry flax logical-axis boxes."""
    specs = nn.get_partition_spec(boxed_abstract)
    shapes = nn.unbox(boxed_abstract)
    return jax.tree.map(lambda s, x: NamedSharding(mesh, resolve_spec(s, x.shape, mesh, rules)), specs, shapes,
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int, leading: int = 0) -> NamedSharding:
    """Shard the batch axis (after `leading` unsharded axes, e.g. micro-batches) by the `batch` rule."""
    axes = tuple(a for a in _mesh_axes(rules, "batch") if mesh.shape[a] > 1)
    batch = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, P(*([None] * leading), batch, *([None] * (ndim - leading - 1))))


# ---------------------------------------------------------------------------------------------------- activations
class Layout(NamedTuple):
    """A mesh and its rules: what a traced function's activations are laid out by (hashable: a jit static).

    `vocab_rows` (see `vocab_parallel`): rows whole, the vocabulary split over the row axes too.
    """

    mesh: Mesh
    rules: tuple
    vocab_rows: bool = False

    @classmethod
    def of(cls, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> "Layout":
        return cls(mesh, tuple((name, axes if isinstance(axes, str) or axes is None else tuple(axes))
                               for name, axes in rules))

    @property
    def row_axes(self) -> tuple[str, ...]:
        """The mesh axes that split rows (the `batch` rule's axes of size > 1)."""
        return tuple(a for a in _mesh_axes(self.rules, "batch") if self.mesh.shape[a] > 1)

    def activation_rules(self) -> tuple:
        if not self.vocab_rows:
            return self.rules
        return tuple((name, () if name == "batch" else self._vocab_axes() if name == "vocab" else axes)
                     for name, axes in self.rules)

    def weight_rules(self) -> tuple:
        """The rules without the row axes: a weight is whole across them where it is used."""
        rows = set(self.row_axes)
        return tuple((name, self._vocab_axes() if self.vocab_rows and name == "vocab"
                      else tuple(a for a in _axes_tuple(axes) if a not in rows)) for name, axes in self.rules)

    def spread_rules(self) -> tuple:
        """The rules with every rule that splits over a row axis splitting over all of them: parameter-sized
        buffers laid out this way (accumulated gradients) are split over every device, with `data` > 1 too."""
        rows = _mesh_axes(self.rules, "batch")  # of any size: with data > 1 and fsdp = 1, `embed` spreads over data
        return tuple((name, rows + tuple(a for a in _axes_tuple(axes) if a not in rows)
                      if name != "batch" and set(_axes_tuple(axes)) & set(rows) else axes)
                     for name, axes in self.rules)

    def _vocab_axes(self) -> tuple[str, ...]:
        return self.row_axes + tuple(a for a in _mesh_axes(self.rules, "vocab") if a not in self.row_axes)


_ACTIVE: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("dora_jax_layout", default=None)


@contextlib.contextmanager
def use(layout: Layout | None):
    """`constrain` and `gather` resolve on `layout` inside (None: they are no-ops).

    Enter it inside the function being traced (see `traced_under`): a jit caches its trace per
    argument, not per context, so a jitted function must take the layout as a static argument.
    """
    token = _ACTIVE.set(layout)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def traced_under(fn: Callable, layout: Layout | None) -> Callable:
    """`fn` with its body traced under `use(layout)`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with use(layout):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def vocab_parallel():
    """Inside, the output head runs vocabulary-parallel over every device: a chunk's hidden states are
    gathered across the row axes (they are small) and each device forms the logits of its slice of the
    vocabulary for all rows, so the head's weight and its gradient are never whole on one device (with a
    150k vocabulary they would be the largest buffers of the update). Softmax sums cross devices as
    [rows, positions] reductions."""
    layout = _ACTIVE.get()
    token = _ACTIVE.set(layout and layout._replace(vocab_rows=True))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`x` laid out by its logical axis `names` on the active layout (a no-op outside `use`)."""
    layout = _ACTIVE.get()
    if layout is None or layout.mesh.size == 1:
        return x
    spec = resolve_spec(P(*names), x.shape, layout.mesh, layout.activation_rules())
    return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, spec))


def gather(w: jax.Array, names: Sequence[str | None], dtype) -> jax.Array:
    """A weight as it is computed with: cast to `dtype`, then laid out without the row axes (gathered across
    FSDP, still split over `tensor`). Casting first halves the gather's bytes in bf16."""
    layout = _ACTIVE.get()
    if layout is None or layout.mesh.size == 1:
        return w.astype(dtype)
    w = w.astype(dtype)
    spec = resolve_spec(P(*names), w.shape, layout.mesh, layout.weight_rules())
    return jax.lax.with_sharding_constraint(w, NamedSharding(layout.mesh, spec))


def spread(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A parameter-sized buffer (a gradient) split over every device (`Layout.spread_rules`); a no-op outside
    `use`. Accumulated this way, each micro-batch's gradient is reduce-scattered, not all-reduced."""
    layout = _ACTIVE.get()
    if layout is None or layout.mesh.size == 1:
        return x
    spec = resolve_spec(P(*names), x.shape, layout.mesh, layout.spread_rules())
    return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, spec))


def _axes_tuple(mesh_axes) -> tuple[str, ...]:
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
