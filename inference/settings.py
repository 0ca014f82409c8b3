"""Settings every serving process shares: the model, the engine and the micro-batcher.

Each service subclasses `ServingSettings` with its own environment prefix (RTDETECT_, RTDETECT_MEDIA_) and
reads it once in its `__main__`; nothing here reads the environment by itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inference.paths import default_model_dir

LOG_LEVELS = frozenset({"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"})


def split_list(value: Any) -> Any:
    """Env values may be JSON (`["a", "b"]`) or comma-separated (`a,b`): the latter is what operators type."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Model and engine.
    model_dir: Path = Field(default_factory=default_model_dir)
    backend: str = "onnxruntime"
    # onnxruntime only: execution providers in order of preference ("CUDAExecutionProvider,CPUExecutionProvider"
    # or JSON); None lets the engine pick the best available.
    providers: Annotated[list[str] | None, NoDecode] = None
    intra_op_threads: int = Field(default=0, ge=0)  # onnxruntime only; 0: its own default
    # onnxruntime only: idle worker threads busy-wait by default. Off, the media server measured the same
    # results and latency at 116 % instead of 164 % of a core for one peer: the cores go to decoding, HTTP
    # and the video codecs instead.
    allow_spinning: bool = False
    # Any other keyword arguments of the chosen engine (JSON), e.g. {"engine_file": "model.fp16.engine"}.
    engine_options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    # Micro-batching, shared by every caller in the process.
    # 0: by the engine's device once loaded (inference/pipeline.py): batch 1 with 2 runs in flight on a
    # CPU, batch 8 with 1 run on a GPU. Each is capped by what the engine accepts (TensorRT: 1 run).
    max_batch_size: int = Field(default=0, ge=0)
    inference_workers: int = Field(default=0, ge=0)
    max_delay_ms: float = Field(default=2.0, ge=0.0)
    max_queue: int = Field(default=256, ge=1)

    # Observability. 0 turns the GPU sampler off.
    gpu_sample_interval_s: float = Field(default=2.0, ge=0.0)
    fps_window_s: float = Field(default=5.0, gt=0.0)
    log_level: str = "INFO"

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        return split_list(value) or None  # empty: the engine's own choice

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _engine_options_fit_backend(self) -> Self:
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
            options.setdefault("allow_spinning", self.allow_spinning)
        return options

    def detector_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `inference.pipeline.Detector`'s batcher (0 here: None there, by device)."""
        return {
            "max_batch_size": self.max_batch_size or None,
            "max_delay_ms": self.max_delay_ms,
            "max_queue": self.max_queue,
            "workers": self.inference_workers or None,
        }
