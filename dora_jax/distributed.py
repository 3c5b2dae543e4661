"""Multi-process runs: `jax.distributed` start-up, process 0's duties, arrays every process agrees on.

    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # before any other JAX call

N processes run the same program (multi-controller JAX): the mesh spans every process's
devices, each process feeds the rows its devices own, and collectives run inside XLA (NCCL on
GPU, ICI on TPU, gloo on CPU). Batches, rollouts and metrics are identical on every process;
files that are one per run (metrics, samples) are written by process 0 only, orbax
checkpoints by all processes together (the workdir must be on a filesystem they share).

A process that dies stops the others: the coordination service misses its heartbeats for
`heartbeat_timeout_s` and aborts every process with "Terminating process because the JAX
distributed service detected fatal errors"; rerunning all of them resumes from the last checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax._src import cloud_tpu_init  # private, but exactly what jax's own TPU cluster detection reads
from jax.experimental import multihost_utils


def cluster_launched() -> bool:
    """Whether a launcher started several copies of this program: SLURM, Open MPI or a Cloud TPU VM."""
    # The variables jax's own cluster detection reads (jax._src.clusters), for jobs of more than one task.
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ
    mpi = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 and "OMPI_MCA_orte_hnp_uri" in os.environ
    # On a TPU VM (one host or a pod slice) jax asks the metadata server how many hosts there are.
    tpu_vm = cloud_tpu_init.running_in_cloud_tpu_vm
    return slurm or mpi or tpu_vm or "JAX_COORDINATOR_ADDRESS" in os.environ


def initialize(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None, heartbeat_timeout_s: int = 100) -> bool:
    """Starts `jax.distributed` when any argument is given or `cluster_launched()`; returns whether it did.

    Arguments left None are detected by jax (SLURM, Open MPI, TPU pod slices). Call it
    before any other JAX call: the backends read the process topology when they start.
    """
    if all(x is None for x in (coordinator_address, num_processes, process_id)) and not cluster_launched():
        return False
    # CPU processes (tests, CPU clusters) need a cross-process collective library; GPU/TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True


def is_chief() -> bool:
    """Process 0 writes the files a run has one of (metrics.jsonl, samples.jsonl, reports)."""
    return jax.process_index() == 0


def global_arrays(tree: Any, shardings: Any) -> Any:
    """Host arrays, identical on every process, as global arrays laid out by `shardings`.

    Each process copies in only the rows its own devices hold; in one process this is a
    sharded `device_put`.
    """
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x), np.shape(x)), tree,
                        shardings)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly cross-process sharded) arrays, on every process; a collective when multi-process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def assert_same(value: int, what: str, fix: str) -> None:
    """Raises on every process unless all processes hold the same integer `value` (a no-op in one process)."""
    if jax.process_count() == 1:
        return
    values = multihost_utils.process_allgather(np.asarray(value, np.int64)).tolist()
    if len(set(values)) > 1:
        raise RuntimeError(f"the {len(values)} processes disagree on {what}: process i sees {values}[i]. {fix}")
