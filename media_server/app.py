"""The aiohttp application: signalling, the browser client, health and metrics.

Everything the server holds (detector, peers, metrics, worker threads) lives in one `ServerState` on the
app, created by `create_app` and released by its cleanup: no module globals.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.engines import Engine
from inference.errors import ModelLoadError, OverloadedError
from inference.types import DetectParams
from inference.zones import Geometry
from media_server.auth import access_middleware
from media_server.detector import DetectorLike, build_detector
from media_server.fleet import Fleet, ReplicaLoad
from media_server.ice import client_ice_servers, server_rtc_configuration
from media_server.peers import OfferError, PeerRegistry, PeerSession, check_offer_sdp
from media_server.settings import Settings
from media_server.track import LiveOptions, LivePipeline, PeerMedia
from observability.gpu import GpuSampler
from observability.live import LiveMetrics, PeerFramesCollector
from observability.metrics import InferenceMetrics, PrometheusObserver, new_registry, render
from rtc.ice import HostAddressOverride
from rtc.jitter import MarkerJitterBufferInstall

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# An SDP offer is a few kB; this caps what a malformed JSON body can make the server parse.
MAX_SDP_CHARS = 1_000_000


@dataclass
class ServerState:
    settings: Settings
    registry: CollectorRegistry
    metrics: LiveMetrics
    inference_metrics: InferenceMetrics
    gpu: GpuSampler | None
    detector: DetectorLike
    owns_detector: bool
    peers: PeerRegistry
    executor: ThreadPoolExecutor
    host_addresses: HostAddressOverride
    media_factory: MediaFactory
    # The other replicas' loads, for least-loaded placement (fleet.py); empty when RTDETECT_MEDIA_FLEET is unset.
    fleet: Fleet
    # Video frames released on the RTP marker bit (rtc/jitter.py), for the peers created while it runs.
    jitter_buffer: MarkerJitterBufferInstall = field(default_factory=MarkerJitterBufferInstall)


# Builds each new peer's pipeline: rtdetect's live pipeline; the benchmark swaps in its baseline.
MediaFactory = Callable[[ServerState, DetectParams], PeerMedia]
STATE = web.AppKey("rtdetect_state", ServerState)


def live_media(state: ServerState, params: DetectParams) -> PeerMedia:
    settings = state.settings
    return LivePipeline(
        state.detector,
        state.metrics,
        params=params,
        policy=settings.backpressure,
        buffer_size=settings.buffer_size,
        max_detection_age_s=settings.max_detection_age_ms / 1e3,
        executor=state.executor,
        options=live_options(settings),
    )


def live_options(settings: Settings) -> LiveOptions:
    return LiveOptions(
        tracking=settings.tracking,
        predict=settings.predict_boxes and settings.tracking,
        low_threshold=settings.track_low_threshold,
        max_lost_s=settings.track_max_lost_s,
        geometry=Geometry.of(settings.zones, settings.lines),
        acceleration=settings.predict_acceleration,
    )


# --- errors: the one place that maps them to HTTP -------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


def error_response(status: int, error: str, detail: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.error, e.detail, retry_after=e.retry_after)
    except OverloadedError as e:
        return error_response(
            503, "overloaded", str(e), retry_after=request.app[STATE].settings.retry_after_s
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # aiohttp's own 404/405/413 become JSON like every other error.
        return error_response(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error; see the server log")


# --- handlers -------------------------------------------------------------------------------------------


class OfferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"]


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, up to `limit` bytes, within `timeout_s`. `content.read(n)` returns only what has
    arrived so far (an offer split over TCP segments came out cut): read until EOF."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "offer_too_large", f"the offer is {request.content_length} bytes; limit {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            # Whatever Content-Length claims (or when it is absent: chunked), never hold more than limit + 1.
            while chunk := await request.content.read(limit + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "offer_too_large", f"the offer exceeds {limit} bytes")
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    return b"".join(chunks)


async def _read_offer(request: web.Request, limit: int, timeout_s: float) -> OfferRequest:
    body = await _read_body(request, limit, timeout_s)
    try:
        return OfferRequest.model_validate_json(body)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise ApiError(400, "invalid_offer", errors) from e


def _too_many_peers(settings: Settings) -> ApiError:
    return ApiError(
        503,
        "too_many_peers",
        f"this server takes at most {settings.max_peers} peers",
        retry_after=settings.retry_after_s,
    )


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    settings = state.settings
    try:
        body = await _read_offer(request, settings.max_offer_bytes, settings.body_timeout_s)
    except ApiError as e:
        state.metrics.offers_rejected.labels(
            reason="too_large" if e.error == "offer_too_large" else "bad_offer"
        ).inc()
        raise
    if not state.detector.ready:
        state.metrics.offers_rejected.labels(reason="not_ready").inc()
        raise ApiError(503, "not_ready", "the model is not loaded yet", retry_after=settings.retry_after_s)

    try:
        check_offer_sdp(body.sdp)
    except OfferError as e:
        state.metrics.offers_rejected.labels(reason="bad_offer").inc()
        raise ApiError(400, "invalid_offer", str(e)) from e
    if len(state.peers) >= settings.max_peers:  # before building anything
        state.metrics.offers_rejected.labels(reason="capacity").inc()
        raise _too_many_peers(settings)

    params = DetectParams(score_threshold=settings.score_threshold)
    pc = RTCPeerConnection(configuration=server_rtc_configuration(settings))
    media = state.media_factory(state, params)
    session = PeerSession(pc, media, settings=settings, metrics=state.metrics, registry=state.peers)
    if not state.peers.try_add(
        session
    ):  # the registry guards itself; with no await since the check, unreachable
        await pc.close()
        raise _too_many_peers(settings)
    try:
        answer = await session.answer(RTCSessionDescription(sdp=body.sdp, type=body.type))
    except OfferError as e:
        # Well-formed SDP that aiortc cannot use (no common codec, ...): the peer never started.
        await session.close("rejected")
        state.metrics.offers_rejected.labels(reason="bad_offer").inc()
        raise ApiError(400, "invalid_offer", str(e)) from e
    except BaseException:
        await session.close("error")
        raise
    logger.info("peer %s answered (%d active)", session.id, len(state.peers))
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "peer_id": session.id})


async def ice_servers(request: web.Request) -> web.Response:
    # Fresh TURN credentials on every call: never cache this response.
    servers = client_ice_servers(request.app[STATE].settings)
    return web.json_response({"iceServers": servers}, headers={"Cache-Control": "no-store"})


async def client_config(request: web.Request) -> web.Response:
    """What the browser page needs to start: ICE servers and the server's defaults."""
    state = request.app[STATE]
    return web.json_response(
        {
            "iceServers": client_ice_servers(state.settings),
            "scoreThreshold": state.settings.score_threshold,
            "codec": state.settings.codec,
            "model": state.detector.info() if state.detector.ready else None,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _require_serving(state: ServerState) -> None:
    """503 unless the model is loaded and its engine can serve now (an engine tier such as Triton may have
    gone away after start: readiness and the front's room check follow it)."""
    retry = state.settings.retry_after_s
    if not state.detector.ready:
        raise ApiError(503, "not_ready", "the model is not loaded", retry_after=retry)
    problem = await state.detector.serving_problem()
    if problem is not None:
        raise ApiError(503, "engine_unavailable", problem, retry_after=retry)


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _require_serving(state)
    return web.json_response(
        {
            "status": "ready",
            "model": state.detector.info(),
            "peers": len(state.peers),
            "max_peers": state.settings.max_peers,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body, content_type = render(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def room(request: web.Request) -> web.Response:
    """Whether this replica takes a new peer: the front's health check for new offers (docs/scale.md).
    200 with the live peer count while there is room and, with a fleet configured, no other replica with
    room holds fewer peers; 503 with Retry-After otherwise (full, not ready, engine unavailable, or not the
    least loaded)."""
    state = request.app[STATE]
    settings = state.settings
    await _require_serving(state)
    count, limit = len(state.peers), settings.max_peers
    if count >= limit:
        raise _too_many_peers(settings)
    if state.fleet.configured:
        fewest = await state.fleet.least_loaded_peers()
        if fewest is not None and fewest < count:
            raise ApiError(
                503,
                "not_least_loaded",
                f"this replica holds {count} peers and another with room holds {fewest}: new peers go there",
                retry_after=settings.retry_after_s,
            )
    return web.json_response({"peers": count, "max_peers": limit, "room": limit - count})


async def load(request: web.Request) -> web.Response:
    """This replica's load, always 200: what the other replicas of a fleet compare themselves with."""
    state = request.app[STATE]
    serving = state.detector.ready and await state.detector.serving_problem() is None
    here = ReplicaLoad(state.fleet.instance, len(state.peers), state.settings.max_peers, serving)
    return web.json_response(here.as_json())


async def peers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {"peers": [p.snapshot() for p in state.peers], "max_peers": state.settings.max_peers}
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# --- app factory ----------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    *,
    detector: DetectorLike | None = None,
    registry: CollectorRegistry | None = None,
    wrap_engine: Callable[[Engine], Engine] | None = None,
    media_factory: MediaFactory = live_media,
) -> web.Application:
    """The media server app. Pass `detector` to share one (it is then neither started nor closed here).

    `wrap_engine` and `media_factory` are the benchmark's seams (tools.bench_server): an engine with an
    artificial delay, the naive baseline pipeline."""
    registry = registry if registry is not None else new_registry()
    zone_names = [z.name for z in settings.zones] + [ln.name for ln in settings.lines]
    live_metrics = LiveMetrics(registry, zone_names=zone_names)
    inference_metrics = InferenceMetrics(registry, fps_window_s=settings.fps_window_s)
    owns_detector = detector is None
    if detector is None:
        detector = build_detector(
            settings, observer=PrometheusObserver(inference_metrics), wrap_engine=wrap_engine
        )
    interval = settings.gpu_sample_interval_s
    state = ServerState(
        settings=settings,
        registry=registry,
        metrics=live_metrics,
        inference_metrics=inference_metrics,
        gpu=GpuSampler(registry, interval) if interval > 0 else None,
        detector=detector,
        owns_detector=owns_detector,
        peers=PeerRegistry(
            settings.max_peers, live_metrics, error_log_interval_s=settings.error_log_interval_s
        ),
        # Frame conversion and overlay rendering: a pool of our own, so they never wait behind aiortc's
        # encoders in the loop's default executor.
        executor=ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="rtdetect-frames"
        ),
        host_addresses=HostAddressOverride(settings.ice_host_addresses),
        media_factory=media_factory,
        fleet=Fleet(settings.fleet, timeout_s=settings.fleet_timeout_s, cache_s=settings.fleet_cache_s),
    )
    registry.register(PeerFramesCollector(lambda: ((p.id, p.media.stats()) for p in state.peers)))
    app = web.Application(
        middlewares=[error_middleware, access_middleware(settings, state.peers, live_metrics)],  # auth.py
        client_max_size=settings.max_offer_bytes + 1,
    )
    app[STATE] = state
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.router.add_post("/offer", offer)
    app.router.add_get("/ice-servers", ice_servers)
    app.router.add_get("/config", client_config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/room", room)
    app.router.add_get("/load", load)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/peers", peers)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    state.host_addresses.install()
    state.jitter_buffer.install()
    if state.owns_detector:
        # Fail fast: a server that cannot load its model should not start listening.
        try:
            await state.detector.start()
        except ModelLoadError:
            logger.error("cannot load the model from %s", state.settings.model_dir)
            raise
    info = state.detector.info()
    state.inference_metrics.set_model(model=info["name"], backend=info["backend"], provider=info["provider"])
    if state.gpu is not None:
        await asyncio.to_thread(state.gpu.start)
    score = info.get("gate_score")
    logger.info(
        "media server ready: model %s, backend %s, precision %s (accuracy gate mAP %s), provider %s",
        info["name"],
        info["backend"],
        info.get("precision", "fp32"),
        "not measured" if score is None else f"{score:.3f}",
        info["provider"],
    )


async def _shutdown(app: web.Application) -> None:
    # Before aiohttp closes connections: peers say goodbye (DTLS close) while the loop still runs.
    await app[STATE].peers.close_all("shutdown")


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    await state.peers.close_all("shutdown")
    if state.gpu is not None:
        await asyncio.to_thread(state.gpu.stop)
    if state.owns_detector:
        await state.detector.close()
    await asyncio.to_thread(state.executor.shutdown, wait=True)
    state.host_addresses.uninstall()
    state.jitter_buffer.uninstall()
    await state.fleet.close()
