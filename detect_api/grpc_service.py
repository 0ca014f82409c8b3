"""The detect API's gRPC side (rtdetect.v1.DetectService, detect_api/proto/rtdetect/v1/detect.proto).

Served by the detect API process on its own port, started and stopped in the app's lifespan, on the same
Detector as REST: gRPC and HTTP requests meet in one batcher. Beside it: the standard health service
(SERVING only while the model is ready) and server reflection, so generic clients (grpcurl, grpc_cli, the
health probes of Kubernetes and Docker) work without the .proto. Errors become status codes through
`detect_api.errors.grpc_status`, the same table as the HTTP errors; metrics come from a server interceptor
onto the app's registry, so one /metrics shows both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import cv2
import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from detect_api import service
from detect_api.errors import ApiError, grpc_status
from detect_api.proto import detect_pb2 as pb
from detect_api.proto import detect_pb2_grpc as pb_grpc
from detect_api.service import ApiState
from inference.apikeys import ApiKeys, bearer_token
from inference.errors import ImageTooLargeError, InvalidImageError, OverloadedError
from inference.pipeline import Detector, Prepared
from inference.ratelimit import RateLimiter, retry_after
from inference.types import DetectionResult, DetectParams, Timings
from observability.metrics import GrpcMetrics

log = logging.getLogger("rtdetect.detect_api.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DetectService"].full_name  # rtdetect.v1.DetectService
ERROR_CODE_KEY = "rtdetect-error"  # trailing metadata: our short error code (as REST's "error" field)
RETRY_AFTER_KEY = "retry-after"  # trailing metadata on UNAVAILABLE and a full queue, in seconds

_CHANNELS = {
    pb.PIXEL_FORMAT_UNSPECIFIED: 3,
    pb.PIXEL_FORMAT_BGR24: 3,
    pb.PIXEL_FORMAT_RGB24: 3,
    pb.PIXEL_FORMAT_GRAY8: 1,
}


def listen_address(host: str, port: int) -> str:
    # An IPv6 literal needs brackets before the port.
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """The grpc.aio server on `settings.grpc_port`, bound to the app's state (detector, metrics)."""

    def __init__(self, state: ApiState) -> None:
        settings = state.settings
        self.state = state
        self.metrics = GrpcMetrics(state.registry)
        self.health = ReadinessHealth(lambda: state.ready)
        limiter = (
            RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
            if settings.rate_limit_per_s > 0
            else None
        )
        self.server = grpc.aio.server(
            # Metrics outermost: calls refused for their key are counted too (UNAUTHENTICATED).
            interceptors=[
                MetricsInterceptor(self.metrics),
                AuthInterceptor(settings.api_keys(), limiter),
            ],
            options=[
                ("grpc.max_receive_message_length", settings.grpc_max_receive_bytes),
                ("grpc.max_send_message_length", settings.grpc_max_send_bytes),
                # gRPC sets SO_REUSEPORT by default: a second server on the same port would share it silently.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        pb_grpc.add_DetectServiceServicer_to_server(DetectServicer(state, self.metrics), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.address = listen_address(settings.host, settings.grpc_port)
        self.port = 0

    async def start(self) -> None:
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as e:  # grpc's "Failed to bind": say which setting to change
            raise OSError(f"cannot listen for gRPC on {self.address} (RTDETECT_GRPC_PORT): {e}") from e
        await self.server.start()
        await self.health.refresh()
        log.info("gRPC detect service on %s", self.address)

    async def stop(self, grace_s: float) -> None:
        # Health first, so that probes and load balancers stop sending before the port closes.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


class ReadinessHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose status follows the detector: SERVING only while the model is ready, for the
    whole server ("") and for rtdetect.v1.DetectService."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    async def refresh(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.set(name, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Any) -> None:
        await self.refresh()
        await super().Watch(request, context)


# --- the service ------------------------------------------------------------------------------------------


class DetectServicer(pb_grpc.DetectServiceServicer):
    def __init__(self, state: ApiState, metrics: GrpcMetrics) -> None:
        self.state = state
        self.metrics = metrics

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        try:
            detector = self.state.require_detector()
            params = self._params(request.options)
            image, prepared, decode_ms = await self._prepare(detector, request.image)
            result = await detector.detect_prepared(prepared, params)
            timings = replace(result.timings, decode=decode_ms, total=decode_ms + result.timings.total)
            response = pb.DetectResponse(
                model=self.state.model_name,
                image=pb.ImageSize(width=result.width, height=result.height),
                detections=_detections(result),
                timings_ms=_timings(timings),
            )
            if request.annotated:
                # A raw BGR image is a read-only view of the request's bytes: draw on a copy.
                writable = image if image.flags.writeable else image.copy()
                response.annotated_jpeg = await asyncio.to_thread(
                    service.annotate, writable, result.detections, self.state.settings.jpeg_quality
                )
            return response
        except Exception as e:
            await self._abort(context, e)

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            info = self.state.require_detector().info()
        except Exception as e:
            await self._abort(context, e)
        width, height = info["input_size"]
        return pb.ModelInfo(
            name=info["name"],
            backend=info["backend"],
            provider=info["provider"],
            input_width=width,
            input_height=height,
            classes=list(info["classes"]),
            max_batch_size=info["max_batch_size"],
            max_delay_ms=info["max_delay_ms"],
            workers=info["workers"],
            max_queue=self.state.settings.max_queue,
        )

    async def DetectStream(
        self, request_iterator: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Result]:
        """Latest frame wins: one frame in the engine per stream, at most one waiting behind it; a newer
        frame replaces the waiting one (dropped, counted). Ends when the client closes its side."""
        slot = LatestSlot()
        received = dropped = 0

        async def read() -> None:
            nonlocal received, dropped
            try:
                async for frame in request_iterator:
                    received += 1
                    self.metrics.stream_frames.inc()
                    if slot.put(frame, time.perf_counter()):
                        dropped += 1
                        self.metrics.stream_dropped.inc()
            except Exception as e:
                slot.fail(e)
            else:
                slot.close()

        reader = asyncio.create_task(read())
        try:
            detector = self.state.require_detector()
            while (item := await slot.take()) is not None:
                frame, arrived = item
                try:
                    params = self._params(frame.options)
                    _, prepared, decode_ms = await self._prepare(detector, frame.image)
                    result = await detector.detect_prepared(prepared, params)
                except OverloadedError:
                    # The shared queue is full (other clients): drop this frame like any late one.
                    dropped += 1
                    self.metrics.stream_dropped.inc()
                    continue
                except (ApiError, InvalidImageError) as e:
                    raise _FrameError(frame.frame_id, e) from e
                timings = replace(result.timings, decode=decode_ms, total=decode_ms + result.timings.total)
                yield pb.Result(
                    frame_id=frame.frame_id,
                    model=self.state.model_name,
                    image=pb.ImageSize(width=result.width, height=result.height),
                    detections=_detections(result),
                    timings_ms=_timings(timings),
                    frames_received=received,
                    frames_dropped=dropped,
                )
                self.metrics.stream_latency.observe(time.perf_counter() - arrived)
        except Exception as e:
            await self._abort(context, e)
        finally:
            reader.cancel()

    # --- helpers ----------------------------------------------------------------------------------------

    def _params(self, options: pb.DetectOptions) -> DetectParams:
        """The request's options checked as REST checks its query parameters (422 -> INVALID_ARGUMENT)."""
        settings = self.state.settings
        params = settings.default_params()
        fields: dict[str, Any] = {}
        for name in ("score_threshold", "iou_threshold"):
            if options.HasField(name):
                value = getattr(options, name)
                if not 0.0 <= value <= 1.0:  # NaN fails too
                    raise ApiError(422, "invalid_request", f"options.{name}: must be in [0, 1], got {value}")
                fields[name] = value
        if options.HasField("max_detections"):
            value = options.max_detections
            if not 1 <= value <= settings.max_detections:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"options.max_detections: must be in [1, {settings.max_detections}], got {value}",
                )
            fields["max_detections"] = value
        if options.classes:
            fields["classes"] = service.parse_classes(",".join(options.classes), self.state.class_ids)
        return replace(params, **fields) if fields else params

    async def _prepare(self, detector: Detector, image: pb.Image) -> tuple[np.ndarray, Prepared, float]:
        """Decode (or check a raw image) and pre-process in one worker-thread call, under the same decode
        slots as REST uploads."""
        settings = self.state.settings
        kind = image.WhichOneof("data")
        if kind == "encoded":
            data = image.encoded
            if len(data) > settings.max_upload_bytes:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"the image is {len(data)} bytes, the limit is {settings.max_upload_bytes} bytes",
                )
            async with self.state.decode_slots:
                return await asyncio.to_thread(
                    service.decode_and_prepare, data, settings.max_image_pixels, detector
                )
        if kind == "raw":
            async with self.state.decode_slots:
                return await asyncio.to_thread(
                    _raw_and_prepare, image.raw, settings.max_image_pixels, detector
                )
        raise ApiError(422, "invalid_request", "image: missing (set image.encoded or image.raw)")

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        frame_id = None
        if isinstance(exc, _FrameError):
            frame_id, exc = exc.frame_id, exc.error
        status, code, detail = grpc_status(exc, ready=self.state.ready)
        if frame_id is not None:
            detail = f"frame {frame_id}: {detail}"
        metadata: list[tuple[str, str]] = [(ERROR_CODE_KEY, code)]
        if code in ("not_ready", "overloaded", "model_unavailable"):
            metadata.append((RETRY_AFTER_KEY, str(self.state.settings.retry_after_s)))
        if status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("gRPC call failed: %s", detail, exc_info=exc)
        await context.abort(status, detail, trailing_metadata=tuple(metadata))
        raise AssertionError("context.abort returned")  # pragma: no cover


class _FrameError(Exception):
    """A bad frame in a stream: its error, and which frame it was (the status detail names it)."""

    def __init__(self, frame_id: int, error: Exception) -> None:
        super().__init__(f"frame {frame_id}: {error}")
        self.frame_id = frame_id
        self.error = error


def _raw_and_prepare(
    raw: pb.RawImage, max_pixels: int, detector: Detector
) -> tuple[np.ndarray, Prepared, float]:
    t0 = time.perf_counter()
    image = raw_to_bgr(raw, max_pixels)
    decode_ms = (time.perf_counter() - t0) * 1e3
    return image, detector.prepare(image), decode_ms


def raw_to_bgr(raw: pb.RawImage, max_pixels: int) -> np.ndarray:
    """A RawImage as HxWx3 uint8 BGR; its size and byte count are checked before anything is allocated."""
    channels = _CHANNELS.get(raw.format)
    if channels is None:
        raise InvalidImageError(f"raw image: unknown pixel format {raw.format}")
    width, height = raw.width, raw.height
    if width == 0 or height == 0:
        raise InvalidImageError(f"raw image: empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )
    expected = width * height * channels
    if len(raw.data) != expected:
        raise InvalidImageError(
            f"raw image: {width}x{height} {pb.PixelFormat.Name(raw.format)} is {expected} bytes, got {len(raw.data)}"
        )
    pixels = np.frombuffer(raw.data, np.uint8).reshape(height, width, channels)
    if raw.format == pb.PIXEL_FORMAT_RGB24:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if raw.format == pb.PIXEL_FORMAT_GRAY8:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return pixels


def _detections(result: DetectionResult) -> list[pb.Detection]:
    return [
        pb.Detection(
            label=d.label,
            class_id=d.class_id,
            score=d.score,
            box=pb.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
        )
        for d in result.detections
    ]


def _timings(t: Timings) -> pb.Timings:
    return pb.Timings(
        decode=t.decode,
        preprocess=t.preprocess,
        inference=t.inference,
        postprocess=t.postprocess,
        total=t.total,
    )


class LatestSlot:
    """One waiting frame at most: `put` replaces what waits (and says so), `take` waits for a frame and
    returns None once the sender has finished and nothing waits."""

    def __init__(self) -> None:
        self._item: tuple[pb.Frame, float] | None = None
        self._event = asyncio.Event()
        self._closed = False
        self._error: Exception | None = None

    def put(self, frame: pb.Frame, arrived: float) -> bool:
        replaced = self._item is not None
        self._item = (frame, arrived)
        self._event.set()
        return replaced

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self.close()

    async def take(self) -> tuple[pb.Frame, float] | None:
        while self._item is None:
            if self._error is not None:
                raise self._error
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        item, self._item = self._item, None
        return item


# --- authentication ---------------------------------------------------------------------------------------

# Open without a key, as /healthz and /readyz are over HTTP: probes carry no credentials.
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
RATE_LIMITED_METHODS = frozenset({f"/{SERVICE_NAME}/Detect", f"/{SERVICE_NAME}/DetectStream"})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """API keys (inference/apikeys.py, the REST settings) as `authorization: Bearer <key>` call metadata,
    and the per-client rate limit on Detect and on opening a DetectStream. Deny by default: every service
    but health, reflection included (it gives out the schema, as /openapi.json does). Refusals go through
    errors.grpc_status like every other error: 401 -> UNAUTHENTICATED, 429 -> RESOURCE_EXHAUSTED."""

    def __init__(self, keys: ApiKeys | None, limiter: RateLimiter | None) -> None:
        self.keys = keys
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or (self.keys is None and self.limiter is None):
            return handler
        method = handler_call_details.method
        if method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        refusal = self._check(method, metadata.get("authorization"), metadata.get("x-forwarded-for"))
        return handler if refusal is None else _refusing(handler, refusal)

    def _check(self, method: str, authorization: Any, forwarded: Any) -> ApiError | None:
        client: str | None = None
        if self.keys is not None:
            token = bearer_token(authorization if isinstance(authorization, str) else None)
            if token is None:
                return ApiError(
                    401,
                    "unauthorized",
                    "this API needs a key: send the metadata `authorization: Bearer <key>`",
                )
            client = self.keys.identify(token)
            if client is None:
                return ApiError(401, "invalid_api_key", "the API key is not valid")
        if self.limiter is not None and method in RATE_LIMITED_METHODS:
            # Without keys, one budget for all gRPC callers: the peer address is not in the call details.
            wait = self.limiter.take(client or "grpc:anonymous")
            if wait > 0:
                return ApiError(
                    429,
                    "rate_limited",
                    f"over {self.limiter.rate_per_s:g} requests/s for this client; retry later",
                    {"Retry-After": retry_after(wait)},
                )
        return None


def _refusing(handler: grpc.RpcMethodHandler, refusal: ApiError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only answers `refusal`'s status."""
    status, code, detail = grpc_status(refusal, ready=True)
    metadata = [(ERROR_CODE_KEY, code)]
    if refusal.headers and "Retry-After" in refusal.headers:
        metadata.append((RETRY_AFTER_KEY, refusal.headers["Retry-After"]))

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(status, detail, trailing_metadata=tuple(metadata))

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(status, detail, trailing_metadata=tuple(metadata))
        yield  # pragma: no cover  (makes this an async generator, as a streaming handler must be)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)


# --- metrics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MethodLabels:
    service: str
    method: str
    kind: str


def _labels(full_method: str, handler: grpc.RpcMethodHandler) -> _MethodLabels:
    service, _, method = full_method.lstrip("/").rpartition("/")
    if handler.request_streaming and handler.response_streaming:
        kind = "bidi_stream"
    elif handler.request_streaming:
        kind = "client_stream"
    elif handler.response_streaming:
        kind = "server_stream"
    else:
        kind = "unary"
    return _MethodLabels(service, method, kind)


def _code_name(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"  # the client went away or its deadline passed
    code = context.code()
    if code is not None:
        # context.code() is a StatusCode, or the raw int of one on some grpc versions.
        return code.name if isinstance(code, grpc.StatusCode) else _INT_CODES.get(code, "UNKNOWN")
    return "UNKNOWN" if exc is not None else "OK"


_INT_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code and times the unary ones, onto GrpcMetrics. Only
    methods this server has are labelled; an unknown method is refused by gRPC before it gets here."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        labels = _labels(handler_call_details.method, handler)
        metrics = self.metrics
        parse = _lenient(handler.request_deserializer)

        def done(context: grpc.aio.ServicerContext, exc: BaseException | None, started: float | None) -> None:
            metrics.handled.labels(labels.service, labels.method, labels.kind, _code_name(context, exc)).inc()
            if started is not None:
                metrics.handling.labels(labels.service, labels.method, labels.kind).observe(
                    time.perf_counter() - started
                )

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    await _refuse_unparsable(request, context)
                    response = await inner(request, context)
                except BaseException as e:
                    done(context, e, started)
                    raise
                done(context, None, started)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream is not None or handler.stream_stream is not None:
            streaming = handler.stream_stream is not None
            inner_stream = handler.stream_stream if streaming else handler.unary_stream

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    if streaming:
                        request = _checked(request)
                    else:
                        await _refuse_unparsable(request, context)
                    async for response in _as_async_iter(inner_stream(request, context)):
                        yield response
                except BaseException as e:
                    done(context, e, None)
                    raise
                done(context, None, None)

            make = (
                grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_stream_rpc_method_handler
            )
            return make(
                streamed,
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: this server has none


class _Unparsable:
    """What a request that is not a valid message deserializes to: gRPC would answer UNKNOWN with the
    parser's exception text; the handler answers INVALID_ARGUMENT instead."""


_UNPARSABLE = _Unparsable()
_NOT_A_MESSAGE = "the request is not a valid message for this method"


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNPARSABLE

    return parse


async def _refuse_unparsable(request: Any, context: grpc.aio.ServicerContext) -> None:
    if request is _UNPARSABLE:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            _NOT_A_MESSAGE,
            trailing_metadata=((ERROR_CODE_KEY, "invalid_request"),),
        )


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNPARSABLE:
            raise ApiError(400, "invalid_request", _NOT_A_MESSAGE)
        yield request


async def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    """A streaming handler is an async generator or a coroutine that writes with context.write()."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
