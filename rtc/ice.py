"""WebRTC ICE pieces both WebRTC processes share (the media server and the UI's relay): the ICE server
model of their settings, and the host-candidate override.

aioice gathers host candidates from `aioice.ice.get_host_addresses`, which leaves loopback out: in a
loopback-only network namespace (tests, benchmarks) a peer would gather no candidate at all. That function
is the seam `HostAddressOverride` patches. It is process-wide (aioice has no per-connection option), so it
applies to every peer of the process. aioice is imported only when an override is installed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("rtdetect.ice")

ICE_SCHEMES = ("stun:", "turn:", "turns:")


class IceServer(BaseModel):
    """One STUN or TURN server, in the shape the browser's RTCPeerConnection takes."""

    model_config = ConfigDict(frozen=True)
    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_scheme(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(ICE_SCHEMES):
                raise ValueError(f"ICE server URL {url!r} must start with stun:, turn: or turns:")
        return value

    def to_browser(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out

    def redacted(self) -> str:
        """For display and logs: the URLs and whether a credential is set, never the credential itself."""
        auth = f" (user {self.username}, credential set)" if self.credential else ""
        return ", ".join(self.urls) + auth


def parse_ice_servers(value: Any) -> Any:
    """A settings value: the environment gives a JSON list as text (empty text: no servers)."""
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text else []
    return value


class HostAddressGetter(Protocol):
    def __call__(self, use_ipv4: bool, use_ipv6: bool) -> list[str]: ...


class HostAddressOverride:
    """Installs a fixed list of host-candidate addresses into aioice; `uninstall` restores the original.

    Overrides nest (tests create several apps): each uninstall restores what its install replaced. An
    empty list installs nothing: aioice's own interface discovery stays.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(str(ipaddress.ip_address(a)) for a in addresses)
        self._previous: HostAddressGetter | None = None

    def _get(self, use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in self.addresses
            if (ipaddress.ip_address(a).version == 4 and use_ipv4)
            or (ipaddress.ip_address(a).version == 6 and use_ipv6)
        ]

    def install(self) -> None:
        if self._previous is not None or not self.addresses:
            return
        import aioice.ice

        self._previous = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = self._get
        log.info("ICE host candidates restricted to %s", ", ".join(self.addresses))

    def uninstall(self) -> None:
        if self._previous is None:
            return
        import aioice.ice

        # Only undo our own patch: a later override that is still installed stays in place.
        if aioice.ice.get_host_addresses == self._get:
            aioice.ice.get_host_addresses = self._previous
        self._previous = None
