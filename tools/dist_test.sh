#!/usr/bin/env bash
# Multi-process evaluation: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]
# Python: $PYTHON, else the active virtualenv, else the project's .venv, else python3.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT. NCCL with GPUs, gloo without.
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" --launcher pytorch "${@:4}"
