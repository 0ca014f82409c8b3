# syntax=docker/dockerfile:1
# The rtdetect UI (Streamlit, :8501): slim Python, no CUDA, no model. It talks to the detect API and the
# media server over HTTP/WebRTC only (RTDETECT_UI_DETECT_API_URL, RTDETECT_UI_MEDIA_SERVER_URL).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (a layer that survives code changes): the packages as empty directories.
# DL3013: "." is this project; pyproject.toml pins every dependency.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir inference engine_build detect_api media_server observability web \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[ui]" \
 && rm -rf inference engine_build detect_api media_server observability web
COPY inference/ inference/
COPY observability/ observability/
COPY web/ web/
RUN /opt/venv/bin/pip install --no-deps --force-reinstall . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS frontend
RUN useradd --system --uid 10001 --user-group --home-dir /home/rtdetect --create-home rtdetect
COPY --from=build /opt/venv /opt/venv
COPY web/ /app/web/
COPY docker/healthcheck.py /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    RTDETECT_HEALTHCHECK_URL=http://127.0.0.1:8501/_stcore/health
WORKDIR /app
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/usr/local/bin/healthcheck.py"]
CMD ["streamlit", "run", "web/app.py", "--server.address=0.0.0.0", "--server.port=8501"]
