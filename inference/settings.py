"""Settings every serving process shares: the model, the engine and the micro-batcher.

Each service subclasses `ServingSettings` with its own environment prefix (RTDETECT_, RTDETECT_MEDIA_) and
reads it once in its `__main__`; nothing here reads the environment by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inference.engines.options import (
    OPTIONS,
    BackendOptions,
    OnnxRuntimeOptions,
    OpenVinoOptions,
    TensorRTOptions,
    TorchOptions,
    TritonOptions,
    validate_options,
)
from inference.envlist import EnvList
from inference.paths import default_model_dir
from inference.proxies import parse_networks

LOG_LEVELS = frozenset({"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"})


# The onnxruntime options' old flat names (RTDETECT_PROVIDERS, ...), still read: they fold into `onnxruntime`.
LEGACY_ONNXRUNTIME_KEYS: tuple[str, ...] = ("providers", "intra_op_threads", "allow_spinning")


class _LegacyOnnxRuntimeEnv(PydanticBaseSettingsSource):
    """Reads <prefix>PROVIDERS, <prefix>INTRA_OP_THREADS and <prefix>ALLOW_SPINNING, which are no longer
    fields; `_fold_legacy_keys` moves them under `onnxruntime` (RTDETECT_ONNXRUNTIME__PROVIDERS wins)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", "")).upper()
        environ = {k.upper(): v for k, v in os.environ.items()}
        return {
            k: environ[f"{prefix}{k.upper()}"]
            for k in LEGACY_ONNXRUNTIME_KEYS
            if f"{prefix}{k.upper()}" in environ
        }


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Model and engine.
    model_dir: Path = Field(default_factory=default_model_dir)
    # "auto": the fastest backend x precision that passes the accuracy gate here, timed at the first start
    # and cached in the model directory (inference/autoselect.py). A name: that backend.
    backend: str = "auto"
    # "auto": by the gate and the timing (fp32 only until `python -m engine_build precision` has run).
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    # Seconds of timing per candidate when backend or precision is "auto" and no cached choice fits.
    autoselect_time_s: float = Field(default=0.5, gt=0.0, le=30.0)
    # Typed options per backend (inference/engines/options.py); only the chosen backend's apply.
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions)
    openvino: OpenVinoOptions = Field(default_factory=OpenVinoOptions)
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)
    torch: TorchOptions = Field(default_factory=TorchOptions)
    triton: TritonOptions = Field(default_factory=TritonOptions)
    # The Triton URL's flat spelling (RTDETECT_TRITON_URL, RTDETECT_MEDIA_TRITON_URL), as docs/scale.md and
    # `make triton` print it: folded into `triton.url`; RTDETECT_TRITON__URL wins when both are set.
    triton_url: str | None = None
    # Options of an explicitly chosen backend as JSON, merged over its typed options above (older spelling).
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
    # Reverse proxies (the HTTPS front) whose X-Forwarded-For names the client, for per-client limits
    # (inference/proxies.py): addresses or CIDR networks. Empty: the header is never believed.
    trusted_proxies: EnvList = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Nested options per backend: RTDETECT_OPENVINO__HINT=throughput, RTDETECT_MEDIA_ONNXRUNTIME__PROVIDERS=...
        # (set here, not in model_config, which each service's subclass replaces).
        env = EnvSettingsSource(settings_cls, env_nested_delimiter="__")
        legacy = _LegacyOnnxRuntimeEnv(settings_cls)
        return init_settings, env, legacy, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _fold_triton_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("triton_url") is None:
            return data
        data = dict(data)
        url = data.pop("triton_url")
        nested = data.get("triton") or {}
        if isinstance(nested, BaseModel):
            nested = nested.model_dump(exclude_unset=True)
        data["triton"] = {"url": url, **nested}
        return data

    @model_validator(mode="before")
    @classmethod
    def _fold_legacy_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_ONNXRUNTIME_KEYS):
            return data
        data = dict(data)
        legacy = {k: data.pop(k) for k in LEGACY_ONNXRUNTIME_KEYS if k in data}
        legacy = {k: v for k, v in legacy.items() if v is not None}
        backend = data.get("backend", "auto")
        if legacy and backend not in ("auto", "onnxruntime"):
            raise ValueError(f"{sorted(legacy)} apply to the onnxruntime backend only, not {backend}")
        nested = data.get("onnxruntime") or {}
        if isinstance(nested, BaseModel):
            nested = nested.model_dump(exclude_unset=True)
        data["onnxruntime"] = {**legacy, **nested}  # the nested spelling wins
        return data

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "auto" and value not in OPTIONS:
            raise ValueError(f"unknown backend {value!r}; choose auto or one of {sorted(OPTIONS)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _engine_options_fit_backend(self) -> Self:
        if self.engine_options:
            if self.backend == "auto":
                raise ValueError(
                    "engine_options needs an explicit backend; with backend=auto set each backend's own "
                    "options, e.g. RTDETECT_OPENVINO__HINT"
                )
            self.backend_options(self.backend)  # unknown keys fail here, naming the backend
        return self

    def backend_options(self, backend: str) -> BackendOptions:
        """The typed options `backend` runs with (validated; engine_options merged for the chosen one)."""
        typed: BackendOptions = getattr(self, backend)
        if backend != self.backend or not self.engine_options:
            return typed
        return validate_options(backend, {**typed.model_dump(exclude_unset=True), **self.engine_options})

    def all_backend_options(self) -> dict[str, BackendOptions]:
        return {name: self.backend_options(name) for name in OPTIONS}

    def detector_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `inference.pipeline.Detector`'s batcher (0 here: None there, by device)."""
        return {
            "max_batch_size": self.max_batch_size or None,
            "max_delay_ms": self.max_delay_ms,
            "max_queue": self.max_queue,
            "workers": self.inference_workers or None,
        }
