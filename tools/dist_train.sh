#!/usr/bin/env bash
# Multi-process training: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Python: $PYTHON, else the active virtualenv, else the project's .venv, else python3.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, as with mmdet/mmseg/mmpretrain.
# With GPUs the processes use NCCL, one GPU each; without GPUs they use gloo on the CPU.
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" --launcher pytorch "${@:3}"
