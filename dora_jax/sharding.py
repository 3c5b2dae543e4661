"""Mesh construction and logical-axis -> mesh sharding resolution.

Rules map logical names (from the decoder's parameter metadata) to mesh axes. An axis whose
size a dimension does not divide is dropped for that dimension (replicated), so one rule
set serves tiny test models and 7B models alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

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
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
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
