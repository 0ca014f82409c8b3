"""Compose turns authentication on: both servers read the hashes file, the UI and Prometheus their own keys,
each from `secrets/` as `python -m inference.apikeys init-secrets` writes it; none of it enters an image or
the repository."""

from __future__ import annotations

import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy import REPO, _env, compose_config

SECRETS_IN_CONTAINERS = "/run/secrets/rtdetect"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = tmp_path_factory.mktemp("compose-auth") / "empty.env"
    env_file.write_text("")
    return compose_config(None, env_file)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict) and volume.get("type") == "bind":
            out[volume["target"]] = volume["source"]
        elif isinstance(volume, str) and volume.count(":") >= 1:
            source, target = volume.split(":")[:2]
            out[target] = source
    return out


@pytest.mark.parametrize(
    ("service", "prefix"), [("backend", "RTDETECT_"), ("media-server", "RTDETECT_MEDIA_")]
)
def test_both_servers_run_with_auth_and_the_hashes_file(
    config: dict[str, Any], service: str, prefix: str
) -> None:
    svc = config["services"][service]
    env = _env(svc)
    assert env[f"{prefix}AUTH"] == "true"
    hashes = env[f"{prefix}API_KEYS_FILE"]
    assert hashes == f"{SECRETS_IN_CONTAINERS}/api_key_hashes"
    assert Path(_mounts(svc)[hashes]) == REPO / "secrets" / "api_key_hashes"
    assert env.get(f"{prefix}METRICS_AUTH", "true") == "true"  # the default: /metrics needs the key


def test_ui_and_prometheus_get_their_keys(config: dict[str, Any]) -> None:
    ui = config["services"]["frontend"]
    key_file = _env(ui)["RTDETECT_UI_API_KEY_FILE"]
    assert Path(_mounts(ui)[key_file]) == REPO / "secrets" / "ui_api_key"
    prometheus = config["services"]["prometheus"]
    # prometheus.yml names secrets/metrics_api_key relative to itself (mounted at /etc/prometheus).
    assert (
        "credentials_file: secrets/metrics_api_key"
        in (REPO / "observability/prometheus/prometheus.yml").read_text()
    )
    assert (
        Path(_mounts(prometheus)["/etc/prometheus/secrets/metrics_api_key"])
        == REPO / "secrets" / "prometheus_api_key"
    )


def test_init_secrets_writes_what_compose_mounts(config: dict[str, Any], tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "inference.apikeys", "init-secrets", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    mounted = {Path(source).name for svc in config["services"].values() for source in _mounts(svc).values()}
    wanted = {"api_key_hashes", "ui_api_key", "prometheus_api_key"}
    assert wanted <= mounted
    assert wanted <= {p.name for p in tmp_path.iterdir()}


def test_secrets_stay_out_of_images_and_git() -> None:
    dockerignore = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()
    ]
    assert any(fnmatch("secrets", p) for p in dockerignore)
    out = subprocess.run(
        ["git", "check-ignore", "secrets/ui_api_key", "secrets/api_key_hashes"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["secrets/ui_api_key", "secrets/api_key_hashes"]
