"""The report's data, without the servers: the dashboard's panels and their queries, Grafana's variables
substituted, Prometheus range queries, the project's Prometheus configuration pointed at local servers, and
the benchmark tables read back from docs/benchmarks.md.

scripts/report.py drives the system and calls these; tools/report_plots.py draws what they return. Kept
apart so that the parts that decide what a picture claims (which query, which numbers) are unit-tested.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "observability" / "grafana" / "dashboards" / "rtdetect.json"
PROMETHEUS_DIR = ROOT / "observability" / "prometheus"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

# What the renders substitute for Grafana's variables. The data source scrapes every 5 s (its timeInterval):
# for a few minutes on a panel Grafana's $__interval is clamped to that 5 s, and $__rate_interval is
# max($__interval + scrape interval, 4 x scrape interval) = 20 s. "All" instances is the variable's allValue.
SCRAPE_INTERVAL_S = 5
GRAFANA_VARIABLES: Mapping[str, str] = {
    "__interval": f"{SCRAPE_INTERVAL_S}s",
    "__rate_interval": f"{4 * SCRAPE_INTERVAL_S}s",
    "instance": ".*",
}
# $name, ${name} and ${name:format} (Grafana's three spellings; [[name]] is deprecated and not used here).
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

# The Compose service names prometheus.yml scrapes, by job, and where its file-discovered targets live.
COMPOSE_TARGETS: Mapping[str, str] = {
    "detect-api": "backend:8000",
    "media-server": "media-server:8080",
    "dcgm": "dcgm-exporter:9400",
}
FILE_SD_DIR = "/etc/prometheus-targets"

# Series only a GPU produces: the servers' NVML gauges, dcgm-exporter's and Triton's GPU metrics.
_GPU_METRIC = re.compile(r"\b(gpu_\w+|DCGM_\w+|nv_gpu_\w+)")
_TRITON_METRIC = re.compile(r"\bnv_inference_\w+")


# --- the dashboard ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    expr: str  # as written in the dashboard, Grafana variables included
    legend: str  # legendFormat: "{{job}} p99"


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    kind: str  # "timeseries" or "stat"
    row: str  # the title of the row above it ("" before the first row)
    grid: tuple[int, int, int, int]  # Grafana's gridPos: x, y, w, h (24 columns)
    unit: str
    targets: tuple[Target, ...]
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, colour) above the base colour
    base_color: str = "green"
    mappings: Mapping[str, str] = field(default_factory=dict)  # value -> text (stat panels)
    slug: str = ""  # the picture's name part: unique in the dashboard (dashboard_panels sets it)


def slugify(title: str) -> str:
    """A file-name part from a panel title: "POST /detect p99" -> "post-detect-p99"."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if not slug:
        raise ValueError(f"no slug for panel title {title!r}")
    return slug


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dashboard_panels(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Every panel that queries, in the dashboard's order, with its row; panels inside collapsed rows too."""
    panels: list[Panel] = []
    row = ""

    def add(p: Mapping[str, Any]) -> None:
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        steps = defaults.get("thresholds", {}).get("steps", [])
        base = next((s["color"] for s in steps if s.get("value") is None), "green")
        mappings: dict[str, str] = {}
        for m in defaults.get("mappings", []):
            if m.get("type") == "value":
                mappings.update({k: v.get("text", k) for k, v in m.get("options", {}).items()})
        grid = p.get("gridPos", {})
        targets = tuple(
            Target(t["expr"], t.get("legendFormat", "")) for t in p.get("targets", []) if t.get("expr")
        )
        if not targets:
            raise ValueError(f"panel {p.get('title')!r} has no query")
        panels.append(
            Panel(
                id=int(p["id"]),
                title=str(p["title"]),
                kind=str(p["type"]),
                row=row,
                grid=(grid.get("x", 0), grid.get("y", 0), grid.get("w", 12), grid.get("h", 8)),
                unit=str(defaults.get("unit", "none")),
                targets=targets,
                min=defaults.get("min"),
                max=defaults.get("max"),
                decimals=defaults.get("decimals"),
                thresholds=tuple(
                    (float(s["value"]), s["color"]) for s in steps if s.get("value") is not None
                ),
                base_color=base,
                mappings=mappings,
            )
        )

    for p in dashboard["panels"]:
        if p["type"] == "row":
            row = str(p.get("title", ""))
            for nested in p.get("panels", []):  # a collapsed row holds its panels
                add(nested)
        else:
            add(p)
    return unique_slugs(panels)


def unique_slugs(panels: Sequence[Panel]) -> list[Panel]:
    """Each panel with its slug: from the title, and where two panels share a title (a stat and a time
    series of one quantity), from the title and the panel's kind; the panel id as a last resort."""
    titles = [slugify(p.title) for p in panels]
    slugs = [t if titles.count(t) == 1 else f"{t}-{p.kind}" for t, p in zip(titles, panels, strict=True)]
    slugs = [s if slugs.count(s) == 1 else f"{s}-{p.id}" for s, p in zip(slugs, panels, strict=True)]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"panels with one file name: {sorted(s for s in slugs if slugs.count(s) > 1)}")
    return [replace(p, slug=s) for p, s in zip(panels, slugs, strict=True)]


def substitute(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """The query as Grafana sends it, with `variables` in place; an unknown variable is an error (a render
    of a query Grafana would never send is worse than none)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise ValueError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def legend_text(legend: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} (spaces allowed inside the braces); a missing label is empty."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend)
    return " ".join(text.split()) or "{}"


def needs_gpu(panel: Panel) -> bool:
    return all(_GPU_METRIC.search(t.expr) for t in panel.targets)


def reads_triton(panel: Panel) -> bool:
    return all(_TRITON_METRIC.search(t.expr) or _GPU_METRIC.search(t.expr) for t in panel.targets) and any(
        "triton" in t.expr for t in panel.targets
    )


def no_data_reason(panel: Panel, *, triton_running: bool) -> str:
    """What an empty panel says instead of an empty axis."""
    if needs_gpu(panel):
        return "no data on this machine (no GPU)"
    if reads_triton(panel) and not triton_running:
        return "no data: Triton was not started in this run (python -m tools.triton install)"
    return "no data in this run"


# --- Prometheus -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    times: tuple[float, ...]  # Unix seconds
    values: tuple[float, ...]  # NaN where Prometheus returned NaN


def parse_matrix(body: Mapping[str, Any]) -> list[Series]:
    """A /api/v1/query_range answer as series; an error answer raises."""
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] != "matrix":
        raise RuntimeError(f"expected a matrix, got {data['resultType']}")
    return [
        Series(
            dict(r["metric"]),
            tuple(float(t) for t, _ in r["values"]),
            tuple(float(v) for _, v in r["values"]),  # float() reads "NaN" and "+Inf"
        )
        for r in data["result"]
    ]


def query_range(url: str, expr: str, start: float, end: float, step_s: float) -> list[Series]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query_range?{query}", timeout=30) as resp:
        return parse_matrix(json.loads(resp.read()))


def has_values(series: Sequence[Series]) -> bool:
    return any(math.isfinite(v) for s in series for v in s.values)


def local_prometheus_config(config: str, targets: Mapping[str, str], file_sd_dir: Path) -> str:
    """The project's prometheus.yml with only its targets rewritten: each Compose target (COMPOSE_TARGETS,
    by job) to `targets[job]`, and the file-discovery folder to `file_sd_dir`. Each must occur exactly once
    per target, so that a changed config fails here rather than scraping nothing."""
    for job, compose in COMPOSE_TARGETS.items():
        quoted = f'"{compose}"'
        if config.count(quoted) != 1:
            raise ValueError(f"target {compose} of job {job} is not in the config exactly once")
        config = config.replace(quoted, f'"{targets[job]}"')
    if FILE_SD_DIR not in config:
        raise ValueError(f"{FILE_SD_DIR} is not in the config")
    return config.replace(FILE_SD_DIR, str(file_sd_dir))


# --- benchmark tables -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def column(self, name: str) -> int:
        try:
            return self.header.index(name)
        except ValueError:
            raise KeyError(f"no column {name!r} in {self.header}") from None


def section(markdown: str, name: str) -> str:
    """The text between `<!-- name:start -->` and `<!-- name:end -->` (a benchmark's own section)."""
    m = re.search(
        rf"<!--\s*{re.escape(name)}:start\s*-->(.*?)<!--\s*{re.escape(name)}:end\s*-->", markdown, re.S
    )
    if m is None:
        raise ValueError(f"no section {name!r}")
    return m.group(1)


def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))


def tables(markdown: str) -> list[Table]:
    """Every pipe table: a header line, a |---| line, then rows until a line that is not a table row."""
    lines = markdown.splitlines()
    out: list[Table] = []
    i = 0
    while i + 1 < len(lines):
        if lines[i].lstrip().startswith("|") and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1]):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(Table(header, tuple(rows)))
        else:
            i += 1
    return out


def table_with(markdown: str, *columns: str) -> Table:
    """The first table that has all `columns`."""
    for t in tables(markdown):
        if all(c in t.header for c in columns):
            return t
    raise ValueError(f"no table with columns {columns}")


def number(cell: str) -> float:
    """A figure from a cell: "3,053.0", "**0.98**", "81 ms" -> its number."""
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    if m is None:
        raise ValueError(f"no number in {cell!r}")
    return float(m.group(0).replace(",", ""))


@dataclass(frozen=True)
class EngineSpeed:
    engine: str  # "ONNX Runtime INT8"
    p50_ms: float  # batch 1
    images_per_s: float  # at the best batch
    best_batch: int


@dataclass(frozen=True)
class DetectSpeed:
    server: str  # default, batching, auto
    engine: str  # "onnxruntime int8"
    concurrency: int
    images_per_s: float
    p50_ms: float


@dataclass(frozen=True)
class SpeedData:
    machine: str  # the section's "Machine: ..." sentence
    run: str  # its "Run: <date>" note, shortened
    engines: tuple[EngineSpeed, ...]
    detect: tuple[DetectSpeed, ...]


ENGINE_SECTION = "engine_build.bench"


def speed_data(markdown: str) -> SpeedData:
    """The engine and /detect figures of `python -m engine_build bench`'s section of docs/benchmarks.md."""
    text = section(markdown, ENGINE_SECTION)
    machine = re.search(r"^Machine:\s*(.+?)(?:\s+Model:.*)?$", text, re.M)
    if machine is None:
        raise ValueError(f"no 'Machine:' line in section {ENGINE_SECTION}")
    run = re.search(r"^Run:\s*([^;.\n]+)", text, re.M)
    engines_table = table_with(text, "engine", "p50 ms (batch 1)", "images/s at best batch", "best batch")
    e = [
        engines_table.column(c)
        for c in ("engine", "p50 ms (batch 1)", "images/s at best batch", "best batch")
    ]
    engines = tuple(
        EngineSpeed(r[e[0]], number(r[e[1]]), number(r[e[2]]), int(number(r[e[3]])))
        for r in engines_table.rows
    )
    detect_table = table_with(text, "server", "engine", "concurrency", "/detect images/s", "p50 ms")
    d = [detect_table.column(c) for c in ("server", "engine", "concurrency", "/detect images/s", "p50 ms")]
    detect = tuple(
        DetectSpeed(r[d[0]], r[d[1]], int(number(r[d[2]])), number(r[d[3]]), number(r[d[4]]))
        for r in detect_table.rows
    )
    if not engines or not detect:
        raise ValueError(f"empty speed tables in section {ENGINE_SECTION}")
    return SpeedData(machine.group(1).strip(), run.group(1).strip() if run else "", engines, detect)
