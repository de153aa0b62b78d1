#!/bin/bash
# A sweep as a Slurm job array: task I of N runs the runs at positions I, I+N, ... of the plan.
# Every task writes into the same sweep directory on a shared filesystem; rerunning the array
# skips finished runs and resumes interrupted ones. When all are done:
#   clsnorm report runs/isobn-paper
#
#   sbatch --array=0-9 scripts/slurm-array.sh sweeps/paper.toml
#SBATCH --job-name=clsnorm-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
CONFIG=${1:?usage: sbatch --array=0-(N-1) scripts/slurm-array.sh SWEEP.toml}
: "${GLUE_DIR:?set GLUE_DIR to the GLUE data directory}"
N=${SLURM_ARRAY_TASK_COUNT:?run this script with sbatch --array}
# Slurm numbers array tasks from --array's first index; shards are 0-based.
I=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
exec clsnorm sweep --config "$CONFIG" --shard "$I/$N"
