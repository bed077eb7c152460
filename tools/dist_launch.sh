#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: bash tools/dist_launch.sh ENTRY NUM_PROCS [args...]
# runs tools/ENTRY in NUM_PROCS processes per node with torchrun. Multi-node: NNODES,
# NODE_RANK, MASTER_ADDR and PORT. NCCL with GPUs (one each), gloo on the CPU without.
# The interpreter: $PYTHON if set, else the active virtualenv's, else the project's .venv,
# else python3.
set -euo pipefail
TOOLS="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$TOOLS")"
# shellcheck source=tools/find_python.sh
source "$TOOLS/find_python.sh"
# Without torch, torchrun would only say "No module named torch": say which Python was
# chosen and how to pick another.
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' \
        2>/dev/null; then
    echo "$(basename "$0"): expected a Python with torch, but $PY has none (or does not run)." \
        "Set up the environment (bash tools/setup_env.sh) and activate it" \
        "(source .venv/bin/activate), or set PYTHON=/path/to/python." >&2
    exit 1
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PY" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$2" "$TOOLS/$1" "${@:3}"
