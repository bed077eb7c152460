#!/usr/bin/env bash
# The GPU check in one command: the test suite's kernel and backbone tests compiled on the GPU,
# the selective-scan benchmark and backbone throughput and peak memory, collected into
# DIR/summary.md and DIR/summary.json. docs/gpu_check.md explains it.
#
#   bash tools/gpu_check.sh --fetch-wheels            # beforehand, on a machine with network
#   bash tools/gpu_check.sh --out DIR                 # on the GPU machine (no network needed)
#   bash tools/gpu_check.sh --cpu-dry-run --out DIR   # the same steps on the CPU, tiny shapes
#   bash tools/gpu_check.sh --list-tests              # the test files the check runs
#
# PYTHON is the interpreter (default python3). The check writes nothing into the repository:
# bytecode and pytest's cache are off, and the wheels are installed under DIR/site (only if
# mmengine does not import already).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="$ROOT/.whl"
MMENGINE="mmengine==0.10.7"
# What importing quadmamba_mm, the tests below and the benchmark tools take from mmengine's
# dependencies (pip adds theirs: markdown-it-py, mdurl, pygments, platformdirs, tomli, ...).
# matplotlib and opencv, which mmengine also declares, are not imported on these paths.
MMENGINE_DEPS=(addict pyyaml rich termcolor yapf)
# pip download evaluates markers for the running Python: yapf's tomli (Python < 3.11) is named.
FETCH_EXTRA=(tomli)
WHEEL_PYTHONS=(3.10 3.11 3.12)
# The tests that exercise the GPU (the Triton kernels compiled, the backbone on a device);
# they import torch, triton and mmengine only (no mmcv, mmdet, mmseg, mmpretrain).
TESTS=(tests/test_fused_scan.py tests/test_selective_scan.py tests/test_scan_in_place.py)
# Tests of the C kernel for CPUs are not GPU tests: left out (a missing C compiler on the GPU
# machine would skip them, and a skip fails the check).
GPU_TESTS_K="not cpu and not c_kernel and not without_a_compiler and not openmp"
# The dry run takes a few fast tests of each (the Triton interpreter is slow).
DRY_TESTS_K="without_D or cross_scan_orders_in_place or (matches_reference_fp32 and chunked) or training_after_an_inference_mode_forward"

# GPU run: models, sizes and batch sizes that fit an 80 GB GPU, and a time limit per step
# (seconds) adding up to 8 minutes.
MODELS=(quadmamba:s quadmamba:t timm:swin_tiny_patch4_window7_224 timm:convnext_tiny)
SIZES=(224 512 1024)
BATCHES=(128 32 8)
# The tests compile every kernel specialisation they launch: with a cold Triton cache that
# took 74 s on a 2-core CPU for 54 specialisations, hence the tests' limit.
LIMIT_SETUP=60 LIMIT_TESTS=240 LIMIT_SCAN=90 LIMIT_BACKBONE=150 LIMIT_COMPILE=300

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

fetch_wheels() {
    mkdir -p "$WHEELS"
    local v
    for v in "${WHEEL_PYTHONS[@]}"; do
        echo "==> wheels for CPython $v"
        local opts=(download --quiet --dest "$WHEELS" --only-binary=:all: --python-version "$v"
                    --implementation cp --platform manylinux2014_x86_64
                    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
        "$PY" -m pip "${opts[@]}" --no-deps "$MMENGINE" || die "pip download $MMENGINE failed"
        "$PY" -m pip "${opts[@]}" "${MMENGINE_DEPS[@]}" "${FETCH_EXTRA[@]}" \
            || die "pip download of ${MMENGINE_DEPS[*]} ${FETCH_EXTRA[*]} failed"
    done
    ls -1 "$WHEELS"
    echo "wheels: $(ls "$WHEELS"/*.whl | wc -l) files, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
    echo "tracked tree: $(cd "$ROOT" && git ls-files -z | xargs -0 du -ch 2>/dev/null | tail -1 | cut -f1)"
}

DRY=0 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --fetch-wheels) fetch_wheels; exit 0 ;;
        --list-tests) printf '%s\n' "${TESTS[@]}"; exit 0 ;;
        --cpu-dry-run) DRY=1; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
[[ -n "$OUT" ]] || { usage >&2; die "expected --out DIR (or --fetch-wheels / --list-tests)"; }
mkdir -p "$OUT/logs" "$OUT/site" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
case "$OUT/" in "$ROOT"/*) die "--out must lie outside the repository ($ROOT): the check writes nothing into it" ;; esac
: > "$OUT/steps.tsv"
rm -f "$OUT/pytest.xml" "$OUT/scan.json" "$OUT/summary.json" "$OUT/summary.md" \
    "$OUT/launches.jsonl" "$OUT/compile.json"
rm -rf "$OUT/backbone"

# Read-only on the tree; the repository's packages first on the path (kernels/ under the name
# it installs as).
export PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT:$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
ln -sfn "$ROOT/kernels" "$OUT/site/quadmamba_kernels"
if [[ $DRY == 1 ]]; then
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1   # the Triton kernels in the interpreter
    DEVICE=cpu MODELS=(quadmamba:li timm:swin_tiny_patch4_window7_224) SIZES=(64 96) BATCHES=(1)
    LIMIT_TESTS=60 LIMIT_SCAN=30 LIMIT_BACKBONE=60
    PYTEST_K=(-k "($DRY_TESTS_K) and ($GPU_TESTS_K)")
    SCAN_OPTS=(--device cpu --tiny --warmup 0 --repeat 1 --backends triton chunked)
    # fp32: bf16 autocast is emulated on most CPUs (seconds per step); no CPU memory probes
    # (a fresh process per row).
    SWEEP_OPTS=(--warmup 0 --repeat 1 --memory none)
else
    DEVICE=cuda PYTEST_K=(-k "$GPU_TESTS_K")
    SCAN_OPTS=(--device cuda --warmup 1 --repeat 5 --backends triton chunked)
    SWEEP_OPTS=(--amp bf16 --warmup 2 --repeat 5)
fi

START=$SECONDS
# step NAME LIMIT_S COMMAND...: runs it under a time limit, logs it, records rc and seconds.
# A shell function runs without the limit (timeout(1) runs programs only).
step() {
    local name="$1" limit="$2"; shift 2
    local t0; t0=$(date +%s%N)
    echo "==> $name (limit ${limit} s)"
    if declare -F "$1" >/dev/null; then
        "$@" 2>&1 | tee "$OUT/logs/$name.log"
    else
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
    fi
    local rc=${PIPESTATUS[0]}
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local took; took=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$limit" >> "$OUT/steps.tsv"
    echo "<== $name: rc $rc, $took s ($((SECONDS - START)) s since the start)"
    return "$rc"
}

install_deps() {
    if "$PY" -c 'import mmengine' 2>/dev/null; then
        echo "mmengine $("$PY" -c 'import mmengine; print(mmengine.__version__)') imports: nothing to install"
        return 0
    fi
    [[ -d "$WHEELS" ]] || { echo "mmengine does not import and $WHEELS is missing: run 'bash tools/gpu_check.sh --fetch-wheels' on a machine with network first" >&2; return 1; }
    if "$PY" -m pip --version >/dev/null 2>&1; then
        local pip=("$PY" -m pip install --quiet --upgrade --no-index --find-links "$WHEELS" --target "$OUT/site")
        # The dependencies first: pip then has no mmengine to find matplotlib and opencv missing for.
        "${pip[@]}" "${MMENGINE_DEPS[@]}" && "${pip[@]}" --no-deps "$MMENGINE" || return 1
    else  # no pip in this interpreter: every wheel there is needed, extract those that fit
        "$PY" "$ROOT/tools/analysis_tools/gpu_check_report.py" unpack-wheels --wheels "$WHEELS" --target "$OUT/site" || return 1
    fi
    "$PY" -c 'import mmengine; print("installed mmengine", mmengine.__version__, "in", mmengine.__file__)'
}

missing=()
for t in "${TESTS[@]}"; do [[ -f "$ROOT/$t" ]] || missing+=("$t"); done
present=()
for t in "${TESTS[@]}"; do [[ -f "$ROOT/$t" ]] && present+=("$ROOT/$t"); done

cd "$ROOT" || die "cannot enter $ROOT"
if step deps "$LIMIT_SETUP" install_deps; then
    # 1. correctness: a skipped test fails the check as much as a failed one (the summary
    #    reads the JUnit XML).
    # The launches the tests make are recorded (QM_TRITON_LAUNCH_LOG) for the compile step.
    export QM_TRITON_LAUNCH_LOG="$OUT/launches.jsonl"
    step tests "$LIMIT_TESTS" "$PY" -m pytest -q -rs -p no:cacheprovider \
        --junitxml="$OUT/pytest.xml" ${PYTEST_K[@]+"${PYTEST_K[@]}"} ${present[@]+"${present[@]}"}
    unset QM_TRITON_LAUNCH_LOG
    # 1b. dry run: what the interpreter ran is compiled for sm_90 by the real compiler (the
    #     interpreter accepts code the compiler rejects), with the backbone's QuadMamba-Li and
    #     -S launches: the dry run fails where the GPU run would.
    if [[ $DRY == 1 ]]; then
        step compile "$LIMIT_COMPILE" env -u TRITON_INTERPRET "$PY" -m quadmamba_kernels.compile_check \
            --targets 90 --subset --sources backbone --launch-log "$OUT/launches.jsonl" \
            --json "$OUT/compile.json"
    fi
    # 2. the selective scan: bf16 and fp32 inputs, QuadMamba-S shapes, both layouts.
    step scan "$LIMIT_SCAN" "$PY" -m quadmamba_kernels.benchmark --quadmamba-s \
        --dtype bfloat16 float32 "${SCAN_OPTS[@]}" --json "$OUT/scan.json"
    # 3. backbone throughput and peak memory, inference and training step (bf16 autocast on
    #    the GPU).
    step backbone "$LIMIT_BACKBONE" "$PY" tools/analysis_tools/benchmark.py "${MODELS[@]}" \
        --device "$DEVICE" --sizes "${SIZES[@]}" --batch-size "${BATCHES[@]}" --modes infer train \
        "${SWEEP_OPTS[@]}" --out "$OUT/backbone"
fi
# 4. one summary; non-zero exit on any failure.
timeout --kill-after=10 "$LIMIT_SETUP" "$PY" tools/analysis_tools/gpu_check_report.py summary \
    --out "$OUT" $([[ $DRY == 1 ]] && echo --dry-run) --missing-tests ${missing[@]+"${missing[@]}"}
rc=$?
rm -rf "$OUT/site"  # scratch: OUT keeps the results only
echo "gpu_check: $((SECONDS - START)) s in all"
exit "$rc"
