"""The report's charts (matplotlib, Agg) and its animation (Pillow), from what tools/report.py reads.

Dashboard panels are drawn to resemble Grafana's (a stat is its last value over a sparkline, a time series
has its legend below) but every picture is titled as a render of the panel's query, so that nobody takes it
for a Grafana screenshot: Grafana itself cannot run on these machines.
"""

from __future__ import annotations

import io
import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

from tools.report import Panel, Series, SpeedData, legend_text

matplotlib.rcParams["text.parse_math"] = False  # PromQL's $ and _ are text, not TeX

DPI = 100
MAX_WIDTH_PX = 1200
# Grafana's palette names as the dashboard uses them, and its classic series colours.
COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2", "yellow": "#fade2a"}
SERIES_COLORS = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0")
MAX_LEGEND = 8


def color(name: str) -> str:
    return COLORS.get(name, name)


# --- values and units -----------------------------------------------------------------------------------------


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana shows it for the dashboard's units (s, reqps, bytes, percentunit, ...)."""
    if not math.isfinite(value):
        return "–"
    if unit == "s":
        if abs(value) < 1:
            ms = value * 1e3
            return f"{ms:.{1 if abs(ms) < 10 else 0}f} ms"
        return f"{value:.2f} s"
    if unit == "percentunit":
        return f"{value * 100:.{0 if decimals is None else decimals}f}%"
    if unit == "bytes":
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    text = _plain(value, decimals)
    if unit == "reqps":
        return f"{text} req/s"
    if unit.startswith("suffix:"):
        return f"{text}{unit.split(':', 1)[1].rstrip()}"
    suffixes = {"celsius": " °C", "watt": " W"}
    return text + suffixes.get(unit, "")


def _plain(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{2 if abs(value) < 10 else 1}f}"


# --- panels ---------------------------------------------------------------------------------------------------


def panel_title(panel: Panel, exprs: Sequence[str], width: int = 120, max_lines: int = 3) -> str:
    """`render of Grafana panel '<title>': <expr>; <expr>`, wrapped and cut to `max_lines`."""
    text = f"render of Grafana panel '{panel.title}': " + " ; ".join(" ".join(e.split()) for e in exprs)
    lines = textwrap.wrap(text, width)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], textwrap.shorten(lines[max_lines - 1], width - 2) + " …"]
    return "\n".join(lines)


def _draw_no_data(ax: Axes, reason: str, fontsize: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color("#cccccc")
    ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=fontsize,
            color="#555555", wrap=True)  # fmt: skip


def _labelled(panel: Panel, results: Sequence[Sequence[Series]]) -> list[tuple[str, Series]]:
    return [
        (legend_text(t.legend, s.labels), s)
        for t, series in zip(panel.targets, results, strict=True)
        for s in series
    ]


def draw_panel(
    ax: Axes,
    panel: Panel,
    results: Sequence[Sequence[Series]],
    no_data: str | None,
    window: tuple[float, float],
    *,
    small: bool = False,
) -> None:
    """One panel on `ax`: `results` holds each target's series (substituted query, query_range) over
    `window` (Unix seconds), the time range every panel shows, as on one Grafana dashboard."""
    fontsize = 6.5 if small else 9
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if no_data is not None:
        _draw_no_data(ax, no_data, fontsize + 1)
        return
    series = _labelled(panel, results)
    if panel.kind == "stat":
        _draw_stat(ax, panel, series, fontsize, small)
    else:
        # Grafana lays a panel's legend out in the panel's width: fewer columns in narrow panels.
        columns = max(2, min(4, panel.grid[2] // 3)) if small else 4
        shown = 3 * columns - 1 if small else MAX_LEGEND
        _draw_timeseries(ax, panel, series, fontsize, window, columns, shown)


def _times(s: Series) -> list[float]:
    """Matplotlib's date numbers, in local time as Grafana shows it."""
    return [_date(t) for t in s.times]


def _date(t: float) -> float:
    return float(mdates.date2num(datetime.fromtimestamp(t)))


def _draw_timeseries(
    ax: Axes,
    panel: Panel,
    series: list[tuple[str, Series]],
    fontsize: float,
    window: tuple[float, float],
    columns: int,
    shown: int,
) -> None:
    for i, (label, s) in enumerate(series):
        ax.plot(_times(s), s.values, lw=1.2, color=SERIES_COLORS[i % len(SERIES_COLORS)],
                label=label if i < shown else None)  # fmt: skip
    ax.set_xlim(_date(window[0]), _date(window[1]))
    bottom, top = ax.get_ylim()
    ax.set_ylim(
        bottom=panel.min if panel.min is not None else bottom, top=panel.max if panel.max is not None else top
    )
    low, high = ax.get_ylim()
    # Grafana's threshold lines, where they fall inside the data's range.
    for value, name in panel.thresholds:
        if low < value < high:
            ax.axhline(value, color=color(name), lw=0.8, ls="--")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, panel.unit, panel.decimals)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    ax.tick_params(labelsize=fontsize - 1)
    ax.grid(True, lw=0.4, alpha=0.5)
    more = len(series) - shown
    handles, labels = ax.get_legend_handles_labels()
    if more > 0:
        handles.append(plt.Line2D([], [], lw=0))
        labels.append(f"+{more} more series")
    ax.legend(handles, labels, fontsize=fontsize - 1, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(columns, len(labels)), frameon=False)  # fmt: skip


def _last(values: Sequence[float]) -> float:
    return next((v for v in reversed(values) if math.isfinite(v)), math.nan)


def _stat_color(panel: Panel, value: float) -> str:
    name = panel.base_color
    for threshold, step in panel.thresholds:
        if value >= threshold:
            name = step
    return color(name)


def _draw_stat(
    ax: Axes, panel: Panel, series: list[tuple[str, Series]], fontsize: float, small: bool
) -> None:
    """Grafana's stat: the last non-null value per series (reduceOptions lastNotNull) over its sparkline."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.spines["bottom"].set_visible(False)
    n = len(series)
    peak = max((v for _, s in series for v in s.values if math.isfinite(v)), default=1.0) or 1.0
    value_size = fontsize * (2.0 if small else 2.4) * (1 if n == 1 else 0.8)
    for i, (label, s) in enumerate(series):
        value = _last(s.values)
        c = _stat_color(panel, value)
        x0, width = i / n, 1 / n
        # The sparkline: each series in its own slot, scaled to the panel's largest value.
        xs = [x0 + width * (t - s.times[0]) / max(s.times[-1] - s.times[0], 1e-9) for t in s.times]
        ys = [0.45 * v / peak if math.isfinite(v) else math.nan for v in s.values]
        ax.fill_between(xs, ys, color=c, alpha=0.25, lw=0, transform=ax.transAxes)
        ax.plot(xs, ys, color=c, lw=1, transform=ax.transAxes)
        text = panel.mappings.get(f"{value:g}") or format_value(value, panel.unit, panel.decimals)
        ax.text(x0 + width / 2, 0.55, text, ha="center", va="center", transform=ax.transAxes,
                fontsize=value_size, color=c, weight="bold")  # fmt: skip
        if n > 1 or not small:
            ax.text(x0 + width / 2, 1.0, label, ha="center", va="top", transform=ax.transAxes,
                    fontsize=fontsize - (1.5 if small else 0), color="#444444")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def _footer(variables: Mapping[str, str], step_s: float) -> str:
    subs = ", ".join(f"${k} = {v}" for k, v in variables.items())
    return (
        f"matplotlib render of Prometheus query_range (step {step_s:g} s) from a real Prometheus that scraped the "
        f"running servers; Grafana variables substituted: {subs}"
    )


def save(fig: Figure, path: Path) -> Path:
    """A PNG no wider than MAX_WIDTH_PX, palette-quantised when that loses nothing visible (charts)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    return optimise_png(Image.open(buffer), path)


def optimise_png(
    image: Image.Image, path: Path, *, max_width: int = MAX_WIDTH_PX, palette: bool = True
) -> Path:
    image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize(
            (max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS
        )
    if palette:  # charts have few colours; screenshots with photos keep full colour
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def render_panel(
    panel: Panel,
    exprs: Sequence[str],
    results: Sequence[Sequence[Series]],
    no_data: str | None,
    path: Path,
    window: tuple[float, float],
    variables: Mapping[str, str],
    step_s: float,
) -> Path:
    """One panel as its own picture: `exprs` are the substituted queries that produced `results`."""
    fig = plt.figure(figsize=(10, 4.8 if panel.kind == "timeseries" else 3.6))
    title = panel_title(panel, exprs)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left", y=0.985, va="top")
    top = 1 - 0.055 * (title.count("\n") + 1) - 0.04
    bottom = 0.27 if panel.kind == "timeseries" else 0.09
    ax = fig.add_axes((0.09, bottom, 0.88, top - bottom))
    draw_panel(ax, panel, results, no_data, window)
    fig.text(0.01, 0.01, textwrap.fill(_footer(variables, step_s), 170), fontsize=6.5, color="#666666")
    return save(fig, path)


def render_dashboard(
    title: str,
    panels: Sequence[Panel],
    results: Mapping[int, Sequence[Sequence[Series]]],
    no_data: Mapping[int, str | None],
    path: Path,
    window: tuple[float, float],
    variables: Mapping[str, str],
    step_s: float,
    subtitle: str = "",
) -> Path:
    """Every panel on one figure, placed by its gridPos (24 columns) under its row's title, as Grafana lays
    the dashboard out."""
    width_in = MAX_WIDTH_PX / DPI
    unit_in = width_in / 24 / 2.6  # a grid row is about 2.6 times lower than a column is wide
    header_in, row_title_in = 0.75, 0.28
    rows = sorted({p.row for p in panels}, key=lambda r: min(p.grid[1] for p in panels if p.row == r))
    # Grafana's y counts row headers as one unit each; here each row header gets row_title_in instead.
    cursor = header_in
    layout: list[tuple[Panel, float]] = []
    for row in rows:
        members = [p for p in panels if p.row == row]
        y0 = min(p.grid[1] for p in members)
        cursor += row_title_in
        for p in members:
            layout.append((p, cursor + (p.grid[1] - y0) * unit_in))
        cursor += max(p.grid[1] + p.grid[3] - y0 for p in members) * unit_in
    height_in = cursor + 0.35
    fig = plt.figure(figsize=(width_in, height_in))
    fig.text(0.01, 1 - 0.12 / height_in, f"render of Grafana dashboard '{title}': every panel's query",
             fontsize=11, weight="bold", va="top")  # fmt: skip
    if subtitle:
        fig.text(0.01, 1 - 0.42 / height_in, subtitle, fontsize=7.5, va="top", color="#444444")
    for row in rows:
        first = min((y for p, y in layout if p.row == row), default=0.0)
        fig.text(
            0.01, 1 - (first - 0.2) / height_in, row or "(no row)", fontsize=9, weight="bold", va="bottom"
        )
    pad_x, pad_top, pad_bottom = 0.08, 0.22, 0.1
    for p, y in layout:
        x, _, w, h = p.grid
        timeseries = p.kind == "timeseries" and no_data.get(p.id) is None
        # Room for the y axis's labels (with units) on the left, and for the last time label on the right.
        left = (x / 24 * width_in + pad_x + (0.62 if timeseries else 0)) / width_in
        right = ((x + w) / 24 * width_in - pad_x - (0.15 if timeseries else 0)) / width_in
        legend_in = 0.36 if timeseries else 0
        top_in = y + pad_top
        bottom_in = y + h * unit_in - pad_bottom - legend_in - (0.12 if timeseries else 0)
        ax = fig.add_axes((left, 1 - bottom_in / height_in, right - left, (bottom_in - top_in) / height_in))
        ax.set_title(p.title, fontsize=7.5, loc="left", pad=3)
        draw_panel(ax, p, results.get(p.id, []), no_data.get(p.id), window, small=True)
    fig.text(0.01, 0.1 / height_in, _footer(variables, step_s), fontsize=6, color="#666666")
    return save(fig, path)


# --- the speed chart ----------------------------------------------------------------------------------------------


def _engine_color(engine: str) -> str:
    for key, c in (
        ("PyTorch", "#b877d9"),
        ("ONNX Runtime", "#5794f2"),
        ("OpenVINO", "#73bf69"),
        ("TensorRT", "#ff9830"),
    ):
        if engine.startswith(key):
            return c
    return "#888888"


def render_speed(data: SpeedData, path: Path, source: str) -> Path:
    """Bars per backend and precision: batch-1 latency (log scale: PyTorch eager is far slower), throughput
    at the best batch, and POST /detect end to end per server configuration and concurrency."""
    fig, axes = plt.subplots(
        1, 3, figsize=(12, 5.0), gridspec_kw={"width_ratios": [1, 0.8, 1]}, layout="constrained"
    )
    names = [e.engine for e in data.engines]
    colors = [_engine_color(n) for n in names]
    ys = list(range(len(names)))[::-1]

    ax = axes[0]
    ax.barh(ys, [e.p50_ms for e in data.engines], color=colors)
    ax.set_xscale("log")
    # Plain numbers: the log axis's default labels are TeX, which parse_math=False would print raw.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_title("engine latency, batch 1 (lower is better)", fontsize=9, loc="left")
    ax.set_xlabel("p50 ms, log scale", fontsize=8)
    for y, e in zip(ys, data.engines, strict=True):
        ax.text(e.p50_ms * 1.08, y, f"{e.p50_ms:g} ms", va="center", fontsize=7.5)
    ax.set_xlim(left=10, right=max(e.p50_ms for e in data.engines) * 8)

    ax = axes[1]
    ax.barh(ys, [e.images_per_s for e in data.engines], color=colors)
    ax.set_yticks(ys, [""] * len(ys))
    ax.set_title("engine throughput (higher is better)", fontsize=9, loc="left")
    ax.set_xlabel("images/s at the best batch", fontsize=8)
    for y, e in zip(ys, data.engines, strict=True):
        ax.text(e.images_per_s, y, f" {e.images_per_s:g} (batch {e.best_batch})", va="center", fontsize=7.5)
    ax.set_xlim(right=max(e.images_per_s for e in data.engines) * 1.6)

    ax = axes[2]
    labels = [f"{d.server}: {d.engine}\nconcurrency {d.concurrency}" for d in data.detect]
    dys = list(range(len(labels)))[::-1]
    dcolors = ["#3274d9" if "int8" in d.engine else "#8ab8ff" for d in data.detect]
    ax.barh(dys, [d.images_per_s for d in data.detect], color=dcolors)
    ax.set_yticks(dys, labels, fontsize=7.5)
    ax.set_title("POST /detect end to end (higher is better)", fontsize=9, loc="left")
    ax.set_xlabel("images/s (p50 latency in brackets)", fontsize=8)
    for y, d in zip(dys, data.detect, strict=True):
        ax.text(d.images_per_s, y, f" {d.images_per_s:g} ({d.p50_ms:g} ms)", va="center", fontsize=7.5)
    ax.set_xlim(right=max(d.images_per_s for d in data.detect) * 1.5)

    for ax in axes:
        ax.tick_params(labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    title = "NanoDet-g per backend and precision, and POST /detect end to end"
    machine = textwrap.fill(f"Machine: {data.machine}", 160)
    run = f" (run {data.run})" if data.run else ""
    fig.suptitle(f"{title}\n{machine}\nFrom {source}{run}", fontsize=9, x=0.01, ha="left")
    return save(fig, path)


# --- the animation ----------------------------------------------------------------------------------------------


def write_webp(
    frames: Sequence[Image.Image], durations_ms: Sequence[int], path: Path, *, quality: int = 60
) -> Path:
    """An animated WebP (lossy, looping) of `frames`, each shown for its duration."""
    if len(frames) < 2:
        raise ValueError("an animation needs at least two frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [f.convert("RGB") for f in frames]
    first.save(path, format="WEBP", save_all=True, append_images=rest, duration=list(durations_ms), loop=0,
               quality=quality, method=4)  # fmt: skip
    return path


def frame_motion(frames: Sequence[Image.Image]) -> list[float]:
    """Mean absolute difference (0-255) between consecutive frames: the animation moves where these are > 0."""
    import numpy as np

    arrays = [np.asarray(f.convert("L"), dtype=np.float32) for f in frames]
    return [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(arrays)]


def figure_size_px(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        size: Any = image.size
    return int(size[0]), int(size[1])
