#!/usr/bin/env bash
# Idempotent set-up of the project-local environment .venv (used by `make test` / `make demo`).
#
#   bash tools/setup_env.sh            # create or update .venv, then check it
#
# Environment variables:
#   PYTHON             interpreter that creates the venv (default: python3)
#   QM_TORCH_SPEC      torch/torchvision to install when the venv has none
#                      (default: "torch==2.14.1 torchvision==0.29.1")
#   QM_WHEEL_CACHE     where mmcv wheels built for a given torch are kept
#                      (default: ~/.cache/quadmamba_mm/wheels)
#
# A torch the user already has is respected: if $PYTHON imports torch and torchvision,
# the venv is created with --system-site-packages and that torch is used as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${QM_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
WHEEL_CACHE="${QM_WHEEL_CACHE:-$HOME/.cache/quadmamba_mm/wheels}"
MMCV_VERSION=2.1.0
STAMP="$VENV/.qm-setup-stamp"

log() { printf '[setup] %s\n' "$*"; }
pip_install() { "$PY" -m pip install --quiet --progress-bar off "$@"; }

# Everything that decides what gets installed: when none of it changed and the check
# passes, a second run installs nothing.
fingerprint() {
    cat "$ROOT/setup.cfg" "$ROOT/tools/setup_env.sh" | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" ]]; then
    if "$PY" -m quadmamba_mm.runtime.env_check --quiet; then
        exit 0
    fi
    log "environment check failed: repairing .venv"
fi

if [[ ! -x "$PY" ]]; then
    venv_args=()
    if "$PYTHON" -c 'import torch, torchvision' >/dev/null 2>&1; then
        log "using the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        venv_args+=(--system-site-packages)
    fi
    log "creating $VENV"
    "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
fi

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
    log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    pip_install $TORCH_SPEC
fi
# mmcv's setup.py and mmengine's `pkg::` config bases import pkg_resources (gone in setuptools 82).
pip_install "setuptools>=77,<82" wheel ninja

# ---- mmcv with its compiled ops, built for exactly this torch -----------------------------
mmcv_ok() {
    "$PY" - "$MMCV_VERSION" <<'EOF' >/dev/null 2>&1
import sys, mmcv, mmcv._ext  # noqa: F401  (_ext holds the compiled ops)
sys.exit(mmcv.__version__ != sys.argv[1])
EOF
}

if ! mmcv_ok; then
    # pip's own wheel cache keys a built wheel by the sdist alone, so it can hand back a
    # wheel compiled against another torch. Ours is keyed by torch, CUDA and Python.
    key=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cu{torch.version.cuda}-py{sys.version_info[0]}{sys.version_info[1]}")')
    cache="$WHEEL_CACHE/$key"
    wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z "$wheel" ]]; then
        log "building mmcv $MMCV_VERSION with ops for $key (about 15 min on 2 cores, once per machine)"
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
            -d "$work" "mmcv==$MMCV_VERSION"
        tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
        src="$work/mmcv-$MMCV_VERSION"
        # mmcv 2.1.0 hard-codes -std=c++14/17; newer torch headers refuse anything below C++20.
        if grep -rqs "C++20 or later compatible compiler is required" \
                "$("$PY" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])')"; then
            log "torch needs C++20: patching mmcv's -std flags"
            sed -i -E 's/(std[=:])c\+\+1[47]/\1c++20/g' "$src/setup.py"
        fi
        mkdir -p "$cache"
        (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$cache" .)
        wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
    else
        log "reusing $wheel"
    fi
    pip_install --no-deps --force-reinstall "$wheel"
fi

# ---- the toolboxes, triton, pytest and the project itself --------------------------------
log "installing the OpenMMLab toolboxes and the project (editable)"
pip_install -e "$ROOT[mm,triton,dev]"

# mmengine declares opencv-python; the design wants opencv-python-headless as the only cv2.
# Both write the same cv2/ files, so removing one breaks the other: reinstall headless.
if "$PY" -m pip show opencv-python >/dev/null 2>&1; then
    log "replacing opencv-python with opencv-python-headless"
    "$PY" -m pip uninstall --quiet -y opencv-python
    pip_install --force-reinstall --no-deps opencv-python-headless
fi

"$PY" -m quadmamba_mm.runtime.env_check
fingerprint >"$STAMP"
log "environment ready: $VENV"
