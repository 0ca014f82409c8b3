"""The detect API: POST /detect for still images, health, model info and Prometheus metrics.

`create_app(settings)` builds everything from settings; the lifespan loads the model (failing fast when it
cannot) and starts the GPU sampler. Nothing lives in module globals, so tests build as many apps as they like.
"""

# No `from __future__ import annotations` here: FastAPI reads the route parameters' annotations at runtime,
# and their bounds come from `settings` in _router's closure, which a string annotation cannot reach.
import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import Response
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, Field

from detect_api import service
from detect_api.docs_assets import install_offline_docs
from detect_api.errors import (
    ApiError,
    BodyLimitMiddleware,
    CatchAllMiddleware,
    ErrorBody,
    install_error_handlers,
)
from detect_api.limits import install_guards
from detect_api.service import ApiState
from detect_api.settings import Settings
from inference.pipeline import Detector, build_engine
from inference.spec import ModelSpec
from inference.types import DetectionResult, DetectParams, Timings
from observability.gpu import GpuSampler
from observability.metrics import HTTP_LATENCY_BUCKETS, InferenceMetrics, PrometheusObserver, new_registry

log = logging.getLogger("rtdetect.detect_api")

# Room for the multipart framing around the file: the body limit is the file limit plus this.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


# --- response models (they document the API in /docs) --------------------------------------------------


class ImageSize(BaseModel):
    width: int
    height: int


class DetectionOut(BaseModel):
    label: str
    class_id: int
    score: float
    box: Annotated[list[float], Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels")]


class TimingsOut(BaseModel):
    decode: float
    preprocess: float
    inference: float
    postprocess: float
    total: float


class DetectResponse(BaseModel):
    model: str
    image: ImageSize
    detections: list[DetectionOut]
    timings_ms: TimingsOut


class ModelOut(BaseModel):
    name: str
    backend: str
    precision: str = Field(description="fp32, fp16, bf16 or int8: what the engine runs.")
    gate_score: float | None = Field(
        description="The accuracy gate's mAP@0.5:0.95 of this backend x precision against FP32 on this "
        "model; null when not measured (fp32 is the reference)."
    )
    provider: str
    input_size: list[int]
    classes: list[str]
    max_batch_size: int
    max_delay_ms: float
    workers: int = Field(description="Batches in the engine at once.")
    max_queue: int


# --- state -----------------------------------------------------------------------------------------------


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.rtdetect
    return state


# --- app factory -----------------------------------------------------------------------------------------


def create_app(settings: Settings, *, detector: Detector | None = None) -> FastAPI:
    """The detect API. Pass `detector` to use one built elsewhere (tests: on a fake engine); it is then
    neither started nor closed here, and its metrics are whatever observer it was built with."""
    registry = new_registry()
    metrics = InferenceMetrics(registry, fps_window_s=settings.fps_window_s)
    gpu = GpuSampler(registry, settings.gpu_sample_interval_s) if settings.gpu_sample_interval_s > 0 else None
    state = ApiState(
        settings=settings,
        registry=registry,
        metrics=metrics,
        gpu=gpu,
        detector=detector,
        owns_detector=detector is None,
        decode_slots=asyncio.Semaphore(settings.max_concurrent_decodes),
    )

    app = FastAPI(
        title="rtdetect detect API",
        version="0.1.0",
        description="Object detection on still images: POST an image to /detect.",
        lifespan=_lifespan,
        docs_url=None,  # /docs and /redoc from packaged files, not FastAPI's CDN: see install_offline_docs
        redoc_url=None,
    )
    app.state.rtdetect = state
    app.include_router(_router(settings))
    install_offline_docs(app)
    install_error_handlers(app, retry_after_s=settings.retry_after_s, is_ready=lambda: state.ready)
    # Middleware added first runs innermost: the instrumentator (added last) sees every response, the
    # early 413s and the catch-all 500s included.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    )
    install_guards(app, settings)  # API keys, rate limit, body deadline: before anything reads the body
    Instrumentator(
        should_group_status_codes=False,  # 413 and 415 tell different stories; the set of codes is small
        should_group_untemplated=True,  # unknown paths count as handler "none": bounded cardinality
        excluded_handlers=["^/metrics$"],
        registry=registry,
    ).instrument(app, latency_lowr_buckets=HTTP_LATENCY_BUCKETS).expose(app, endpoint="/metrics")
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ApiState = app.state.rtdetect
    settings = state.settings
    if state.gpu is not None:
        await asyncio.to_thread(state.gpu.start)
    try:
        if state.owns_detector:
            state.detector = _build_detector(settings, state.metrics)
            # Fail fast: a server that cannot load its model must not start listening.
            await state.detector.start()
        if state.detector is not None:
            _on_detector(state, state.detector)
        if settings.grpc_port:
            # Imported only where gRPC is on; it serves the same detector (one batcher for both).
            from detect_api.grpc_service import GrpcServer

            grpc_server = GrpcServer(state)
            await grpc_server.start()
            app.state.grpc_server = grpc_server
        yield
    finally:
        if getattr(app.state, "grpc_server", None) is not None:
            await app.state.grpc_server.stop(settings.grpc_shutdown_grace_s)
            app.state.grpc_server = None
        if state.owns_detector and state.detector is not None:
            await state.detector.close()
        if state.gpu is not None:
            await asyncio.to_thread(state.gpu.stop)


def _build_detector(settings: Settings, metrics: InferenceMetrics) -> Detector:
    spec = ModelSpec.load(settings.model_dir)
    engine = build_engine(settings, spec)  # backend=auto: chosen (and timed, once) when the detector starts
    return Detector(engine, spec, **settings.detector_kwargs(), observer=PrometheusObserver(metrics))


def _on_detector(state: ApiState, detector: Detector) -> None:
    info = detector.info()
    state.model_name = str(info["name"])
    state.class_ids = {name.lower(): i for i, name in enumerate(info["classes"])}
    state.metrics.set_model(model=info["name"], backend=info["backend"], provider=info["provider"])
    log.info(
        "detect API serving model %s with %s %s (accuracy gate mAP %s; %s)%s",
        info["name"],
        info["backend"],
        info["precision"],
        "not measured" if info["gate_score"] is None else f"{info['gate_score']:.3f}",
        info["provider"],
        "" if detector.ready else "; the detector is not started yet",
    )


# --- routes ----------------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Not a decodable image (empty, corrupt or truncated), a malformed upload, or a class id that is "
        "not ASCII digits.",
        413: "Upload over the size limit, or an image declaring more pixels than allowed.",
        415: "An image of a type other than JPEG, PNG, WebP or BMP.",
        422: "Missing file field or out-of-range parameters, or an unknown class.",
        503: "The model is not loaded yet, or the inference queue is full (see Retry-After).",
    }.items()
}


def _router(settings: Settings) -> APIRouter:
    # Built per app: the parameter defaults and bounds come from this app's settings.
    router = APIRouter()

    @router.post(
        "/detect",
        response_model=DetectResponse,
        responses={
            **_ERRORS,
            200: {
                "content": {"image/jpeg": {}},
                "description": "Detections, or the annotated image when annotated=true.",
            },
        },
        summary="Detect objects in an image",
    )
    async def detect(
        request: Request,
        file: Annotated[UploadFile, File(description="The image: JPEG, PNG, WebP or BMP.")],
        annotated: Annotated[
            bool, Query(description="Return the image with the boxes drawn (JPEG).")
        ] = False,
        score_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = settings.score_threshold,
        iou_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = settings.iou_threshold,
        max_detections: Annotated[
            int, Query(ge=1, le=settings.max_detections)
        ] = settings.default_max_detections,
        classes: Annotated[
            str | None,
            Query(description="Comma-separated class names or ids to keep, e.g. person,car or 0,2."),
        ] = None,
    ) -> Response:
        state = _state(request)
        detector = state.require_detector()
        params = DetectParams(
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=service.parse_classes(classes, state.class_ids) if classes is not None else None,
        )
        data = await _read_upload(file, state.settings.max_upload_bytes)

        async with state.decode_slots:
            image, prepared, decode_ms = await asyncio.to_thread(
                service.decode_and_prepare, data, state.settings.max_image_pixels, detector
            )
        del data  # the encoded copy is not needed any more; the decoded one can be large

        result = await detector.detect_prepared(prepared, params)
        timings = replace(result.timings, decode=decode_ms, total=decode_ms + result.timings.total)
        headers = {"Server-Timing": _server_timing(timings)}
        model = state.model_name
        if annotated:
            jpeg = await asyncio.to_thread(
                service.annotate, image, result.detections, state.settings.jpeg_quality
            )
            headers["X-Detections"] = str(len(result.detections))
            headers["X-Model"] = model
            return Response(jpeg, media_type="image/jpeg", headers=headers)
        return _json_result(model, result, timings, headers)

    @router.get("/healthz", summary="Liveness: the process serves HTTP")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up",
        responses={503: {"model": ErrorBody, "description": "Not ready."}},
    )
    async def readyz(request: Request) -> dict[str, str]:
        state = _state(request)
        detector = state.require_detector()
        # An engine tier (Triton) may go away after start: readiness follows it, so balancers stop routing.
        problem = await detector.serving_problem()
        if problem is not None:
            raise ApiError(
                503, "engine_unavailable", problem, {"Retry-After": str(state.settings.retry_after_s)}
            )
        return {"status": "ready", "model": str(detector.info()["name"])}

    @router.get("/model", response_model=ModelOut, responses={503: {"model": ErrorBody}})
    async def model_info(request: Request) -> ModelOut:
        state = _state(request)
        info = state.require_detector().info()
        return ModelOut(
            name=info["name"],
            backend=info["backend"],
            precision=info["precision"],
            gate_score=info["gate_score"],
            provider=info["provider"],
            input_size=list(info["input_size"]),
            classes=list(info["classes"]),
            max_batch_size=info["max_batch_size"],
            max_delay_ms=info["max_delay_ms"],
            workers=info["workers"],
            max_queue=state.settings.max_queue,
        )

    return router


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    """The file's bytes, refusing one over `limit` (the body limit lets the multipart framing through)."""
    if file.size is not None and file.size > limit:
        raise ApiError(413, "upload_too_large", f"the file is {file.size} bytes, the limit is {limit} bytes")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "upload_too_large", f"the file is larger than the limit of {limit} bytes")
    return data


def _server_timing(timings: Timings) -> str:
    # The standard header for per-stage durations: browsers' developer tools show it.
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in timings.to_dict().items())


def _json_result(model: str, result: DetectionResult, timings: Timings, headers: dict[str, str]) -> Response:
    # Shaped as DetectResponse (which documents it in /docs; tests check the two agree), serialised
    # directly: building and validating pydantic models for our own output costs CPU on every request.
    body = {
        "model": model,
        "image": {"width": result.width, "height": result.height},
        "detections": [d.to_dict() for d in result.detections],
        "timings_ms": timings.to_dict(),
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json", headers=headers)
