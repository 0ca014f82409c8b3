"""Who the client is behind the front (inference/proxies.py), and the path the detect API's middleware sees
under a root path. The servers behind a real Caddy: tests/test_front.py."""

from __future__ import annotations

import pytest

from detect_api.auth import route_path
from detect_api.settings import Settings as ApiSettings
from inference.proxies import client_address, parse_networks
from media_server.settings import Settings as MediaSettings

FRONT = parse_networks(["172.31.254.0/24", "127.0.0.1"])


def test_the_forwarded_address_is_believed_only_from_a_trusted_proxy() -> None:
    assert client_address("172.31.254.5", "203.0.113.7", FRONT) == "203.0.113.7"
    assert client_address("198.51.100.1", "203.0.113.7", FRONT) == "198.51.100.1"  # not a proxy: its own
    assert client_address("172.31.254.5", None, FRONT) == "172.31.254.5"  # the UI calling in directly
    assert client_address("172.31.254.5", "203.0.113.7", []) == "172.31.254.5"  # nothing trusted


def test_a_client_cannot_choose_its_address_by_sending_the_header() -> None:
    # The client sent "10.0.0.1"; the front appended the address it saw: the rightmost untrusted hop counts.
    assert client_address("127.0.0.1", "10.0.0.1, 203.0.113.7", FRONT) == "203.0.113.7"
    assert client_address("127.0.0.1", "203.0.113.7, 172.31.254.9", FRONT) == "203.0.113.7"  # two fronts
    assert client_address("127.0.0.1", "garbage, 203.0.113.7", FRONT) == "203.0.113.7"


def test_trusted_proxies_setting_is_checked_on_both_servers() -> None:
    assert MediaSettings(trusted_proxies="172.31.254.0/24, 127.0.0.1").trusted_proxies == [
        "172.31.254.0/24",
        "127.0.0.1",
    ]
    for bad in ("front", "300.1.1.1"):
        with pytest.raises(ValueError, match="not an IP address or network"):
            ApiSettings(trusted_proxies=bad)


@pytest.mark.parametrize(
    ("path", "root", "seen"),
    [("/api/detect", "/api", "/detect"), ("/api", "/api", "/"), ("/detect", "/api", "/detect"),
     ("/apix/detect", "/api", "/apix/detect"), ("/healthz", "", "/healthz")],
)  # fmt: skip
def test_route_path_strips_the_root_path_only(path: str, root: str, seen: str) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root}) == seen


def test_root_path_must_be_a_path_prefix() -> None:
    assert ApiSettings(root_path="/api").root_path == "/api"
    for bad in ("api", "/api/", "/a b"):
        with pytest.raises(ValueError):
            ApiSettings(root_path=bad)
