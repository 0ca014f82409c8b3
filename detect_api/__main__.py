"""`python -m detect_api`: read the settings (RTDETECT_* environment) once, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from detect_api.app import create_app
from detect_api.limits import uvicorn_options
from detect_api.settings import Settings
from inference.errors import RtdetectError
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.detect_api")


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"invalid RTDETECT_* settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # The commonest start-up failure (model not fetched yet) as one line, not the lifespan's traceback.
        ModelSpec.load(settings.model_dir)
    except RtdetectError as e:
        log.error("cannot start: %s", e)
        return 1
    log.info(
        "detect API on %s:%d: model %s, backend %s, precision %s",
        settings.host,
        settings.port,
        settings.model_dir,
        settings.backend,
        settings.precision,
    )
    # log_config=None: uvicorn's loggers go through the root handler above, one format for every line.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        root_path=settings.root_path,
        # X-Forwarded-For only from the configured fronts: per-client limits then see the browser's address.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
        **uvicorn_options(settings),  # keep-alive, header deadline, connection cap (detect_api/limits.py)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
