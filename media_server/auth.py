"""Who may use the media server: API keys, the /offer guards and the per-client limits, as one middleware.

- API keys (inference/apikeys.py), deny by default: with auth on every path needs `Authorization: Bearer
  <key>` except the page itself (`/`, `/static/...`), the probes (/healthz, /readyz, /room, /load) and, when metrics_auth
  is off, /metrics. Missing and wrong keys are both 401 JSON with `WWW-Authenticate: Bearer`, as in the detect
  API: the page asks for the key on a 401.
- POST /offer takes `application/json` only (415) and, when the request carries an Origin, only the server's
  own origin or one in allowed_origins (403): a page on another site cannot start a peer, not even with a
  "simple" text/plain POST that needs no CORS preflight. A request without Origin (not a browser) passes.
- Pending offers per client (per key; per address when auth is off): offers being answered plus peers
  answered but not yet connected; over max_pending_offers_per_client a 429, so one client cannot hold every
  media slot with offers that never connect.
- GET /ice-servers and /config hand out TURN credentials: a token bucket per client (429 over it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from inference.apikeys import ApiKeys, bearer_token
from inference.proxies import client_address, parse_networks
from inference.ratelimit import RateLimiter, retry_after

if TYPE_CHECKING:
    from media_server.peers import PeerRegistry
    from media_server.settings import Settings
    from observability.live import LiveMetrics

logger = logging.getLogger(__name__)

# /room: the front's health check; /load: the other replicas' (fleet.py)
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/room", "/load"})
OPEN_PREFIXES = ("/static/",)
TURN_PATHS = frozenset({"/ice-servers", "/config"})
REALM = 'Bearer realm="rtdetect"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


class AccessGuard:
    """The state behind the middleware: keys, the TURN rate limiter, pending offers per client."""

    def __init__(self, settings: Settings, peers: PeerRegistry, metrics: LiveMetrics) -> None:
        self.keys: ApiKeys | None = settings.api_keys()
        self.metrics_open = not settings.metrics_auth
        self.allowed_origins = frozenset(settings.allowed_origins)
        self.max_pending = settings.max_pending_offers_per_client
        self.retry_after_s = settings.retry_after_s
        self.turn_limiter = RateLimiter(settings.ice_rate_per_min / 60.0, settings.ice_rate_burst)
        self._peers = peers
        self._metrics = metrics
        self._pending: dict[str, list[str]] = {}  # client -> peer ids answered for it
        self._answering: dict[str, int] = {}  # client -> offers being answered now

    def rejected(self, reason: str) -> None:
        self._metrics.offers_rejected.labels(reason=reason).inc()  # reasons: observability/live.py

    def needs_key(self, path: str) -> bool:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return not (path == "/metrics" and self.metrics_open)

    def pending(self, client: str) -> int:
        peers = [p for p in self._pending.get(client, []) if self._not_connected(p)]
        if peers:
            self._pending[client] = peers
        else:
            self._pending.pop(client, None)  # forget clients with nothing pending: the table stays small
        return len(peers) + self._answering.get(client, 0)

    async def offer(self, request: web.Request, handler: Handler, client: str) -> web.StreamResponse:
        if request.content_type != "application/json":
            self.rejected("not_json")
            return _error(
                415, "unsupported_media_type", f"an offer is application/json, not {request.content_type!r}"
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.host):
            logger.warning("offer from origin %r refused (allowed_origins setting)", origin[:200])
            self.rejected("forbidden_origin")
            return _error(403, "forbidden_origin", f"pages from {origin[:200]!r} may not start a stream here")
        if self.pending(client) >= self.max_pending:
            self.rejected("too_many_pending")
            return _error(
                429,
                "too_many_pending_offers",
                f"this client already has {self.max_pending} offer(s) not connected yet; connect or wait",
                {"Retry-After": str(self.retry_after_s)},
            )
        self._answering[client] = self._answering.get(client, 0) + 1
        try:
            response = await handler(request)
        finally:
            left = self._answering[client] - 1
            if left:
                self._answering[client] = left
            else:
                del self._answering[client]
        peer_id = _peer_id(response)
        if peer_id is not None:
            self._pending.setdefault(client, []).append(peer_id)
        return response

    def _not_connected(self, peer_id: str) -> bool:
        session = self._peers.get(peer_id)  # None once closed
        return session is not None and session.pc.connectionState in ("new", "connecting")

    def _origin_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file: pages) and anything malformed
        if f"{parts.scheme}://{parts.netloc.lower()}" in self.allowed_origins:
            return True
        # Same origin: the page came from this server, as the browser addressed it (Host cannot be set by
        # page script). Behind a front that rewrites Host, list the public origin in allowed_origins.
        return parts.netloc.lower() == host.lower()


def _peer_id(response: web.StreamResponse) -> str | None:
    if response.status != 200 or not isinstance(response, web.Response) or response.body is None:
        return None
    try:
        body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    peer_id = body.get("peer_id") if isinstance(body, dict) else None
    return str(peer_id) if peer_id is not None else None


def access_middleware(settings: Settings, peers: PeerRegistry, metrics: LiveMetrics) -> Any:
    """The aiohttp middleware; put it after the error middleware (its answers are complete responses)."""
    guard = AccessGuard(settings, peers, metrics)
    proxies = parse_networks(settings.trusted_proxies)  # the front: its X-Forwarded-For names the client

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        client: str | None = None
        if guard.keys is not None and guard.needs_key(path):
            token = bearer_token(request.headers.get("Authorization"))
            client = guard.keys.identify(token) if token is not None else None
            if client is None and path == "/offer":
                guard.rejected("unauthorized")
            if token is None:
                return _error(
                    401,
                    "unauthorized",
                    "this server needs a key: send the header `Authorization: Bearer <key>`",
                    {"WWW-Authenticate": REALM},
                )
            if client is None:
                return _error(
                    401,
                    "invalid_api_key",
                    "the API key is not valid",
                    {"WWW-Authenticate": REALM + ', error="invalid_token"'},
                )
        if client is None:
            address = client_address(request.remote, request.headers.get("X-Forwarded-For"), proxies)
            client = f"ip:{address or 'unknown'}"
        if path == "/offer" and request.method == "POST":
            return await guard.offer(request, handler, client)
        if path in TURN_PATHS:
            wait = guard.turn_limiter.take(client)
            if wait > 0:
                return _error(
                    429,
                    "rate_limited",
                    f"TURN credentials: over {guard.turn_limiter.rate_per_s * 60:g} requests a minute",
                    {"Retry-After": retry_after(wait)},
                )
        return await handler(request)

    return access
