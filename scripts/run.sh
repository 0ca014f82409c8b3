#!/usr/bin/env bash
# Start every rtdetect service in the foreground; Ctrl-C stops them all.
# RTDETECT_WITH_PROMETHEUS=1 also starts a local Prometheus scraping both servers (no Docker needed).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
pids=()
cleanup() { trap - INT TERM EXIT; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup INT TERM EXIT

start() { echo ">> $*"; "$@" & pids+=("$!"); }

export RTDETECT_HOST=${RTDETECT_HOST:-127.0.0.1}
start "$BIN/python" -m detect_api
if [ -f media_server/__main__.py ]; then start "$BIN/python" -m media_server; fi
if [ -f web/app.py ]; then
  start "$BIN/streamlit" run web/app.py --server.port "${RTDETECT_UI_PORT:-8501}" --server.headless true \
    --browser.gatherUsageStats false
fi
if [ "${RTDETECT_WITH_PROMETHEUS:-0}" = 1 ] && [ -f scripts/run_prometheus.sh ]; then start scripts/run_prometheus.sh; fi

echo ">> detect API    http://127.0.0.1:8000/docs"
[ -f media_server/__main__.py ] && echo ">> live camera   http://127.0.0.1:8080/"
[ -f web/app.py ] && echo ">> UI            http://127.0.0.1:8501/"
wait -n "${pids[@]}"
