"""`python -m media_server`: read the settings once (environment, RTDETECT_MEDIA_*) and serve."""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from pydantic import ValidationError

from inference.errors import RtdetectError
from media_server.app import STATE, create_app
from media_server.http_limits import serve
from media_server.settings import Settings

logger = logging.getLogger("media_server")


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"invalid media server settings (RTDETECT_MEDIA_*):\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # aioice logs every candidate pair check at INFO; keep the server's own lines readable.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        app = create_app(settings)
    except RtdetectError as e:
        logger.error("cannot start: %s", e)
        return 1

    async def announce(app: web.Application) -> None:
        info = app[STATE].detector.info()
        shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        logger.info(
            "model %s: backend %s, provider %s; backpressure %s, max %d peers",
            info["name"],
            info["backend"],
            info["provider"],
            settings.backpressure.value,
            settings.max_peers,
        )
        logger.info("live page  http://%s:%d/", shown, settings.port)
        logger.info("metrics    http://%s:%d/metrics", shown, settings.port)
        if not settings.ice_host_addresses:
            logger.info(
                "ICE host candidates: every interface but loopback (set RTDETECT_MEDIA_ICE_HOST_ADDRESSES)"
            )

    app.on_startup.append(announce)  # after the app's own startup: the model is loaded by then
    try:
        serve(app, settings)  # web.run_app plus read deadlines and connection limits
    except RtdetectError as e:
        logger.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
