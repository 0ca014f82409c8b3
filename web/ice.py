"""ICE configuration for the UI's two WebRTC legs (browser <-> Streamlit server <-> media server).

Both aiortc and streamlit-webrtc fall back to a public STUN server when they are given no ICE servers, and
streamlit-webrtc treats an empty dict as "not given". So every configuration built here is a dict with an
explicit, possibly empty, `iceServers` list.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import aioice.ice
import requests
from aiortc import RTCConfiguration, RTCIceServer

from web.settings import IceServer

logger = logging.getLogger(__name__)


def rtc_configuration_dict(servers: Sequence[IceServer]) -> dict[str, Any]:
    """The browser's RTCConfiguration shape; streamlit-webrtc takes it for both of its peers."""
    return {"iceServers": [s.to_browser() for s in servers]}


def aiortc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
        ]
    )


def fetch_media_server_ice(media_server_url: str, timeout_s: float) -> list[IceServer]:
    """The media server's GET /ice-servers: where a deployment hands out short-lived TURN credentials.

    Accepts `{"iceServers": [...]}` or a bare list. Raises `requests.RequestException` or `ValueError`.
    """
    response = requests.get(f"{media_server_url}/ice-servers", timeout=timeout_s)
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


# aioice's own discovery, captured at import (before any override) so an empty list can restore it.
_AIOICE_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_installed: tuple[str, ...] = ()


def restrict_host_candidates(addresses: Sequence[str]) -> None:
    """Offer exactly `addresses` as host candidates from this process's aiortc peers.

    aioice gathers host candidates from `aioice.ice.get_host_addresses`, which leaves loopback out: in a
    loopback-only deployment (the tests' network namespace) the Streamlit server's peers would gather no
    candidate at all. That function is the seam. Process-wide and idempotent; an empty list restores
    aioice's own discovery.
    """
    global _installed
    fixed = [ipaddress.ip_address(a) for a in addresses]
    wanted = tuple(str(a) for a in fixed)
    if wanted == _installed:
        return
    _installed = wanted
    if not fixed:
        aioice.ice.get_host_addresses = _AIOICE_GET_HOST_ADDRESSES
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in fixed if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = get_host_addresses
    logger.info("ICE host candidates of the UI's peers restricted to %s", ", ".join(map(str, fixed)))
