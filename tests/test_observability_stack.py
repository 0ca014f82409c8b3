"""The observability stack against the real thing.

Fast checks: promtool validates the Prometheus configuration and rules (and runs the rules' unit tests),
and the Grafana dashboard JSON has what Grafana needs (unique panel ids, the provisioned data source, a
schema version it understands, a unit, legend and query on every panel).

The stack test starts the real detect API and the real media server (subprocesses, real model) and a real
Prometheus (Debian's binary, on loopback) loaded with the project's prometheus.yml with only the scrape
targets rewritten; drives real load (POST /detect with a real photo and one live aiortc peer); and then
evaluates every query of every dashboard panel, every recording rule and the alert rules through
Prometheus's HTTP API. Without a GPU the GPU queries must come back as valid empty results.

The project's 5 s scrape interval is kept (only targets are rewritten): the stack test needs two scrapes
under load before rates exist, so it takes about half a minute after the servers are up.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detect_api.client import AsyncDetectClient, DetectError
from observability.gpu import GpuSampler
from rtc.ice import HostAddressOverride
from tools.servers import free_port
from tools.synthetic import SyntheticPeer

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "observability" / "prometheus"
GRAFANA_DIR = ROOT / "observability" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "rtdetect.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "rtdetect.yml"
RULE_FILES = ("recording_rules.yml", "alert_rules.yml")
LOOPBACK = "127.0.0.1"

# The scrape targets in prometheus.yml (Compose service names), by job.
TARGETS = {"detect-api": "backend:8000", "media-server": "media-server:8080", "dcgm": "dcgm-exporter:9400"}
SERVER_JOBS = ("detect-api", "media-server")
# What the test substitutes for Grafana's variables: every instance, and a window of twelve 5 s scrapes.
INSTANCE_ALL = ".*"
RATE_WINDOW = "1m"
# Grafana versions this dashboard targets: 10.x (36-38) to 12.x (41); docker-compose.yml runs 12.2.
SCHEMA_VERSIONS = range(36, 42)
GRID_WIDTH = 24

STACK_TIMEOUT_S = 150.0  # servers up, two scrapes and rule evaluations under load: typically 15-20 s


# --- helpers ---------------------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `make setup` installs Debian's prometheus package (apt)")
    return path


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus not found: `make setup` installs Debian's prometheus package (apt)")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and panels nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _all_panels(dashboard) if p["type"] != "row"]


def _yaml_scalar(text: str, key: str) -> list[str]:
    """Values of `key: value` lines in a small YAML file. (PyYAML is not a project dependency; these
    provisioning files are flat enough for this, and Grafana itself parses them in production.)"""
    return [
        m.group(1).strip().strip("\"'") for m in re.finditer(rf"^\s*-?\s*{key}:\s*(\S.*?)\s*$", text, re.M)
    ]


def _substitute(expr: str) -> str:
    """A panel query as Grafana sends it with "All" instances selected and a 1 m rate window."""
    for variable in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(variable, RATE_WINDOW)
    expr = expr.replace("${instance}", INSTANCE_ALL).replace("$instance", INSTANCE_ALL)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def _is_dcgm(expr: str) -> bool:
    """Series of the optional exporters with targets of their own: dcgm-exporter, and Triton (nv_*) in the
    compose `scale` profile. Neither runs in this test, so their queries only have to be valid."""
    return "DCGM_" in expr or re.search(r"\bnv_(inference|gpu)_", expr) is not None


def _is_nvml_gpu(expr: str) -> bool:
    return re.search(r"\bgpu_\w+", expr) is not None or "instance_gpu:" in expr


def _recorded_names() -> list[str]:
    text = (PROMETHEUS_DIR / "recording_rules.yml").read_text()
    return re.findall(r"^\s*-\s*record:\s*(\S+)\s*$", text, re.M)


def _alert_names() -> list[str]:
    text = (PROMETHEUS_DIR / "alert_rules.yml").read_text()
    return re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", text, re.M)


def _has_gpu() -> bool:
    """Whether the servers' NVML sampler sees a GPU here (the same code path the detect API runs)."""
    sampler = GpuSampler(CollectorRegistry(), interval_s=60)
    try:
        return sampler.start()
    finally:
        sampler.stop()


# --- fast checks: promtool and the dashboard's structure --------------------------------------------------


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = _promtool()
    out = _run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in out, out
    _run([promtool, "check", "rules", *RULE_FILES], cwd=PROMETHEUS_DIR)


def test_rule_unit_tests_pass() -> None:
    """rules_test.yml: each alert fires on synthetic series that should fire it, and not on others."""
    out = _run([_promtool(), "test", "rules", "rules_test.yml"], cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in out, out


def test_prometheus_config_scrapes_both_servers_and_dcgm() -> None:
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    # Triton's job has no static target: its target file comes with the compose `scale` profile.
    assert sorted(_yaml_scalar(text, "job_name")) == sorted([*TARGETS, "triton"])
    for target in TARGETS.values():
        assert text.count(f'"{target}"') == 1, target
    assert _yaml_scalar(text, "scrape_interval") == ["5s"]
    # Grafana's $__rate_interval is computed from the data source's scrape interval: keep them equal.
    assert _yaml_scalar(DATASOURCES.read_text(), "timeInterval") == ["5s"]


def test_dashboard_json_is_up_to_date_with_its_generator() -> None:
    _run([sys.executable, str(ROOT / "scripts" / "build_dashboard.py"), "--check"])


def test_grafana_provisioning_matches_the_dashboard() -> None:
    datasources = DATASOURCES.read_text()
    assert _yaml_scalar(datasources, "type") == ["prometheus"]
    uids = _yaml_scalar(datasources, "uid")
    assert uids == ["prometheus"]
    assert _yaml_scalar(datasources, "url") == ["http://prometheus:9090"]

    providers = DASHBOARD_PROVIDERS.read_text()
    assert _yaml_scalar(providers, "type") == ["file"]
    (path,) = _yaml_scalar(providers, "path")
    compose = ROOT / "docker-compose.yml"
    if compose.is_file():  # the provider's folder is where Compose mounts the dashboards
        assert f"./observability/grafana/dashboards:{path}" in compose.read_text()

    dashboard = _dashboard()
    expected = {"type": "prometheus", "uid": uids[0]}
    refs = [("templating " + v["name"], v["datasource"]) for v in dashboard["templating"]["list"]]
    for panel in _query_panels(dashboard):
        refs.append((f"panel {panel['id']}", panel["datasource"]))
        refs += [(f"panel {panel['id']} target {t['refId']}", t["datasource"]) for t in panel["targets"]]
    for where, ref in refs:
        assert ref == expected, f"{where}: data source {ref}, provisioning defines {expected}"


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "rtdetect" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] in SCHEMA_VERSIONS

    panels = _all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)

    # Grid: inside the 24 columns, no two panels overlapping.
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= GRID_WIDTH, (p["title"], g)
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax1, ay1, ax2, ay2) in enumerate(boxes):
        for b, bx1, by1, bx2, by2 in boxes[i + 1 :]:
            assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1, f"{a!r} overlaps {b!r}"

    # The instance variable, fed from `up`, with an "All" that matches every instance.
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert variable["type"] == "query" and variable["includeAll"] and variable["allValue"] == INSTANCE_ALL
    assert variable["definition"] == variable["query"] == "label_values(up, instance)"

    for panel in _query_panels(dashboard):
        title = panel["title"]
        assert panel["type"] in {"timeseries", "stat"}, title
        assert panel["targets"], f"{title}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title}: no unit"
        assert defaults["thresholds"]["steps"][0]["value"] is None, f"{title}: thresholds need a base step"
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"], f"{title}: legend hidden"
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.strip(), title
            assert target.get("legendFormat"), f"{title} {target['refId']}: no legend"
            # dcgm-exporter's series come from their own target: the server instance filter does not apply.
            if not _is_dcgm(expr):
                assert "$instance" in expr, f"{title}: {expr} ignores the instance variable"
        assert panel.get("description"), f"{title}: no description"

    # What the issue asks the dashboard to show, by the metric each needs.
    exprs = " ".join(t["expr"] for p in _query_panels(dashboard) for t in p["targets"])
    for metric in (
        "http_requests",
        "http_request_duration_seconds",
        "inference_latency_seconds:mean",
        "inference_latency_seconds:p99",
        "gpu_utilization_ratio",
        "DCGM_FI_DEV_GPU_UTIL",
        "gpu_memory_used_bytes",
        "DCGM_FI_DEV_FB_USED",
        "rtdetect_live_frames_in",
        "rtdetect_live_frames_out",
        "rtdetect_live_frames_dropped",
        "rtdetect_live_active_peers",
        "inference_batch_size",
        "rtdetect_live_detection_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in exprs, f"no panel shows {metric}"

    # Every recorded series the dashboard reads is defined by the recording rules.
    recorded = set(_recorded_names())
    used = set(re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", exprs))
    assert used <= recorded, f"dashboard reads undefined recorded series {sorted(used - recorded)}"


# --- the stack: real servers, real Prometheus, real load --------------------------------------------------


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return f"--- {self.name} log ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    return Process(name, proc, log)


def _wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    processes: list[Process],
    poll_s: float = 0.5,
    explain: Callable[[], str] = str,
) -> None:
    """Poll `predicate` until it holds; on timeout fail with `what`, `explain()` and the processes' logs."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for p in processes:
            if p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited with {p.proc.returncode} while waiting for {what}\n{p.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(p.tail() for p in processes)
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{explain()}\n{logs}")
        time.sleep(poll_s)  # polling with a deadline, not a blind wait


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# The media server through its app factory (its contract), as the UI tests start it.
MEDIA_SERVER_LAUNCHER = """
import logging
from aiohttp import web
from media_server.app import create_app
from media_server.settings import Settings
settings = Settings()
logging.basicConfig(level=settings.log_level)
web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)
"""


@dataclass
class Load:
    """Real traffic from a background thread with its own event loop: one live peer, and POST /detect
    with a real photo (plus a health check and one unsupported upload, so routes and statuses vary), and
    the same over gRPC (Detect, and one bad image)."""

    api_url: str
    media_url: str
    photo_bgr: np.ndarray
    grpc_target: str
    fps: float = 10.0
    detect_every_s: float = 0.25
    error: BaseException | None = None
    peer_connected: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="observability-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the load generator failed: {self.error!r}") from self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported to the test by check()
            self.error = e

    async def _run(self) -> None:
        ok, jpeg = cv2.imencode(".jpg", self.photo_bgr)
        assert ok
        # aioice leaves loopback out of its host candidates; the server offers 127.0.0.1, so must we.
        addresses = HostAddressOverride([LOOPBACK])
        addresses.install()
        try:
            async with aiohttp.ClientSession() as http:
                peer = SyntheticPeer(self.media_url, self.photo_bgr, fps=self.fps)
                try:
                    await peer.connect(http)
                    await peer.wait_for_frames(5, limit_s=30)
                    self.peer_connected.set()
                    await self._requests(http, jpeg.tobytes())
                finally:
                    await peer.close()
        finally:
            addresses.uninstall()

    async def _requests(self, http: aiohttp.ClientSession, jpeg: bytes) -> None:
        form = aiohttp.FormData()
        form.add_field("file", b"not an image", filename="notes.txt", content_type="text/plain")
        async with http.post(f"{self.api_url}/detect", data=form) as resp:
            assert resp.status in (400, 415), resp.status
        async with AsyncDetectClient(self.grpc_target) as grpc_client:
            try:
                await grpc_client.detect(b"not an image")
                raise AssertionError("gRPC Detect accepted a bad image")
            except DetectError as e:
                assert e.error == "invalid_image", e
            while not self._stop.is_set():
                response = await grpc_client.detect(jpeg)
                assert any(d.label == "person" for d in response.detections), response
                await self._rest_round(http, jpeg)

    async def _rest_round(self, http: aiohttp.ClientSession, jpeg: bytes) -> None:
        form = aiohttp.FormData()
        form.add_field("file", jpeg, filename="astronaut.jpg", content_type="image/jpeg")
        async with http.post(f"{self.api_url}/detect", data=form) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            body = await resp.json()
            assert any(d["label"] == "person" for d in body["detections"]), body
        async with http.get(f"{self.api_url}/healthz") as resp:
            assert resp.status == 200
        await asyncio.sleep(self.detect_every_s)  # request pacing, not a wait for a condition


@dataclass
class Stack:
    prometheus_url: str
    api_url: str
    media_url: str
    has_gpu: bool
    load: Load
    processes: list[Process]

    def query(self, expr: str) -> dict[str, Any]:
        resp = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {resp.status_code} {body}"
        return body["data"]

    def api(self, path: str) -> Any:
        resp = httpx.get(f"{self.prometheus_url}/api/v1/{path}", timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{path}: {body}"
        return body["data"]

    def wait_until(
        self,
        predicate: Callable[[], bool],
        what: str,
        explain: Callable[[], str] = str,
        timeout_s: float = STACK_TIMEOUT_S,
    ) -> None:
        def checked() -> bool:
            self.load.check()
            return predicate()

        _wait_until(checked, timeout_s, what, self.processes, poll_s=1.0, explain=explain)


def _rewrite_targets(config: str, targets: dict[str, str]) -> str:
    """The project's config with only the scrape targets replaced (each must occur exactly once)."""
    for job, target in TARGETS.items():
        quoted = f'"{target}"'
        assert config.count(quoted) == 1, f"target {target} of job {job} not found exactly once"
        config = config.replace(quoted, f'"{targets[job]}"')
    return config


@pytest.fixture(scope="module")
def stack(
    model_dir: Path, photos: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prometheus = _prometheus()
    promtool = _promtool()
    tmp = tmp_path_factory.mktemp("observability")
    api_port, media_port, prom_port, dcgm_port, grpc_port = (free_port() for _ in range(5))
    api_url, media_url = f"http://{LOOPBACK}:{api_port}", f"http://{LOOPBACK}:{media_port}"
    processes: list[Process] = []
    load: Load | None = None
    try:
        processes.append(
            _spawn(
                "detect_api",
                [sys.executable, "-m", "detect_api"],
                {
                    "RTDETECT_HOST": LOOPBACK,
                    "RTDETECT_PORT": str(api_port),
                    "RTDETECT_GRPC_PORT": str(grpc_port),  # the API panels show gRPC beside HTTP
                    "RTDETECT_MODEL_DIR": str(model_dir),
                    "RTDETECT_INTRA_OP_THREADS": "1",  # two cores shared by both servers and the client
                },
                tmp,
            )
        )
        processes.append(
            _spawn(
                "media_server",
                [sys.executable, "-c", MEDIA_SERVER_LAUNCHER],
                {
                    "RTDETECT_MEDIA_HOST": LOOPBACK,
                    "RTDETECT_MEDIA_PORT": str(media_port),
                    "RTDETECT_MEDIA_MODEL_DIR": str(model_dir),
                    "RTDETECT_MEDIA_ICE_HOST_ADDRESSES": LOOPBACK,
                    "RTDETECT_MEDIA_ICE_SERVERS": "[]",
                },
                tmp,
            )
        )

        # The project's files, targets rewritten; rule files beside the config (their paths are relative).
        config_dir = tmp / "prometheus"
        config_dir.mkdir()
        for name in RULE_FILES:
            shutil.copy(PROMETHEUS_DIR / name, config_dir / name)
        shutil.copytree(PROMETHEUS_DIR / "secrets", config_dir / "secrets")  # the (empty) metrics key file
        config = config_dir / "prometheus.yml"
        config.write_text(
            _rewrite_targets(
                (PROMETHEUS_DIR / "prometheus.yml").read_text(),
                {
                    "detect-api": f"{LOOPBACK}:{api_port}",
                    "media-server": f"{LOOPBACK}:{media_port}",
                    "dcgm": f"{LOOPBACK}:{dcgm_port}",  # nothing listens: the optional exporter is down
                },
            )
        )
        _run([promtool, "check", "config", str(config)])
        processes.append(
            _spawn(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address={LOOPBACK}:{prom_port}",
                    "--log.level=warn",
                ],
                {},
                tmp,
            )
        )
        prometheus_url = f"http://{LOOPBACK}:{prom_port}"
        _wait_until(
            lambda: all(
                _http_ok(u) for u in (f"{api_url}/readyz", f"{media_url}/readyz", f"{prometheus_url}/-/ready")
            ),
            90,
            "both servers ready and Prometheus up",
            processes,
        )

        load = Load(api_url, media_url, photos["astronaut"], grpc_target=f"{LOOPBACK}:{grpc_port}")
        load.start()
        _wait_until(
            lambda: load.peer_connected.is_set() or load.error is not None, 60, "a live peer", processes
        )
        load.check()
        yield Stack(prometheus_url, api_url, media_url, _has_gpu(), load, processes)
    finally:
        if load is not None:
            load.stop()
        for p in reversed(processes):
            p.stop()


def _finite_samples(data: dict[str, Any]) -> list[dict[str, Any]]:
    assert data["resultType"] in {"vector", "scalar"}, data
    result = data["result"]
    samples = result if data["resultType"] == "vector" else [{"metric": {}, "value": result}]
    return [s for s in samples if math.isfinite(float(s["value"][1]))]


@dataclass(frozen=True)
class PanelQuery:
    where: str
    expr: str


def _panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(f"panel {p['id']} {p['title']!r} {t['refId']}", _substitute(t["expr"]))
        for p in _query_panels(_dashboard())
        for t in p["targets"]
    ]


def _check_queries(stack: Stack, queries: list[PanelQuery]) -> list[str]:
    """What is still wrong: a non-GPU query without a finite value, or a GPU query that does not fit the
    hardware (without a GPU: empty; with one: the NVML utilisation and memory gauges present)."""
    problems = []
    for q in queries:
        data = stack.query(q.expr)  # status success is asserted for every query, GPU ones included
        finite = _finite_samples(data)
        if _is_dcgm(q.expr):
            continue  # no dcgm-exporter in the test: any valid result (empty) is right
        if _is_nvml_gpu(q.expr):
            if not stack.has_gpu and data["result"]:
                problems.append(f"{q.where}: data without a GPU: {data['result']}")
            if stack.has_gpu and not finite and re.search(r"gpu_(utilization|memory)", q.expr):
                problems.append(f"{q.where}: no data with a GPU: {q.expr}")
            continue
        if not finite:
            problems.append(f"{q.where}: no finite value: {q.expr} -> {data['result']}")
    return problems


def test_targets_are_scraped(stack: Stack) -> None:
    def health() -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in stack.api("targets")["activeTargets"]}

    stack.wait_until(lambda: all(health().get(job) == "up" for job in SERVER_JOBS), "both servers scraped")
    assert health()["dcgm"] != "up"  # nothing listens there


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = _panel_queries()
    assert len(queries) >= 20
    problems: list[str] = []

    def all_good() -> bool:
        problems[:] = _check_queries(stack, queries)
        return not problems

    stack.wait_until(all_good, "every panel query to return data", explain=lambda: "\n".join(problems))

    # The values mean what the panels say: the load is there, from the right server. (Rates only > 0:
    # early in a 1 m window rate() extrapolates from a few seconds of samples and under-reads.)
    qps = stack.query(
        'sum by (handler, status) (instance_handler_status:http_requests:rate1m{job="detect-api"})'
    )
    by_route = {(s["metric"]["handler"], s["metric"]["status"]): float(s["value"][1]) for s in qps["result"]}
    assert by_route.get(("/detect", "200"), 0) > 0, by_route
    assert by_route.get(("/healthz", "200"), 0) > 0, by_route
    assert any(h == "/detect" and s.startswith("4") for h, s in by_route), by_route

    def value(expr: str) -> float:
        (sample,) = stack.query(expr)["result"]
        return float(sample["value"][1])

    assert value("sum(rtdetect_live_active_peers)") == 1
    assert value("sum(instance:rtdetect_live_frames_in:rate1m)") > 0
    assert value("sum(instance:rtdetect_live_frames_out:rate1m)") > 0
    assert value("sum(instance:rtdetect_live_frames_inferred:rate1m)") > 0
    # Both servers run the model, each with its own inference metrics. A recorded rate appears only after
    # two scrapes of a server's histogram and two rule evaluations, so poll (with the stack's deadline).
    seen: dict[str, object] = {}

    def both_servers_infer() -> bool:
        latency = stack.query("instance:inference_latency_seconds:mean_rate1m")["result"]
        inferring = stack.query("inference_fps > 0")["result"]
        seen.update(latency=latency, inferring=inferring)
        return {s["metric"]["job"] for s in latency if float(s["value"][1]) > 0} == set(SERVER_JOBS) and {
            s["metric"]["job"] for s in inferring
        } == set(SERVER_JOBS)

    stack.wait_until(both_servers_infer, "both servers to report inference", explain=lambda: repr(seen))


def test_process_panels_cover_both_servers(stack: Stack) -> None:
    for metric in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        jobs = {s["metric"]["job"] for s in stack.query(metric)["result"]}
        assert jobs == set(SERVER_JOBS), f"{metric} is exported by {sorted(jobs)} only"


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    names = _recorded_names()
    assert len(names) >= 10
    problems: list[str] = []

    def all_good() -> bool:
        problems[:] = _check_queries(stack, [PanelQuery(f"rule {n}", n) for n in names])
        return not problems

    stack.wait_until(all_good, "every recording rule to return data", explain=lambda: "\n".join(problems))


def test_alert_rules_load_and_evaluate(stack: Stack) -> None:
    expected = set(_alert_names())
    assert len(expected) >= 4

    def alert_rules() -> list[dict[str, Any]]:
        return [r for g in stack.api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]

    # Every rule has been evaluated at least once, without an error.
    stack.wait_until(
        lambda: all(r["health"] == "ok" for r in alert_rules()) and len(alert_rules()) == len(expected),
        "every alert rule to be evaluated",
    )
    rules = alert_rules()
    assert {r["name"] for r in rules} == expected
    for rule in rules:
        assert rule.get("lastError", "") == "", rule
    recording = [r for g in stack.api("rules")["groups"] for r in g["rules"] if r["type"] == "recording"]
    assert {r["name"] for r in recording} == set(_recorded_names())
    assert all(r["health"] == "ok" for r in recording), recording

    # Healthy servers under light load: no server alert pending, and the absent dcgm-exporter is not
    # mistaken for a server without a model.
    active = [a for r in rules for a in r["alerts"]]
    assert not [a for a in active if a["labels"]["alertname"] == "RtdetectNoReadyModel"], active
    assert not [a for a in active if a["labels"].get("job") == "dcgm"], active


def test_run_prometheus_script_scrapes_local_servers(tmp_path: Path) -> None:
    """scripts/run_prometheus.sh (RTDETECT_WITH_PROMETHEUS=1 make run): the project's rules, targets on
    localhost. Its data goes to .run/prometheus, so run it from a copy of the files it needs."""
    _prometheus()
    for part in ("scripts/run_prometheus.sh", "observability/prometheus"):
        src, dst = ROOT / part, tmp_path / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    port = free_port()
    proc = _spawn(
        "run_prometheus",
        [str(tmp_path / "scripts" / "run_prometheus.sh")],
        {"RTDETECT_PROMETHEUS_PORT": str(port), "RTDETECT_PORT": "18000", "RTDETECT_MEDIA_PORT": "18080"},
        tmp_path,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until(lambda: _http_ok(f"{url}/-/ready"), 30, "run_prometheus.sh's Prometheus", [proc])

        def targets() -> dict[str, str]:
            data = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return {t["labels"]["job"]: t["labels"]["instance"] for t in data}

        _wait_until(lambda: len(targets()) == len(TARGETS), 30, "the scrape targets", [proc])
        assert targets() == {
            "detect-api": "localhost:18000",
            "media-server": "localhost:18080",
            "dcgm": "localhost:9400",
        }
        groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"} == set(
            _alert_names()
        )
        assert (tmp_path / ".run" / "prometheus" / "data").is_dir()
    finally:
        proc.stop()
