"""Short-lived TURN credentials: the TURN REST API scheme that coturn implements with `use-auth-secret`.

The media server and coturn share one secret. For each client the server issues

    username = f"{expiry}:{user}"                      (expiry: Unix time in seconds)
    password = base64(HMAC-SHA1(secret, username))

and coturn recomputes the password from the username it is given, refusing the request (401) when the
HMAC does not match or `expiry` lies in the past. Nothing is stored, nothing is shared with the browser but
the credential itself, and a leaked credential stops working at `expiry`.

Pure functions: the caller passes the clock (`now`), so tests need no patching.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiortc import RTCIceServer

# coturn splits the username at its `rest-api-separator` (':'); a STUN USERNAME is at most 513 bytes.
_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
_ICE_URL = re.compile(
    r"^(stun|stuns|turn|turns):([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(:[0-9]{1,5})?(\?transport=(udp|tcp))?$"
)


def turn_credentials(secret: str, user: str, ttl_s: int, now: float) -> tuple[str, str]:
    """(username, password) valid for `ttl_s` seconds from `now`, for a coturn started with the same secret."""
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    if not _USER.fullmatch(user):
        raise ValueError(f"TURN user {user!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ + -")
    username = f"{int(now) + ttl_s}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def validate_ice_url(url: str) -> str:
    """A `stun:`/`turn:`/`turns:` URL as browsers and aiortc accept it (RFC 7064/7065); returns it."""
    if not _ICE_URL.fullmatch(url):
        raise ValueError(
            f"ICE server URL {url!r} must look like turn:HOST[:PORT][?transport=udp|tcp] or stun:HOST[:PORT]"
        )
    if url.startswith("stun") and "?" in url:
        raise ValueError(f"ICE server URL {url!r}: a stun: URL takes no transport")
    return url


def ice_servers_for_client(
    turn_urls: Sequence[str],
    secret: str | None,
    ttl_s: int,
    user: str,
    static_ice_servers: Sequence[Mapping[str, Any]] = (),
    *,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """RTCIceServer dicts (the browser's shape) for one client: the static servers, then TURN with fresh
    credentials. Empty `turn_urls` means no TURN; TURN URLs without a secret are a configuration error."""
    servers = [copy.deepcopy(dict(s)) for s in static_ice_servers]
    if not turn_urls:
        return servers
    if not secret:
        raise ValueError("TURN URLs are configured but no TURN secret: coturn would refuse every client")
    urls = [validate_ice_url(u) for u in turn_urls]
    if any(not u.startswith("turn") for u in urls):
        raise ValueError(f"TURN URLs must start with turn: or turns:, got {list(urls)}")
    username, password = turn_credentials(secret, user, ttl_s, time.time() if now is None else now)
    servers.append({"urls": urls, "username": username, "credential": password})
    return servers


def to_rtc_ice_servers(servers: Sequence[Mapping[str, Any]]) -> list[RTCIceServer]:
    """The same dicts as aiortc objects, for the server's own RTCConfiguration."""
    out = []
    for s in servers:
        urls = s["urls"]
        out.append(
            RTCIceServer(
                urls=urls if isinstance(urls, str) else list(urls),
                username=s.get("username"),
                credential=s.get("credential"),
            )
        )
    return out
