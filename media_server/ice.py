"""ICE configuration: explicit ICE servers (TURN credentials fresh per request) and announced addresses.

The host addresses offered as candidates are `rtc.ice.HostAddressOverride`, installed while the app
runs (shared with the UI's relay).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiortc import RTCConfiguration

from media_server.settings import Settings
from media_server.turn import ice_servers_for_client, to_rtc_ice_servers


def _ice_servers(settings: Settings, turn_urls: Sequence[str], user: str) -> list[dict[str, Any]]:
    secret = settings.turn_secret.get_secret_value() if settings.turn_secret is not None else None
    static = [s.to_browser() for s in settings.ice_servers]
    return ice_servers_for_client(turn_urls, secret, settings.turn_ttl_s, user, static)


def client_ice_servers(settings: Settings) -> list[dict[str, Any]]:
    """The browser's iceServers: the static servers, then TURN with credentials fresh for this request."""
    return _ice_servers(settings, settings.turn_urls, "browser")


def server_rtc_configuration(settings: Settings) -> RTCConfiguration:
    """The server peer's configuration. Always an explicit list: with `iceServers=None` aiortc falls back
    to Google's public STUN server."""
    servers = _ice_servers(settings, settings.turn_server_urls, "media-server")
    return RTCConfiguration(iceServers=to_rtc_ice_servers(servers))


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.MULTILINE)


def announce_addresses(sdp: str, mapping: Mapping[str, str]) -> str:
    """Rewrite host candidates bound on a private address to the address peers should use (1:1 NAT).

    The socket stays bound to the private address; the NAT forwards the announced one to it, as with
    mediasoup's announcedIp or Janus's nat_1_1_mapping.
    """
    if not mapping:
        return sdp

    def replace(match: re.Match[str]) -> str:
        host = match.group(2)
        return match.group(1) + mapping.get(host, host) + match.group(3)

    return _CANDIDATE.sub(replace, sdp)
