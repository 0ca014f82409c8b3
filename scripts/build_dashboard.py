"""Writes observability/grafana/dashboards/rtdetect.json, the provisioned Grafana dashboard.

The JSON file is the artefact Grafana loads; this script is how it is kept consistent (panel ids, grid
positions, the data source reference, units, legends). Edit the panels here, then run

    .venv/bin/python scripts/build_dashboard.py          # rewrite the JSON
    .venv/bin/python scripts/build_dashboard.py --check  # exit 1 when the JSON is out of date (tests)

Every query is evaluated against a real Prometheus scraping the real servers by
tests/test_observability_stack.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "observability" / "grafana" / "dashboards" / "rtdetect.json"

# Must match observability/grafana/provisioning/datasources/prometheus.yml.
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11; Grafana migrates older dashboards forward, never back
GRID_WIDTH = 24

INSTANCE = 'instance=~"$instance"'
SERVERS = f'job=~"detect-api|media-server", {INSTANCE}'
API = f'job="detect-api", {INSTANCE}'
# Triton's series come from its own target (the `scale` profile): the servers' instance filter does not apply.
TRITON = '{job="triton"}'

# Grafana has no frames-per-second unit: a custom suffix.
FPS = "suffix: fps"
MIB = 1024 * 1024  # dcgm-exporter reports framebuffer memory in MiB


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    # (value, colour) steps above the base colour; drawn as lines on time series.
    thresholds: tuple[tuple[float, str], ...] = ()
    base_color: str = "green"
    min: float | None = 0
    max: float | None = None
    decimals: int | None = None
    mappings: tuple[dict[str, Any], ...] = ()
    stack: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def rows() -> list[Row]:
    return [
        Row(
            "Overview",
            [
                Panel(
                    "Servers up",
                    "1 when Prometheus can scrape the server (it listens only once its model is loaded).",
                    (Query(f"max by (job) (up{{{SERVERS}}})", "{{job}}"),),
                    "none",
                    kind="stat",
                    width=4,
                    height=4,
                    base_color="red",
                    thresholds=((1, "green"),),
                    mappings=(
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "DOWN", "color": "red", "index": 0},
                                "1": {"text": "UP", "color": "green", "index": 1},
                            },
                        },
                    ),
                ),
                Panel(
                    "API requests/s",
                    "All detect API requests per second, every route and status (1 min rate); gRPC calls beside them.",
                    (
                        Query(f"sum(instance_handler_status:http_requests:rate1m{{{API}}})", "requests/s"),
                        Query(
                            f"sum(instance_method_code:grpc_server_handled:rate1m{{{API}}})", "gRPC calls/s"
                        ),
                    ),
                    "reqps",
                    kind="stat",
                    width=4,
                    height=4,
                    base_color="blue",
                ),
                Panel(
                    "POST /detect p99",
                    "99th percentile of POST /detect latency over the last minute, worst instance.",
                    (
                        Query(
                            "max(instance_handler:http_request_duration_seconds:p99_rate1m"
                            f'{{{API}, handler="/detect"}})',
                            "p99",
                        ),
                    ),
                    "s",
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=((0.25, "orange"), (0.5, "red")),
                ),
                Panel(
                    "Inference p99",
                    "99th percentile of one engine call (one batch) over the last minute, worst server.",
                    (Query(f"max(instance:inference_latency_seconds:p99_rate1m{{{INSTANCE}}})", "p99"),),
                    "s",
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=((0.1, "orange"), (0.25, "red")),
                ),
                Panel(
                    "Live FPS out",
                    "Video frames per second sent back to all live peers together.",
                    (Query(f"sum(instance:rtdetect_live_frames_out:rate1m{{{INSTANCE}}})", "fps out"),),
                    FPS,
                    kind="stat",
                    width=4,
                    height=4,
                    base_color="blue",
                    decimals=1,
                ),
                Panel(
                    "Active peers",
                    "WebRTC peers connected or connecting to the media server(s).",
                    (Query(f"sum(rtdetect_live_active_peers{{{INSTANCE}}})", "peers"),),
                    "none",
                    kind="stat",
                    width=4,
                    height=4,
                    base_color="blue",
                    decimals=0,
                ),
            ],
        ),
        Row(
            "Detect API",
            [
                Panel(
                    "API requests per second by route and status",
                    "Requests per second (1 min rate) by route template and HTTP status; unknown paths "
                    'are grouped as route "none". gRPC calls by method and status code beside them.',
                    (
                        Query(
                            "sum by (handler, status) "
                            f"(instance_handler_status:http_requests:rate1m{{{API}}})",
                            "{{handler}} {{status}}",
                        ),
                        Query(
                            "sum by (grpc_method, grpc_code) "
                            f"(instance_method_code:grpc_server_handled:rate1m{{{API}}})",
                            "gRPC {{grpc_method}} {{grpc_code}}",
                        ),
                    ),
                    "reqps",
                    stack=True,
                ),
                Panel(
                    "API p99 latency by route",
                    "99th percentile request duration over the last minute, by route and by unary gRPC "
                    "method (worst instance). "
                    "The red line is the DetectApiLatencyHigh alert threshold.",
                    (
                        Query(
                            "max by (handler) "
                            f"(instance_handler:http_request_duration_seconds:p99_rate1m{{{API}}})",
                            "{{handler}}",
                        ),
                        Query(
                            "max by (grpc_method) "
                            f"(instance_method:grpc_server_handling_seconds:p99_rate1m{{{API}}})",
                            "gRPC {{grpc_method}}",
                        ),
                    ),
                    "s",
                    thresholds=((0.25, "orange"), (0.5, "red")),
                ),
            ],
        ),
        Row(
            "Inference",
            [
                Panel(
                    "Inference latency: mean and p99",
                    "Duration of one engine call (one batch of images) in each server, over the last minute.",
                    (
                        Query(
                            f"instance:inference_latency_seconds:mean_rate1m{{{INSTANCE}}}", "{{job}} mean"
                        ),
                        Query(f"instance:inference_latency_seconds:p99_rate1m{{{INSTANCE}}}", "{{job}} p99"),
                    ),
                    "s",
                    width=8,
                    thresholds=((0.1, "orange"), (0.25, "red")),
                ),
                Panel(
                    "Images inferred per second",
                    "inference_fps: images through the engine per second over a short sliding window, "
                    "per server process.",
                    (Query(f"sum by (job) (inference_fps{{{INSTANCE}}})", "{{job}}"),),
                    FPS,
                    width=8,
                ),
                Panel(
                    "Batch size and queue depth",
                    "Mean images per engine call over the last minute (the micro-batcher's work), and "
                    "images waiting in its queue now.",
                    (
                        Query(
                            f"instance:inference_batch_size:mean_rate1m{{{INSTANCE}}}", "{{job}} mean batch"
                        ),
                        Query(f"sum by (job) (inference_queue_depth{{{INSTANCE}}})", "{{job}} queued"),
                    ),
                    "short",
                    width=8,
                ),
            ],
        ),
        Row(
            "Live video",
            [
                Panel(
                    "Live FPS in, out and inferred (total and per peer)",
                    "Frames per second received from, sent back to and run through the detector, for all "
                    "peers together and for each live peer (per-peer series exist while the peer does).",
                    (
                        Query(f"sum(instance:rtdetect_live_frames_in:rate1m{{{INSTANCE}}})", "in"),
                        Query(f"sum(instance:rtdetect_live_frames_out:rate1m{{{INSTANCE}}})", "out"),
                        Query(
                            f"sum(instance:rtdetect_live_frames_inferred:rate1m{{{INSTANCE}}})", "inferred"
                        ),
                        Query(
                            "sum by (peer, direction) (rate(rtdetect_live_peer_frames_total"
                            f"{{{INSTANCE}}}[$__rate_interval]))",
                            "{{direction}} {{peer}}",
                        ),
                    ),
                    FPS,
                    width=8,
                ),
                Panel(
                    "Dropped-frame ratio by stage",
                    "Share of received frames dropped, worst instance: inference = not run through the "
                    "detector (still sent back, with older boxes); output = not sent back (visible stutter).",
                    (
                        Query(
                            "max by (stage) "
                            f"(instance_stage:rtdetect_live_frames_dropped:ratio_rate1m{{{INSTANCE}}})",
                            "{{stage}}",
                        ),
                    ),
                    "percentunit",
                    width=8,
                    max=1,
                    thresholds=((0.05, "orange"), (0.2, "red")),
                ),
                Panel(
                    "Active peers",
                    "WebRTC peers connected or connecting, per media server.",
                    (Query(f"sum by (instance) (rtdetect_live_active_peers{{{INSTANCE}}})", "{{instance}}"),),
                    "none",
                    width=8,
                    decimals=0,
                ),
                Panel(
                    "Detection age: p50 and p99",
                    "How far the boxes drawn on an outgoing frame lag it: its arrival minus the arrival of "
                    "the frame they were computed on. About one inference time when healthy.",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(rtdetect_live_detection_age_seconds_bucket{{{INSTANCE}}}[$__rate_interval])))",
                            "p50",
                        ),
                        Query(
                            f"max(instance:rtdetect_live_detection_age_seconds:p99_rate1m{{{INSTANCE}}})",
                            "p99",
                        ),
                    ),
                    "s",
                    thresholds=((0.2, "orange"), (0.5, "red")),
                ),
                Panel(
                    "Server frame latency: p50 and p99",
                    "Time from a decoded frame's arrival in the media server to its hand-off to the "
                    "encoder (inference is not on this path).",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(rtdetect_live_frame_latency_seconds_bucket{{{INSTANCE}}}[$__rate_interval])))",
                            "p50",
                        ),
                        Query(
                            f"max(instance:rtdetect_live_frame_latency_seconds:p99_rate1m{{{INSTANCE}}})",
                            "p99",
                        ),
                    ),
                    "s",
                    thresholds=((0.033, "orange"), (0.1, "red")),
                ),
                Panel(
                    "Zone and line events per minute",
                    "Tracked objects entering and leaving zones and crossing lines (in / out), by zone or line "
                    'configured on the media server; zones a viewer drew for their own stream count as "peer".',
                    (
                        Query(
                            "60 * sum by (zone, event) "
                            f"(rate(rtdetect_live_zone_events_total{{{INSTANCE}}}[$__rate_interval]))",
                            "{{zone}} {{event}}",
                        ),
                    ),
                    "short",
                ),
                Panel(
                    "Tracks started and results dropped per second",
                    "New track ids (objects entering the scene, or tracks lost and found again) and data-channel "
                    "messages not sent because a viewer was not reading them.",
                    (
                        Query(
                            f"sum(rate(rtdetect_live_tracks_started_total{{{INSTANCE}}}[$__rate_interval]))",
                            "tracks started",
                        ),
                        Query(
                            f"sum(rate(rtdetect_live_results_dropped_total{{{INSTANCE}}}[$__rate_interval]))",
                            "results dropped",
                        ),
                    ),
                    "short",
                ),
            ],
        ),
        Row(
            "GPU",
            [
                Panel(
                    "GPU utilisation",
                    "Share of time a kernel ran on each GPU: from the servers' NVML sampler, and from "
                    "dcgm-exporter where it runs. Empty on hosts without an NVIDIA GPU.",
                    (
                        Query(f"gpu_utilization_ratio{{{INSTANCE}}}", "GPU {{gpu}} {{name}} ({{job}})"),
                        Query("DCGM_FI_DEV_GPU_UTIL / 100", "GPU {{gpu}} {{modelName}} (dcgm)"),
                    ),
                    "percentunit",
                    max=1,
                    thresholds=((0.9, "orange"),),
                ),
                Panel(
                    "GPU memory",
                    "GPU memory used and total per GPU (NVML sampler; dcgm-exporter's framebuffer figures "
                    "where it runs). The GpuMemoryNearFull alert fires above 95 %.",
                    (
                        Query(f"gpu_memory_used_bytes{{{INSTANCE}}}", "GPU {{gpu}} used ({{job}})"),
                        Query(f"gpu_memory_total_bytes{{{INSTANCE}}}", "GPU {{gpu}} total ({{job}})"),
                        Query(f"DCGM_FI_DEV_FB_USED * {MIB}", "GPU {{gpu}} used (dcgm)"),
                        Query(
                            f"(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * {MIB}", "GPU {{gpu}} total (dcgm)"
                        ),
                    ),
                    "bytes",
                ),
                Panel(
                    "GPU temperature",
                    "GPU core temperature (NVML sampler; dcgm-exporter where it runs).",
                    (
                        Query(f"gpu_temperature_celsius{{{INSTANCE}}}", "GPU {{gpu}} ({{job}})"),
                        Query("DCGM_FI_DEV_GPU_TEMP", "GPU {{gpu}} (dcgm)"),
                    ),
                    "celsius",
                    min=None,
                    thresholds=((80, "orange"), (90, "red")),
                ),
                Panel(
                    "GPU power",
                    "GPU power draw (NVML sampler; dcgm-exporter where it runs).",
                    (
                        Query(f"gpu_power_watts{{{INSTANCE}}}", "GPU {{gpu}} ({{job}})"),
                        Query("DCGM_FI_DEV_POWER_USAGE", "GPU {{gpu}} (dcgm)"),
                    ),
                    "watt",
                ),
            ],
        ),
        Row(
            # Triton's own metrics (the compose `scale` profile): empty where no Triton runs.
            "Triton (engine tier)",
            [
                Panel(
                    "Triton requests/s",
                    "Inference requests Triton completed per second for each model, from every server "
                    "process that uses it, and the executions it ran them in.",
                    (
                        Query(
                            f"sum by (model) (rate(nv_inference_request_success{TRITON}[$__rate_interval]))",
                            "{{model}} requests/s",
                        ),
                        Query(
                            f"sum by (model) (rate(nv_inference_exec_count{TRITON}[$__rate_interval]))",
                            "{{model}} executions/s",
                        ),
                    ),
                    "reqps",
                    width=6,
                ),
                Panel(
                    "Triton batch size",
                    "Images per execution: Triton's dynamic batching across requests and processes.",
                    (
                        Query(
                            f"sum by (model) (rate(nv_inference_count{TRITON}[$__rate_interval])) / "
                            f"sum by (model) (rate(nv_inference_exec_count{TRITON}[$__rate_interval]))",
                            "{{model}}",
                        ),
                    ),
                    "none",
                    width=6,
                ),
                Panel(
                    "Triton queue and compute time",
                    "Mean time per request waiting in Triton's queue (the batching delay included) and "
                    "computing (the model itself), per model.",
                    (
                        Query(
                            f"sum by (model) (rate(nv_inference_queue_duration_us{TRITON}[$__rate_interval])) / 1e6 / "
                            f"sum by (model) (rate(nv_inference_request_success{TRITON}[$__rate_interval]))",
                            "{{model}} queue",
                        ),
                        Query(
                            f"sum by (model) (rate(nv_inference_compute_infer_duration_us{TRITON}[$__rate_interval])) / 1e6 / "
                            f"sum by (model) (rate(nv_inference_request_success{TRITON}[$__rate_interval]))",
                            "{{model}} compute",
                        ),
                    ),
                    "s",
                    width=6,
                ),
                Panel(
                    "Triton GPU",
                    "GPU utilisation as Triton reports it for the GPUs it serves from.",
                    (Query(f"nv_gpu_utilization{TRITON}", "GPU {{gpu_uuid}}"),),
                    "percentunit",
                    width=6,
                    max=1,
                ),
            ],
        ),
        Row(
            "Processes",
            [
                Panel(
                    "Process CPU",
                    "CPU time used per second by each server process: 100 % is one full core.",
                    (
                        Query(
                            f"rate(process_cpu_seconds_total{{{SERVERS}}}[$__rate_interval])",
                            "{{job}} ({{instance}})",
                        ),
                    ),
                    "percentunit",
                ),
                Panel(
                    "Process memory",
                    "Resident memory of each server process (model, buffers, Python).",
                    (Query(f"process_resident_memory_bytes{{{SERVERS}}}", "{{job}} ({{instance}})"),),
                    "bytes",
                ),
            ],
        ),
    ]


def _thresholds(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": panel.base_color, "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    return {"mode": "absolute", "steps": steps}


def _targets(panel: Panel) -> list[dict[str, Any]]:
    return [
        {
            "refId": chr(ord("A") + i),
            "datasource": dict(DATASOURCE),
            "editorMode": "code",
            "expr": query.expr,
            "legendFormat": query.legend,
            "range": panel.kind == "timeseries",
            "instant": panel.kind == "stat",
        }
        for i, query in enumerate(panel.queries)
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "thresholds": _thresholds(panel),
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "mappings": [dict(m) for m in panel.mappings],
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
        }
        options = {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE),
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": _targets(panel),
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows():
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": "rtdetect",
        "title": "rtdetect",
        "description": "Real-time object detection: detect API, inference, live video, GPU, processes.",
        "tags": ["rtdetect"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,  # shared crosshair
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": dict(DATASOURCE),
                    "definition": "label_values(up, instance)",
                    # The classic string form: every Grafana version since 7 parses it.
                    "query": "label_values(up, instance)",
                    "refresh": 2,  # on time range change: instances come and go
                    "sort": 1,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "hide": 0,
                    "options": [],
                    "regex": "",
                }
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
