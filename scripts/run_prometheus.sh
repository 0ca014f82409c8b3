#!/usr/bin/env bash
# A local Prometheus (Debian's /usr/bin/prometheus, no Docker) scraping the servers that `make run` starts.
#
# It uses the project's observability/prometheus/ files with only the scrape targets rewritten from the
# Compose service names to this machine (the same rewrite the tests make), and keeps its data in
# .run/prometheus. `RTDETECT_WITH_PROMETHEUS=1 make run` starts it through scripts/run.sh.
#
#   RTDETECT_PROMETHEUS_PORT   where Prometheus listens, on 127.0.0.1 (default 9090)
#   RTDETECT_PORT              the detect API's port (default 8000)
#   RTDETECT_MEDIA_PORT        the media server's port (default 8080)
#   RTDETECT_DCGM_PORT         a local dcgm-exporter's port, if one runs (default 9400)
#   RTDETECT_PROMETHEUS_API_KEY_FILE  a file holding the servers' API key, when they run with auth on
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS=${PROMETHEUS:-prometheus}
if ! command -v "$PROMETHEUS" >/dev/null; then
  echo "!! prometheus not found: apt-get install prometheus (make setup installs it)" >&2
  exit 1
fi

port=${RTDETECT_PROMETHEUS_PORT:-9090}
run_dir=.run/prometheus
src=observability/prometheus
mkdir -p "$run_dir/data"

# Rule files are named relative to the config file: copy them beside the generated config. So is the file
# with the servers' API key for /metrics: RTDETECT_PROMETHEUS_API_KEY_FILE when they run with auth on.
cp "$src/recording_rules.yml" "$src/alert_rules.yml" "$run_dir/"
mkdir -p "$run_dir/secrets"
cp "${RTDETECT_PROMETHEUS_API_KEY_FILE:-$src/secrets/metrics_api_key}" "$run_dir/secrets/metrics_api_key"
sed -e "s|\"backend:8000\"|\"localhost:${RTDETECT_PORT:-8000}\"|" \
    -e "s|\"media-server:8080\"|\"localhost:${RTDETECT_MEDIA_PORT:-8080}\"|" \
    -e "s|\"dcgm-exporter:9400\"|\"localhost:${RTDETECT_DCGM_PORT:-9400}\"|" \
    "$src/prometheus.yml" >"$run_dir/prometheus.yml"
for target in backend:8000 media-server:8080 dcgm-exporter:9400; do
  if grep -q "\"$target\"" "$run_dir/prometheus.yml"; then
    echo "!! $src/prometheus.yml: target $target was not rewritten" >&2
    exit 1
  fi
done

echo ">> Prometheus     http://127.0.0.1:${port}/  (data in $run_dir/data)"
exec "$PROMETHEUS" \
  --config.file="$run_dir/prometheus.yml" \
  --storage.tsdb.path="$run_dir/data" \
  --storage.tsdb.retention.time=7d \
  --web.listen-address="127.0.0.1:${port}" \
  --log.level=warn
