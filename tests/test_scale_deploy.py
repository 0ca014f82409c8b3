"""The compose `scale` profile (docker-compose.scale.yml), checked statically like the other compose files:
Debian's docker-compose resolves it, and the resolved services say what docs/scale.md promises."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine_build.__main__ import BuildSettings, build_parser
from media_server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"TURN_SECRET": "test-turn-secret", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}
REPLICAS = ("media-server", "media-server-2")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: `make apt` installs Debian's docker-compose (1.29)")
    env_file = tmp_path_factory.mktemp("env") / ".env"
    env_file.write_text("")
    out = subprocess.run(
        [binary, "--env-file", str(env_file), "-f", "docker-compose.yml", "-f", "docker-compose.scale.yml",
         "--profile", "scale", "config"],
        cwd=ROOT, env={"PATH": os.environ["PATH"], **SECRETS}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    resolved: dict[str, Any] = yaml.safe_load(out.stdout)
    return resolved


def test_triton_gets_the_gpu_and_its_repository_from_the_backend_image(config: dict[str, Any]) -> None:
    services = config["services"]
    triton = services["tritonserver"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert triton["depends_on"]["triton-repo"]["condition"] == "service_completed_successfully"
    repo = services["triton-repo"]
    assert repo["image"] == services["backend"]["image"]
    command = repo["command"]
    assert command[:3] == ["python", "-m", "engine_build"]
    args = build_parser(BuildSettings()).parse_args(command[3:])  # what the image will run parses
    assert args.command == "triton-repo" and args.platform == "onnxruntime_onnx" and args.kind == "KIND_GPU"
    mounts = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in triton["volumes"]}
    assert "/models" in mounts
    assert "--model-repository=/models" in triton["command"]


def test_servers_use_triton_and_replicas_are_distinct(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["backend"]["environment"]["RTDETECT_BACKEND"] == "triton"
    assert services["backend"]["environment"]["RTDETECT_TRITON__URL"] == "tritonserver:8001"
    addresses, ranges = set(), set()
    for name in REPLICAS:
        env = services[name]["environment"]
        assert (
            env["RTDETECT_MEDIA_BACKEND"] == "triton"
            and env["RTDETECT_MEDIA_TRITON__URL"] == "tritonserver:8001"
        )
        addresses.add(env["RTDETECT_MEDIA_ICE_HOST_ADDRESSES"])
        ports = services[name]["ports"]
        ranges.add(ports[0]["published"] if isinstance(ports[0], dict) else ports[0].split(":")[0])
        assert services[name]["depends_on"]["tritonserver"]["condition"] == "service_healthy"
    assert len(addresses) == len(REPLICAS) and len(ranges) == len(REPLICAS), (addresses, ranges)
    upstreams = shlex.split(services["front"]["environment"]["FRONT_MEDIA_UPSTREAMS"])
    assert upstreams == [f"{name}:8080" for name in REPLICAS]
    # Least-loaded placement: every replica compares itself with every replica the front sends offers to.
    for name in REPLICAS:
        fleet = Settings(fleet=services[name]["environment"]["RTDETECT_MEDIA_FLEET"]).fleet
        assert fleet == [f"http://{u}" for u in upstreams], (name, fleet)


def test_prometheus_scrapes_triton_and_every_replica(config: dict[str, Any]) -> None:
    volumes = config["services"]["prometheus"]["volumes"]
    mounted = [
        v
        for v in volumes
        if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/etc/prometheus-targets"
    ]
    assert mounted, volumes
    scale = ROOT / "observability" / "prometheus" / "scale"
    targets = {f.stem: yaml.safe_load(f.read_text())[0]["targets"] for f in scale.glob("*.yml")}
    assert targets == {"triton": ["tritonserver:8002"], "media-server": ["media-server-2:8080"]}
    prometheus = yaml.safe_load((ROOT / "observability" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["triton"]["file_sd_configs"][0]["files"] == ["/etc/prometheus-targets/triton*.yml"]
    assert jobs["media-server"]["file_sd_configs"][0]["files"] == [
        "/etc/prometheus-targets/media-server*.yml"
    ]
