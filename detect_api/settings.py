"""The detect API's settings: read once in `__main__` (environment, prefix RTDETECT_), passed into
`create_app`. Library code never reads the environment."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from inference.apikeys import ApiKeySettings
from inference.settings import ServingSettings
from inference.types import DetectParams

_DEFAULTS = DetectParams()


class Settings(ServingSettings, ApiKeySettings):
    model_config = SettingsConfigDict(env_prefix="RTDETECT_", extra="ignore", frozen=True)

    retry_after_s: int = Field(default=1, ge=1)  # Retry-After on 503 when the queue is full
    # The path prefix a front serves the API under (compose: /api): the docs pages then ask for prefixed URLs.
    root_path: str = Field(default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$")

    # Untrusted input.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # the image file itself
    max_image_pixels: int = Field(
        default=40_000_000, ge=1
    )  # declared width x height, checked before decoding
    # Images decoded at once: a 40-megapixel decode holds a few hundred MB, so this bounds peak memory.
    max_concurrent_decodes: int = Field(default=4, ge=1)

    # Defaults and caps of the per-request parameters.
    score_threshold: float = Field(default=_DEFAULTS.score_threshold, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=_DEFAULTS.iou_threshold, ge=0.0, le=1.0)
    default_max_detections: int = Field(default=_DEFAULTS.max_detections, ge=1)
    max_detections: int = Field(default=300, ge=1)  # the most a request may ask for
    jpeg_quality: int = Field(default=90, ge=1, le=100)  # annotated replies

    # Authentication (inference/apikeys.py): auth, api_key_hashes, api_keys_file, metrics_auth, from the
    # mix-in. Requests per second per key (per client address when auth is off) on POST /detect, with bursts
    # of rate_limit_burst; 0 turns the limit off. Over it: 429 with Retry-After.
    rate_limit_per_s: float = Field(default=0.0, ge=0.0)
    rate_limit_burst: int = Field(default=20, ge=1)

    # Slow and idle clients (detect_api/limits.py). A request's headers must arrive within header_timeout_s
    # of its first byte (of the connection, for the first request), and its body within body_timeout_s of
    # its headers: a client trickling bytes cannot hold a connection. Idle keep-alive connections close
    # after keep_alive_timeout_s. Connections over max_connections get a 503 at once.
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    body_timeout_s: float = Field(default=60.0, gt=0.0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0.0)
    max_connections: int = Field(default=512, ge=1)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # request line and headers together

    # Serving. Docker sets RTDETECT_HOST=0.0.0.0; a developer's machine only listens locally by default.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # gRPC (detect_api/grpc_service.py), on `host` too; 0 turns it off.
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # Messages in: an encoded image up to max_upload_bytes (checked per request) or a raw frame, plus framing.
    grpc_max_receive_bytes: int = Field(default=24 * 1024 * 1024, ge=1024)
    grpc_max_send_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)  # annotated JPEGs go out
    # Calls and open streams at once; more get RESOURCE_EXHAUSTED.
    grpc_max_concurrent_rpcs: int = Field(default=256, ge=1)
    # On shutdown, calls in flight get this long to finish, then are cancelled.
    grpc_shutdown_grace_s: float = Field(default=5.0, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_max_detections > self.max_detections:
            raise ValueError(
                f"default_max_detections ({self.default_max_detections}) exceeds max_detections "
                f"({self.max_detections})"
            )
        return self

    def default_params(self) -> DetectParams:
        return DetectParams(
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.default_max_detections,
        )
