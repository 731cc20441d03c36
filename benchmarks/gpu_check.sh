#!/usr/bin/env bash
# The GPU check (issue 17): one command, under 8 minutes on a CUDA machine, run as is.
#
#   benchmarks/gpu_check.sh                                    # or: make gpu-check (builds/reuses .venv)
#   VAEKIT_PYTHON=/usr/bin/python3 benchmarks/gpu_check.sh     # that interpreter (its torch, its packages): no install
#   VAEKIT_TORCH_INDEX=https://download.pytorch.org/whl/cu128 benchmarks/gpu_check.sh   # torch from that index
#   GPU_CHECK_DEVICE=cpu VAEKIT_RESULTS=/tmp/r.md benchmarks/gpu_check.sh --quick       # a dry run on a CPU
#
# 1. the device: nvidia-smi, and what torch sees (a one-line error if CUDA is asked for and torch sees none);
# 2. `pytest -m cuda -ra` on tests/integration/test_cuda.py (with GPU_CHECK_DEVICE=cpu: the whole file, whose cuda
#    variants are skipped with the reason shown);
# 3. train speed against the PyTorch examples reference, both on the device (benchmarks/train_speed.py --device):
#    fp32, dynamic binarization, --compile, --amp (bf16 autocast), --amp --compile;
# 4. eval speed (benchmarks/eval_speed.py --device): importance-sampled NLL, k=5000 over 2000 test digits;
# 5. a summary (each step's outcome and seconds).
# Steps 3-5 append their sections to benchmarks/RESULTS.md (to $VAEKIT_RESULTS instead when set).
#
# The .venv route runs `make .venv/.installed`: pip with constraints.txt, where torch==2.13.0 from PyPI is its CUDA
# build on Linux x86-64 (or the build VAEKIT_TORCH_INDEX names, installed first). Offline, give VAEKIT_PYTHON an
# interpreter that has torch with CUDA and the dev packages (pip install -e '.[dev]' or the list it names), and
# MNIST in the data cache ($VAEKIT_DATA or ~/.cache/vaekit: copy the mnist/ folder from a machine that has it).
# Sizes: GPU_CHECK_ROUNDS (2), GPU_CHECK_EPOCHS (3), GPU_CHECK_K (5000), GPU_CHECK_LIMIT (2000 test digits),
# GPU_CHECK_TRAIN_LIMIT (0: all 60k training digits); --quick: 1, 2, 20, 200, 1000.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=0
for a in "$@"; do
    case $a in
        --quick) QUICK=1 ;;
        -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: gpu_check.sh: unknown argument $a (only --quick)" >&2; exit 2 ;;
    esac
done
die() { echo "error: $*" >&2; exit 2; }
[[ $DEVICE == cuda || $DEVICE == cpu ]] || die "GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'"
if ((QUICK)); then d=(1 2 20 200 1000); else d=(2 3 5000 2000 0); fi
ROUNDS=${GPU_CHECK_ROUNDS:-${d[0]}} EPOCHS=${GPU_CHECK_EPOCHS:-${d[1]}} K=${GPU_CHECK_K:-${d[2]}}
LIMIT=${GPU_CHECK_LIMIT:-${d[3]}} TRAIN_LIMIT=${GPU_CHECK_TRAIN_LIMIT:-${d[4]}}

# ------------------------------------------------------------------------------------------ the interpreter
if [[ -n ${VAEKIT_PYTHON:-} ]]; then
    PY=$(command -v "$VAEKIT_PYTHON") || die "VAEKIT_PYTHON=$VAEKIT_PYTHON: no such interpreter"
else
    if [[ -n ${VAEKIT_TORCH_INDEX:-} ]]; then
        torch_pin=$(grep -m1 '^torch==' constraints.txt)
        { [[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv; } &&
            .venv/bin/python -m pip install -q --index-url "$VAEKIT_TORCH_INDEX" "$torch_pin" ||
            die "could not install $torch_pin from VAEKIT_TORCH_INDEX=$VAEKIT_TORCH_INDEX into .venv"
    fi
    make -s .venv/.installed ||
        die "could not build .venv (make .venv/.installed, above); offline, set VAEKIT_PYTHON to a ready interpreter"
    PY=$ROOT/.venv/bin/python
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'EOF' || exit 2
import importlib.util, sys
if sys.version_info < (3, 10):
    sys.exit(f"error: {sys.executable} is Python {sys.version.split()[0]}; vaekit needs 3.10+")
need = ["torch", "numpy", "safetensors", "PIL", "yaml", "tqdm", "matplotlib", "fastapi", "uvicorn", "httpx",
        "pytest", "hypothesis"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    keep = "" if "torch" in missing else " (keeping its torch)"
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}: pip install -c constraints.txt -e '.[dev]'{keep}, "
             "or run without VAEKIT_PYTHON to build .venv")
EOF

# ------------------------------------------------------------------------------------------------ the device
echo "== device ($DEVICE)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv || true
else
    echo "nvidia-smi: not found"
fi
"$PY" - "$DEVICE" <<'EOF' || exit 2
import platform, sys
import torch
device = sys.argv[1]
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} ({build})")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"error: GPU_CHECK_DEVICE=cuda, but torch {torch.__version__} ({build}) sees no CUDA device "
                 "(torch.cuda.is_available() is False): run it on a GPU machine, with a CUDA build of torch "
                 "(VAEKIT_TORCH_INDEX or VAEKIT_PYTHON), or GPU_CHECK_DEVICE=cpu for a dry run")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
EOF

STATUS=0
ROWS=()
step() {  # step NAME COMMAND...: run it, time it, keep a summary row
    local name=$1 t0=$SECONDS rc
    shift
    if [[ $(type -t "$1") == function ]]; then echo "== $name"; else echo "== $name: $*"; fi
    "$@"
    rc=$?
    ROWS+=("| $name | $([[ $rc == 0 ]] && echo ok || echo "failed (exit $rc)") | $((SECONDS - t0)) |")
    ((rc == 0)) || STATUS=1
    return $rc
}

# ------------------------------------------------------------------------------------------------- the tests
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if [[ $DEVICE == cuda ]]; then sel=(-m cuda); else sel=(); fi
run_tests() {
    "$PY" -m pytest "${sel[@]}" -ra -q -p no:cacheprovider tests/integration/test_cuda.py 2>&1 | tee "$LOG"
    return "${PIPESTATUS[0]}"
}
step "pytest ${sel[*]}${sel:+ }-ra tests/integration/test_cuda.py" run_tests
TESTS=$(grep -E '(passed|failed|skipped|error|deselected|no tests ran)' "$LOG" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
if [[ $DEVICE == cuda ]] && grep -q 'needs a CUDA device' "$LOG"; then
    STATUS=1  # torch saw the GPU above, so a skip here is a failure of the check
fi

# ------------------------------------------------------------------------------------------- the benchmarks
mnist() {  # the cache (verified, instant), else a fetch bounded in time (offline it would try every source)
    "$PY" -c 'from vaekit.data import fetch; print("mnist: in", fetch("mnist", sources=[], quiet=True))' 2>/dev/null ||
        timeout 120 "$PY" -m vaekit data fetch mnist
}
if step "MNIST" mnist; then
    step "train speed" "$PY" benchmarks/train_speed.py --device "$DEVICE" --rounds "$ROUNDS" --epochs "$EPOCHS" \
        --limit "$TRAIN_LIMIT"
    step "eval speed" "$PY" benchmarks/eval_speed.py --device "$DEVICE" --k "$K" --limit "$LIMIT" \
        --train-limit "$TRAIN_LIMIT"
else
    echo "error: MNIST is not in the data cache and cannot be fetched: copy ~/.cache/vaekit/mnist from a machine" \
        "that has it and set VAEKIT_DATA to its parent folder; the speed benchmarks were not run" >&2
fi

# ---------------------------------------------------------------------------------------------- the summary
BODY=$(printf '%s\n' "| step | outcome | seconds |" "|---|---|---|" "${ROWS[@]}")
BODY+=$'\n\n'"Tests (tests/integration/test_cuda.py): ${TESTS:-no summary line}. Total $SECONDS s."
"$PY" - "$DEVICE" "$BODY" "$*" <<'EOF' || STATUS=1
import sys
sys.path.insert(0, "benchmarks")
from common import append_results, gpu
device, body, args = sys.argv[1:]
title = f"GPU check: {gpu()}" if device == "cuda" else "GPU check, dry run on the CPU (GPU_CHECK_DEVICE=cpu)"
append_results(title, f"benchmarks/gpu_check.sh {args}".strip(), body, device)
EOF
echo "== gpu check: $([[ $STATUS == 0 ]] && echo ok || echo FAILED) in $SECONDS s; results in ${VAEKIT_RESULTS:-benchmarks/RESULTS.md}"
exit $STATUS
