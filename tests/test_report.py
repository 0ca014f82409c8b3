"""The report generator's pure parts (tools/report.py): which query each dashboard picture renders, with
which values for Grafana's variables, against which Prometheus targets, and which benchmark numbers the
speed chart draws. The slow part (scripts/report.py: servers, Chromium, load) is run by `make report`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tools import report
from tools.report import Panel, Target

ENGINE_SECTION = """
<!-- engine_build.bench:start -->
## Engines

Machine: Some CPU, 2 cores, Linux 6.1; CPU flags that decide reduced precision: avx2; GPU: none. Model: x (416x416), 30 runs.

| engine | runs on | p50 ms (batch 1) | p99 ms (batch 1) | images/s at best batch | best batch | gate |
|---|---|---:|---:|---:|---:|---|
| PyTorch eager FP32 | torch on cpu | 3,053.0 | 6995.7 | 1.1 | 8 | (source) |
| ONNX Runtime INT8 | CPUExecutionProvider | 27.2 | 315.5 | 64.3 | 2 | 0.918 pass |

- a note between the tables

| server | engine | batch / in flight | concurrency | /detect images/s | p50 ms | raw engine images/s | ratio |
|---|---|---:|---:|---:|---:|---:|---:|
| default | onnxruntime fp32 | 1 / 2 | 4 | 22.2 | 132.3 | 29.6 | **0.75** |

Run: 2026-12-04; the load average was 11.2.
<!-- engine_build.bench:end -->
"""


def _panel(*exprs: str, title: str = "p") -> Panel:
    return Panel(1, title, "timeseries", "", (0, 0, 12, 8), "none", tuple(Target(e, "") for e in exprs))


# --- the dashboard -------------------------------------------------------------------------------------------


def test_every_query_panel_of_the_dashboard_is_read_with_its_row_and_a_unique_slug() -> None:
    dashboard = report.load_dashboard()
    expected = [p for p in dashboard["panels"] if p["type"] != "row"]
    expected += [n for p in dashboard["panels"] if p["type"] == "row" for n in p.get("panels", [])]
    panels = report.dashboard_panels(dashboard)

    assert sorted(p.id for p in panels) == sorted(p["id"] for p in expected)
    assert all(p.targets and all(t.expr.strip() for t in p.targets) for p in panels)
    slugs = [p.slug for p in panels]
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", s) for s in slugs), slugs
    by_title = {p.title: p for p in panels}
    assert by_title["GPU utilisation"].row == "GPU"
    assert by_title["POST /detect p99"].slug == "post-detect-p99"
    assert by_title["POST /detect p99"].unit == "s"
    # Two panels called "Active peers" (a stat and a time series) get two file names.
    assert {p.slug for p in panels if p.title == "Active peers"} == {
        "active-peers-stat",
        "active-peers-timeseries",
    }


def test_panels_inside_a_collapsed_row_are_read_with_that_row() -> None:
    def panel(id_: int, title: str) -> dict[str, object]:
        return {
            "id": id_,
            "type": "timeseries",
            "title": title,
            "targets": [{"expr": "up", "legendFormat": "x"}],
        }

    dashboard = {
        "panels": [
            panel(1, "Top"),
            {"id": 2, "type": "row", "title": "Hidden", "collapsed": True, "panels": [panel(3, "Inside")]},
        ]
    }
    panels = report.dashboard_panels(dashboard)
    assert [(p.title, p.row) for p in panels] == [("Top", ""), ("Inside", "Hidden")]


def test_a_panel_without_a_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query"):
        report.dashboard_panels({"panels": [{"id": 1, "type": "stat", "title": "Empty", "targets": []}]})


def test_grafana_variables_are_substituted_in_every_dashboard_query() -> None:
    for panel in report.dashboard_panels(report.load_dashboard()):
        for target in panel.targets:
            assert "$" not in report.substitute(target.expr), target.expr


def test_substitution_values_and_spellings() -> None:
    expr = (
        'rate(x{instance=~"$instance"}[$__rate_interval]) + y{i=~"${instance}"} + z{i=~"${instance:regex}"}'
    )
    assert report.substitute(expr) == 'rate(x{instance=~".*"}[20s]) + y{i=~".*"} + z{i=~".*"}'
    assert report.substitute("avg_over_time(x[$__interval])") == "avg_over_time(x[5s])"
    # Grafana's rate interval for a 5 s scrape interval: max(interval + scrape, 4 x scrape).
    assert report.GRAFANA_VARIABLES["__rate_interval"] == f"{4 * report.SCRAPE_INTERVAL_S}s"
    with pytest.raises(ValueError, match=r"\$datasource"):
        report.substitute("up{ds=~'$datasource'}")


def test_legends_follow_grafana_legend_format() -> None:
    labels = {"job": "detect-api", "handler": "/detect"}
    assert report.legend_text("{{job}} p99", labels) == "detect-api p99"
    assert report.legend_text("{{ handler }} {{status}}", labels) == "/detect"
    assert report.legend_text("", labels) == "{}"


def test_no_data_reasons() -> None:
    gpu = _panel('gpu_utilization_ratio{instance=~"$instance"}', "DCGM_FI_DEV_GPU_UTIL / 100")
    assert report.no_data_reason(gpu, triton_running=True) == "no data on this machine (no GPU)"
    triton_gpu = _panel('nv_gpu_utilization{job="triton"}')
    assert report.no_data_reason(triton_gpu, triton_running=True) == "no data on this machine (no GPU)"
    triton = _panel('sum by (model) (rate(nv_inference_request_success{job="triton"}[$__rate_interval]))')
    assert "Triton was not started" in report.no_data_reason(triton, triton_running=False)
    assert report.no_data_reason(triton, triton_running=True) == "no data in this run"
    assert report.no_data_reason(_panel("up"), triton_running=False) == "no data in this run"
    # On the real dashboard: exactly the GPU row and Triton's GPU panel need a GPU.
    needing = {p.title for p in report.dashboard_panels(report.load_dashboard()) if report.needs_gpu(p)}
    assert needing == {"GPU utilisation", "GPU memory", "GPU temperature", "GPU power", "Triton GPU"}


# --- Prometheus -------------------------------------------------------------------------------------------------


def test_range_query_answers_are_parsed_with_nan() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"job": "a"}, "values": [[100, "1.5"], [105, "NaN"]]}],
        },
    }
    (series,) = report.parse_matrix(body)
    assert series.labels == {"job": "a"} and series.times == (100.0, 105.0)
    assert series.values[0] == 1.5 and math.isnan(series.values[1])
    assert report.has_values([series])
    assert not report.has_values([report.Series({}, (1.0,), (math.nan,))])
    with pytest.raises(RuntimeError, match="bad_data"):
        report.parse_matrix({"status": "error", "errorType": "bad_data", "error": "parse error"})


def test_the_project_prometheus_config_is_pointed_at_local_targets(tmp_path: Path) -> None:
    config = (report.PROMETHEUS_DIR / "prometheus.yml").read_text()
    targets = {"detect-api": "127.0.0.1:1001", "media-server": "127.0.0.1:1002", "dcgm": "127.0.0.1:1003"}
    local = report.local_prometheus_config(config, targets, tmp_path)
    for compose in report.COMPOSE_TARGETS.values():
        assert compose not in local
    for target in targets.values():
        assert local.count(f'"{target}"') == 1
    assert report.FILE_SD_DIR not in local and f"{tmp_path}/triton*.yml" in local
    # Only the targets change: everything else (rules, intervals, auth) is the project's.
    assert local.replace(str(tmp_path), "").count("\n") == config.count("\n")
    with pytest.raises(ValueError, match="backend:8000"):
        report.local_prometheus_config(config.replace('"backend:8000"', '"api:8000"'), targets, tmp_path)


# --- benchmark tables -------------------------------------------------------------------------------------------


def test_the_speed_figures_come_from_the_engine_section() -> None:
    data = report.speed_data("# Benchmarks\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" + ENGINE_SECTION)
    assert data.machine.startswith("Some CPU, 2 cores") and data.machine.endswith("GPU: none.")
    assert data.run == "2026-12-04"
    assert data.engines == (
        report.EngineSpeed("PyTorch eager FP32", 3053.0, 1.1, 8),
        report.EngineSpeed("ONNX Runtime INT8", 27.2, 64.3, 2),
    )
    assert data.detect == (report.DetectSpeed("default", "onnxruntime fp32", 4, 22.2, 132.3),)


def test_a_missing_section_or_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no section"):
        report.speed_data("# Benchmarks\n")
    without_detect = ENGINE_SECTION.replace("| server |", "| host |")
    with pytest.raises(ValueError, match="no table"):
        report.speed_data(without_detect)


def test_numbers_in_cells() -> None:
    assert report.number("3,053.0") == 3053.0
    assert report.number("**0.98**") == 0.98
    assert report.number("81 ms") == 81.0
    with pytest.raises(ValueError):
        report.number("(source)")


def test_the_repository_benchmarks_have_the_backends_the_chart_draws() -> None:
    data = report.speed_data(report.BENCHMARKS.read_text())
    engines = {e.engine for e in data.engines}
    assert {"PyTorch eager FP32", "ONNX Runtime FP32", "ONNX Runtime INT8"} <= engines
    assert all(e.p50_ms > 0 and e.images_per_s > 0 for e in data.engines)
    assert data.detect and all(d.images_per_s > 0 for d in data.detect)
    assert "cores" in data.machine


# --- what the pictures say --------------------------------------------------------------------------------------


def test_each_panel_picture_is_titled_as_a_render_of_its_query() -> None:
    from tools.report_plots import panel_title

    panel = _panel(title="API p99")
    title = panel_title(panel, ['max(x{job="detect-api"})', "y" * 400])
    assert title.startswith("render of Grafana panel 'API p99': max(x{job=\"detect-api\"}) ; yyy")
    assert title.count("\n") == 2 and title.endswith("…")  # shortened to three lines


def test_values_are_shown_in_the_panel_units() -> None:
    from tools.report_plots import format_value

    assert format_value(0.0123, "s") == "12 ms"
    assert format_value(0.0051, "s") == "5.1 ms"
    assert format_value(1.5, "s") == "1.50 s"
    assert format_value(0.25, "percentunit") == "25%"
    assert format_value(300 * 2**20, "bytes") == "300.0 MiB"
    assert format_value(12.34, "reqps") == "12.3 req/s"
    assert format_value(29.96, "suffix: fps", 1) == "30.0 fps"
    assert format_value(math.nan, "s") == "–"


def test_the_animation_check_sees_motion() -> None:
    from PIL import Image

    from tools.report_plots import frame_motion

    still = Image.new("RGB", (8, 8), (0, 0, 0))
    moved = Image.new("RGB", (8, 8), (255, 255, 255))
    assert frame_motion([still, still.copy()]) == [0.0]
    assert frame_motion([still, moved])[0] > 200
