#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: bash tools/dist_launch.sh ENTRY NUM_PROCS [args...]
# runs tools/ENTRY in NUM_PROCS processes per node with torchrun. Multi-node: NNODES,
# NODE_RANK, MASTER_ADDR and PORT. NCCL with GPUs (one each), gloo on the CPU without.
set -euo pipefail
TOOLS="$(cd "$(dirname "$0")" && pwd)"
PYTHONPATH="$TOOLS/..:${PYTHONPATH:-}" exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$2" "$TOOLS/$1" "${@:3}"
