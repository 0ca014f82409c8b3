"""Who the client is behind a reverse proxy (the HTTPS front): per-client limits must key on the browser's
address, not the front's. Only proxies listed in `trusted_proxies` are believed; their X-Forwarded-For is read
from the right, skipping further trusted hops, so a client cannot pick its own address by sending the header.

No framework imports: the detect API hands the list to uvicorn's proxy-header support, the media server
(aiohttp has none) calls `client_address`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    """Addresses or CIDR networks ("172.31.254.0/24", "127.0.0.1"); ValueError names a bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"not an IP address or network: {value!r}") from e
    return networks


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, networks: Sequence[Network]) -> str | None:
    """The connecting address unless it is a trusted proxy; then the rightmost X-Forwarded-For entry that is
    not itself a trusted proxy (or the leftmost, when every hop is trusted)."""
    if peer is None or not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
