"""`python -m tools.bench_server`: the media server as the benchmarks run it.

The same app as `python -m media_server` (settings from RTDETECT_MEDIA_*), plus what only a benchmark wants
and the server package does not carry: the naive baseline pipeline and an artificial delay in every
engine call.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from inference.engines import Engine
from inference.errors import RtdetectError
from media_server.app import MediaFactory, create_app, live_media
from media_server.http_limits import serve
from media_server.settings import Settings
from tools.naive import naive_media
from tools.slow_engine import SlowEngine

PIPELINES: dict[str, MediaFactory] = {"detect": live_media, "naive": naive_media}


def slow_wrapper(delay_ms: float) -> Callable[[Engine], Engine] | None:
    """An engine wrapper that sleeps `delay_ms` in every call; None for no delay."""
    if delay_ms <= 0:
        return None

    def wrap(engine: Engine) -> Engine:
        return SlowEngine(engine, delay_ms / 1e3)

    return wrap


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_server", description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="detect")
    parser.add_argument("--engine-delay-ms", type=float, default=0.0, help="sleep in every engine call")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"invalid media server settings (RTDETECT_MEDIA_*):\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        app = create_app(
            settings, wrap_engine=slow_wrapper(args.engine_delay_ms), media_factory=PIPELINES[args.pipeline]
        )
        serve(app, settings)
    except RtdetectError as e:
        logging.getLogger("tools.bench_server").error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
