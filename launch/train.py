r"""Trains one config end to end: `python launch/train.py --config=configs/indicator.py [--workdir=DIR]`.

Variants: `--config=configs/indicator.py:smoke`; overrides: `--config.optim.lr=1e-5`.
The default workdir is runs/<config name>[_<variant>].

Multi-process: every process runs the same command on one global mesh (`jax.distributed`),
with the workdir on a filesystem they all share; rerunning it resumes from the last checkpoint.

    # one host, all its GPUs: one process, nothing to add
    python launch/train.py --config=configs/indicator.py
    # any set of hosts: on each, with --process_id=0..N-1 (HOST0 runs process 0)
    python launch/train.py --config=configs/indicator.py --workdir=/shared/runs/indicator \
        --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
    # SLURM, one process per GPU (jax reads SLURM_*): see launch/slurm_train.sh
    sbatch --nodes=2 launch/slurm_train.sh configs/indicator.py /shared/runs/indicator
    # a Cloud TPU VM pod slice (jax asks the TPU metadata server), workdir on NFS or gcsfuse
    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
        --command="cd dora_jax && python launch/train.py --config=configs/indicator.py --workdir=/mnt/shared/indicator"
"""

import os

from absl import flags
from ml_collections import config_flags

from dora_jax import distributed, experiments, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/indicator.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it holds checkpoints).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes run this command.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0..num_processes-1.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "Multi-process: a process silent this long is dead, "
                                  "and the others stop.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", name + (f"_{variant.replace(',', '_')}" if variant else ""))


def main(argv):
    del argv
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           heartbeat_timeout_s=_HEARTBEAT.value)
    experiments.train(_CONFIG.value, _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename))


if __name__ == "__main__":
    pipeline.launch(main)
