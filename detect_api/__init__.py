"""The detect API (FastAPI): POST /detect for still images, /healthz, /readyz, /model, /metrics."""
