"""ICE configuration: explicit ICE servers, the host addresses offered as candidates, announced addresses.

aioice gathers host candidates from `aioice.ice.get_host_addresses`, which leaves loopback out; in a
loopback-only network namespace (tests, benchmarks) a peer would gather no candidate at all. That function
is the seam: `HostAddressOverride` replaces it with the configured list while the app runs. It is
process-wide (aioice has no per-connection option), so it also applies to in-process client peers.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aioice.ice
from aiortc import RTCConfiguration

from media_server.settings import Settings
from media_server.turn import ice_servers_for_client, to_rtc_ice_servers

logger = logging.getLogger(__name__)


class HostAddressGetter(Protocol):
    def __call__(self, use_ipv4: bool, use_ipv6: bool) -> list[str]: ...


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


class HostAddressOverride:
    """Installs a fixed list of host-candidate addresses into aioice; `uninstall` restores the original.

    Overrides nest (tests create several apps): each uninstall restores what its install replaced.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self._addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        self._previous: HostAddressGetter | None = None

    def _get(self, use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in self._addresses
            if (ipaddress.ip_address(a).version == 4 and use_ipv4)
            or (ipaddress.ip_address(a).version == 6 and use_ipv6)
        ]

    def install(self) -> None:
        if self._previous is not None or not self._addresses:
            return
        self._previous = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = self._get
        logger.info("ICE host candidates restricted to %s", ", ".join(self._addresses))

    def uninstall(self) -> None:
        if self._previous is None:
            return
        # Only undo our own patch: a later override that is still installed stays in place.
        if aioice.ice.get_host_addresses == self._get:
            aioice.ice.get_host_addresses = self._previous
        self._previous = None


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
