"""API-key authentication and the per-client rate limit of the detect API, as one ASGI middleware.

Deny by default: with auth on, every path needs `Authorization: Bearer <key>` except the probes (/healthz,
/readyz) and, when metrics_auth is off, /metrics. So /detect, /model, /docs, /redoc and /openapi.json are
covered, and so is any route added later. Missing and wrong keys are both 401 (RFC 6750: an invalid token
is a 401 too), with `WWW-Authenticate: Bearer`, so a client knows to (re)send its key. The check runs before
anything reads the request body.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from detect_api.errors import error_response
from inference.apikeys import ApiKeys, bearer_token
from inference.ratelimit import RateLimiter, retry_after

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
RATE_LIMITED_PATHS = frozenset({"/detect"})
REALM = 'Bearer realm="rtdetect"'


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys | None,
        metrics_open: bool,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.keys = keys  # None: authentication is off
        self.open_paths = OPEN_PATHS | {"/metrics"} if metrics_open else OPEN_PATHS
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        client: str | None = None
        if self.keys is not None and path not in self.open_paths:
            token = bearer_token(Headers(scope=scope).get("authorization"))
            if token is None:
                response = error_response(
                    401,
                    "unauthorized",
                    "this API needs a key: send the header `Authorization: Bearer <key>`",
                    {"WWW-Authenticate": REALM},
                )
                await response(scope, receive, send)
                return
            client = self.keys.identify(token)
            if client is None:
                response = error_response(
                    401,
                    "invalid_api_key",
                    "the API key is not valid",
                    {"WWW-Authenticate": REALM + ', error="invalid_token"'},
                )
                await response(scope, receive, send)
                return
        if self.limiter is not None and path in RATE_LIMITED_PATHS:
            if client is None:
                peer = scope.get("client")
                client = f"ip:{peer[0]}" if peer else "ip:unknown"
            wait = self.limiter.take(client)
            if wait > 0:
                response = error_response(
                    429,
                    "rate_limited",
                    f"over {self.limiter.rate_per_s:g} requests/s for this client; retry later",
                    {"Retry-After": retry_after(wait)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path the routes see: uvicorn puts the root path (RTDETECT_ROOT_PATH, behind the front) in front
    of `path`, so /api/detect is /detect here, as it is to the router."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path
