"""ICE configuration for the UI's two WebRTC legs (browser <-> Streamlit server <-> media server).

Both aiortc and streamlit-webrtc fall back to a public STUN server when they are given no ICE servers, and
streamlit-webrtc treats an empty dict as "not given". So every configuration built here is a dict with an
explicit, possibly empty, `iceServers` list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import requests
from aiortc import RTCConfiguration, RTCIceServer

from rtc.ice import HostAddressOverride, IceServer


def rtc_configuration_dict(servers: Sequence[IceServer]) -> dict[str, Any]:
    """The browser's RTCConfiguration shape; streamlit-webrtc takes it for both of its peers."""
    return {"iceServers": [s.to_browser() for s in servers]}


def aiortc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
        ]
    )


def fetch_media_server_ice(
    media_server_url: str, timeout_s: float, headers: Mapping[str, str] | None = None
) -> list[IceServer]:
    """The media server's GET /ice-servers: where a deployment hands out short-lived TURN credentials
    (to callers with a key, when its auth is on: `headers` carries it).

    Accepts `{"iceServers": [...]}` or a bare list. Raises `requests.RequestException` or `ValueError`.
    """
    response = requests.get(f"{media_server_url}/ice-servers", timeout=timeout_s, headers=dict(headers or {}))
    response.raise_for_status()
    body = response.json()
    servers = body.get("iceServers", body.get("ice_servers", [])) if isinstance(body, dict) else body
    if not isinstance(servers, list):
        raise ValueError(f"unexpected /ice-servers answer: {body!r:.200}")
    return [IceServer.model_validate(s) for s in servers]


def merge_ice_servers(configured: Sequence[IceServer], fetched: Sequence[IceServer]) -> list[IceServer]:
    """Configured servers first, then the media server's, without duplicates."""
    out: list[IceServer] = []
    for server in [*configured, *fetched]:
        if server not in out:
            out.append(server)
    return out


# The override this process runs with (Streamlit reruns app.py on every interaction: install once).
_override: HostAddressOverride | None = None


def restrict_host_candidates(addresses: Sequence[str]) -> None:
    """Offer exactly `addresses` as host candidates from this process's aiortc peers.

    In a loopback-only deployment (the tests' network namespace) the Streamlit server's peers would
    otherwise gather no candidate at all (see rtc/ice.py). Process-wide and idempotent; an empty
    list restores aioice's own discovery.
    """
    global _override
    wanted = HostAddressOverride(addresses)
    current = _override.addresses if _override is not None else ()
    if wanted.addresses == current:
        return
    if _override is not None:
        _override.uninstall()
    wanted.install()
    _override = wanted
