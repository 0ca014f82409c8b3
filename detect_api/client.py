"""A Python client for the detect API's gRPC service (rtdetect.v1.DetectService).

    from detect_api.client import DetectClient

    with DetectClient("localhost:50051") as client:
        response = client.detect(open("street.jpg", "rb").read(), classes=["person", "car"])
        for d in response.detections:
            print(d.label, d.score, d.box.x1, d.box.y1, d.box.x2, d.box.y2)

Images go as file bytes (JPEG, PNG, WebP, BMP) or as HxWx3 uint8 BGR arrays (sent raw, no encoding).
`AsyncDetectClient` is the same for asyncio. Errors raise `DetectError` with the gRPC status code, the
server's short error code (as REST's "error" field) and its detail.

From a shell, `python -m detect_api.client health` exits 0 only while the server reports SERVING (the
compose healthcheck uses it), and `python -m detect_api.client detect IMAGE` prints the detections as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detect_api.proto import detect_pb2 as pb
from detect_api.proto import detect_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the server's default send limit (annotated JPEGs)
ImageInput = bytes | np.ndarray


class DetectError(Exception):
    """A call failed: `status` (grpc.StatusCode), `error` (the server's short code, e.g. "invalid_image",
    empty when the failure came from gRPC itself) and `detail`."""

    def __init__(self, status: grpc.StatusCode, error: str, detail: str) -> None:
        super().__init__(f"{status.name} {error}: {detail}" if error else f"{status.name}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> DetectError:
        trailing = e.trailing_metadata() or ()
        error = next((str(v) for k, v in trailing if k == "rtdetect-error"), "")
        return cls(e.code(), error, e.details() or "")


def image_message(image: ImageInput) -> pb.Image:
    """File bytes as `encoded`, an HxWx3 uint8 BGR (or HxW greyscale) array as `raw`."""
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(encoded=bytes(image))
    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected HxWx3 or HxW uint8, got {array.dtype} {array.shape}")
    fmt = pb.PIXEL_FORMAT_GRAY8 if array.ndim == 2 else pb.PIXEL_FORMAT_BGR24
    height, width = array.shape[:2]
    return pb.Image(raw=pb.RawImage(data=array.tobytes(), width=width, height=height, format=fmt))


def detect_options(
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[str | int] | None = None,
) -> pb.DetectOptions:
    options = pb.DetectOptions(classes=[str(c) for c in classes or ()])
    if score_threshold is not None:
        options.score_threshold = score_threshold
    if iou_threshold is not None:
        options.iou_threshold = iou_threshold
    if max_detections is not None:
        options.max_detections = max_detections
    return options


def detect_request_message(
    image: ImageInput,
    annotated: bool = False,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[str | int] | None = None,
) -> pb.DetectRequest:
    """One Detect request, built the same way by the blocking and the asyncio client."""
    return pb.DetectRequest(
        image=image_message(image),
        options=detect_options(score_threshold, iou_threshold, max_detections, classes),
        annotated=annotated,
    )


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS (through the HTTPS front) or None for plaintext (the API's own gRPC port, inside a network)."""
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


class DetectClient:
    """Blocking client. `api_key` is sent as `authorization: Bearer <key>` on every call. `tls=True` (or
    `root_certificates`, PEM bytes of a private CA such as the front's internal one) for the HTTPS front."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: bool = False,
        root_certificates: bytes | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        options = _channel_options(max_message_bytes)
        credentials = _credentials(tls, root_certificates)
        self.channel = channel or (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.DetectServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = _metadata(api_key)
        self.timeout_s = timeout_s

    def detect(
        self,
        image: ImageInput,
        *,
        annotated: bool = False,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str | int] | None = None,
    ) -> pb.DetectResponse:
        request = detect_request_message(
            image, annotated, score_threshold, iou_threshold, max_detections, classes
        )
        try:
            response: pb.DetectResponse = self._stub.Detect(
                request, timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return response

    def stream(
        self, frames: Iterable[tuple[int, ImageInput]], *, options: pb.DetectOptions | None = None
    ) -> Iterator[pb.Result]:
        """(frame_id, image) pairs in, results out as they come (latest frame wins on the server: a
        result names its frame, and frames_dropped counts the ones skipped). No overall timeout."""
        requests = (
            pb.Frame(frame_id=frame_id, image=image_message(image), options=options)
            for frame_id, image in frames
        )
        try:
            yield from self._stub.DetectStream(requests, metadata=self._metadata)
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e

    def model(self) -> pb.ModelInfo:
        try:
            info: pb.ModelInfo = self._stub.GetModel(
                pb.GetModelRequest(), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return info

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncDetectClient:
    """The asyncio client (grpc.aio): the same calls, awaited."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        options = _channel_options(max_message_bytes)
        credentials = _credentials(tls, root_certificates)
        self.channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.DetectServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = _metadata(api_key)
        self.timeout_s = timeout_s

    async def detect(
        self,
        image: ImageInput,
        *,
        annotated: bool = False,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str | int] | None = None,
    ) -> pb.DetectResponse:
        request = detect_request_message(
            image, annotated, score_threshold, iou_threshold, max_detections, classes
        )
        return await self.detect_request(request)

    async def detect_request(self, request: pb.DetectRequest) -> pb.DetectResponse:
        """Send a request built in advance (benchmarks build them once)."""
        try:
            response: pb.DetectResponse = await self._stub.Detect(
                request, timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return response

    async def stream(self, frames: AsyncIterable[pb.Frame]) -> AsyncIterator[pb.Result]:
        """Frames in (build them with `image_message`), results out as they come."""
        call = self._stub.DetectStream(frames, metadata=self._metadata)
        try:
            async for result in call:
                yield result
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e

    async def model(self) -> pb.ModelInfo:
        try:
            info: pb.ModelInfo = await self._stub.GetModel(
                pb.GetModelRequest(), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return info

    async def health(self, service: str = "") -> str:
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise DetectError.from_rpc(e) from e
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def to_dict(message: Any) -> dict[str, Any]:
    """A response as plain JSON-able data, field names as in the .proto."""
    data: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detect_api.client", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--api-key", default=None, help="sent as authorization: Bearer <key>")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--tls", action="store_true", help="TLS, e.g. through the HTTPS front")
    parser.add_argument("--ca", type=Path, default=None, help="PEM file of the CA to trust (implies --tls)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("health", help="exit 0 when the server is SERVING, 1 otherwise")
    commands.add_parser("model", help="print the model the server runs")
    detect = commands.add_parser("detect", help="print the detections in an image file")
    detect.add_argument("image", type=Path)
    detect.add_argument("--classes", default=None, help="comma-separated names or ids")
    detect.add_argument("--score-threshold", type=float, default=None)
    args = parser.parse_args(argv)

    root = args.ca.read_bytes() if args.ca else None
    with DetectClient(
        args.target, api_key=args.api_key, timeout_s=args.timeout, tls=args.tls, root_certificates=root
    ) as client:
        try:
            if args.command == "health":
                status = client.health()
                print(status)
                return 0 if status == "SERVING" else 1
            if args.command == "model":
                print(json.dumps(to_dict(client.model()), indent=2))
                return 0
            response = client.detect(
                args.image.read_bytes(),
                classes=args.classes.split(",") if args.classes else None,
                score_threshold=args.score_threshold,
            )
            print(json.dumps(to_dict(response), indent=2))
            return 0
        except DetectError as e:
            print(str(e), file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
