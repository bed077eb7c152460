#!/usr/bin/env bash
# Evaluation on Slurm: bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS as with the OpenMMLab toolboxes.
# Python: $PYTHON, else the active virtualenv, else the project's .venv, else python3.
exec bash "$(dirname "$0")/slurm_launch.sh" test.py "$1" "$2" "$3" "$4" --launcher=slurm "${@:5}"
