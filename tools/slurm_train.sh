#!/usr/bin/env bash
# Training on Slurm: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS as with the OpenMMLab toolboxes.
# Python: $PYTHON, else the active virtualenv, else the project's .venv, else python3.
# Inside a job submitted with `sbatch --requeue`, a requeued job (SLURM_RESTART_COUNT > 0)
# resumes from the newest complete checkpoint in WORK_DIR by itself (tools/train.py).
exec bash "$(dirname "$0")/slurm_launch.sh" train.py "$1" "$2" "$3" --work-dir="$4" \
    --launcher=slurm "${@:5}"
