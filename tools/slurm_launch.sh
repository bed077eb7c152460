#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh: bash tools/slurm_launch.sh ENTRY PARTITION
# JOB_NAME [args...] runs tools/ENTRY with srun. GPUS (8), GPUS_PER_NODE (8),
# CPUS_PER_TASK (5) and SRUN_ARGS as with the OpenMMLab toolboxes.
# The interpreter: $PYTHON if set, else the active virtualenv's, else the project's .venv,
# else python3 (the path must be valid on the compute nodes: a shared file system).
set -euo pipefail
TOOLS="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$TOOLS")"
# shellcheck source=tools/find_python.sh
source "$TOOLS/find_python.sh"
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# shellcheck disable=SC2086
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec srun -p "$2" --job-name="$3" \
    --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    "$PY" -u "$TOOLS/$1" "${@:4}"
