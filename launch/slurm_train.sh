#!/bin/bash
# Multi-host GPU training under SLURM: one process per GPU, all on one global mesh.
#
#   sbatch --nodes=2 launch/slurm_train.sh configs/indicator.py /shared/runs/indicator [--config.x=y ...]
#
# jax.distributed reads the SLURM_* variables (coordinator = the first node, process id = the task
# rank) and shows each task the GPU of its SLURM_LOCALID, so tasks must not be bound to GPUs by
# SLURM (no --gpus-per-task). The workdir must be on a filesystem every node mounts; rerunning the
# same command resumes from its last checkpoint.
#SBATCH --job-name=dora_jax
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
set -euo pipefail
config=${1:?usage: sbatch launch/slurm_train.sh CONFIG SHARED_WORKDIR [--config.x=y ...]}
workdir=${2:?usage: sbatch launch/slurm_train.sh CONFIG SHARED_WORKDIR [--config.x=y ...]}
shift 2
srun python launch/train.py --config="$config" --workdir="$workdir" "$@"
