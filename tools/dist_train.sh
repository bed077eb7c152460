#!/usr/bin/env bash
# Multi-process training: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Python: $PYTHON, else the active virtualenv, else the project's .venv, else python3.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, as with mmdet/mmseg/mmpretrain.
# With GPUs the processes use NCCL, one GPU each; without GPUs they use gloo on the CPU.
# MAX_RESTARTS (default 1): when a process dies (out of memory, preempted), torchrun restarts
# all of them up to this many times, and train.py resumes from the newest complete checkpoint
# in the work dir. MAX_RESTARTS=0 ends the run at the first failure.
MAX_RESTARTS="${MAX_RESTARTS:-1}" \
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" --launcher pytorch "${@:3}"
