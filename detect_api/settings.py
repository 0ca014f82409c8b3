"""The detect API's settings: read once in `__main__` (environment, prefix RTDETECT_), passed into
`create_app`. Library code never reads the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inference.paths import default_model_dir
from inference.types import DetectParams

_DEFAULTS = DetectParams()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTDETECT_", extra="ignore", frozen=True)

    # Model and engine.
    model_dir: Path = Field(default_factory=default_model_dir)
    backend: str = "onnxruntime"
    # onnxruntime only: execution providers in order of preference ("CUDAExecutionProvider,CPUExecutionProvider"
    # or JSON); None lets the engine pick the best available.
    providers: Annotated[list[str] | None, NoDecode] = None
    intra_op_threads: int = Field(default=0, ge=0)  # onnxruntime only; 0: its own default
    # Any other keyword arguments of the chosen engine (JSON), e.g. {"engine_file": "model.fp16.engine"}.
    engine_options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    # Micro-batching, shared by every request in the process.
    max_batch_size: int = Field(default=8, ge=1)
    max_delay_ms: float = Field(default=2.0, ge=0.0)
    max_queue: int = Field(default=256, ge=1)
    retry_after_s: int = Field(default=1, ge=1)  # Retry-After on 503 when the queue is full

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

    # Serving. Docker sets RTDETECT_HOST=0.0.0.0; a developer's machine only listens locally by default.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"

    # Observability. 0 turns the GPU sampler off.
    gpu_sample_interval_s: float = Field(default=2.0, ge=0.0)
    fps_window_s: float = Field(default=5.0, gt=0.0)

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        # Env values may be JSON (`["a", "b"]`) or comma-separated (`a,b`): the latter is what operators type.
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_max_detections > self.max_detections:
            raise ValueError(
                f"default_max_detections ({self.default_max_detections}) exceeds max_detections "
                f"({self.max_detections})"
            )
        if self.backend != "onnxruntime" and (self.providers is not None or self.intra_op_threads):
            raise ValueError("providers and intra_op_threads apply to the onnxruntime backend only")
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `inference.engines.create_engine`."""
        options: dict[str, Any] = dict(self.engine_options)
        if self.backend == "onnxruntime":
            if self.providers is not None:
                options["providers"] = list(self.providers)
            if self.intra_op_threads:
                options["intra_op_threads"] = self.intra_op_threads
        return options

    def default_params(self) -> DetectParams:
        return DetectParams(
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.default_max_detections,
        )
