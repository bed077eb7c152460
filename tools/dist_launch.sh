#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: bash tools/dist_launch.sh ENTRY NUM_PROCS [args...]
# runs tools/ENTRY in NUM_PROCS processes per node with torchrun. NCCL with GPUs (one each),
# gloo on the CPU without.
#
# Environment:
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500): as with the OpenMMLab
#     toolboxes. All nodes meet at MASTER_ADDR:PORT, where the node with NODE_RANK 0 hosts the
#     rendezvous; torchrun then numbers the nodes itself.
#   MAX_RESTARTS (0 here; dist_train.sh sets 1): how often torchrun restarts all processes after
#     one of them dies. tools/train.py then resumes from the newest complete checkpoint.
#   RDZV_ID (quadmamba): the job's name in the rendezvous, the same on every node.
# The interpreter: $PYTHON if set, else the active virtualenv's, else the project's .venv,
# else python3.
#
# Why c10d and not torchrun's static --master_addr rendezvous: a restart under the static
# rendezvous reuses the first attempt's key-value store, so the new processes can read the
# dead ones' addresses and fail to connect or hang. The c10d rendezvous forms a new round on
# every restart (when one node restarts, the others restart with it), and with
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 each round's processes get a store of their own. Two
# gloo processes, rank 1 SIGKILLed once, torch 2.14.1, 2-core CPU, 2026-12-01: the restart
# worked in 6 of 11 runs with the static rendezvous, 7 of 11 with c10d and its shared store,
# 12 of 12 with c10d and a store per round.
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
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
RDZV=(--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${PORT:-29500}"
      --rdzv-id="${RDZV_ID:-quadmamba}")
if [[ "${NODE_RANK:-0}" == 0 ]]; then
    # This node is MASTER_ADDR: it hosts the rendezvous, and MASTER_ADDR is its address for
    # the processes' own store should it get rank 0 (torchrun would use its FQDN otherwise).
    RDZV+=(--rdzv-conf=is_host=1 --local-addr="${PET_LOCAL_ADDR:-$MASTER_ADDR}")
else
    RDZV+=(--rdzv-conf=is_host=0)
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}" \
exec "$PY" -m torch.distributed.run --nnodes="${NNODES:-1}" "${RDZV[@]}" \
    --max-restarts="${MAX_RESTARTS:-0}" --nproc_per_node="$2" "$TOOLS/$1" "${@:3}"
