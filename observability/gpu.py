"""GPU gauges from NVML (pynvml, package nvidia-ml-py), read in a background thread.

Without an NVIDIA driver `nvmlInit` fails; the sampler then logs once and stays idle, and the GPU metrics are
absent from the exposition (not zero, not an error): a custom collector yields only what was sampled.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("rtdetect.observability")

LABELS = ("gpu", "name")

# metric name -> help text; the sample field of the same key holds the value.
_METRICS: dict[str, str] = {
    "gpu_utilization_ratio": "Fraction of the last sample period during which a kernel ran on the GPU (0..1).",
    "gpu_memory_used_bytes": "GPU memory in use, in bytes.",
    "gpu_memory_total_bytes": "Total GPU memory, in bytes.",
    "gpu_temperature_celsius": "GPU core temperature, in degrees Celsius.",
    "gpu_power_watts": "GPU power draw, in watts.",
}


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    name: str
    values: dict[str, float]  # keys from _METRICS; a metric the GPU does not support is left out


class _GpuCollector(Collector):
    def __init__(self, sampler: GpuSampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        samples = self._sampler.samples()
        for metric, help_text in _METRICS.items():
            family = GaugeMetricFamily(metric, help_text, labels=LABELS)
            for sample in samples:
                if metric in sample.values:
                    family.add_metric([str(sample.index), sample.name], sample.values[metric])
            if family.samples:  # no GPU, or none that reports this metric: no family at all
                yield family

    def describe(self) -> list[GaugeMetricFamily]:
        # Nothing to describe up front: which families exist depends on the hardware.
        return []


class GpuSampler:
    """Samples every visible NVIDIA GPU each `interval_s` seconds into gauges on `registry`.

    `nvml` replaces the pynvml module (tests pass a fake); by default pynvml is imported at start().
    start() and stop() are idempotent; stop() shuts NVML down.
    """

    def __init__(self, registry: CollectorRegistry, interval_s: float = 2.0, *, nvml: Any = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._nvml: Any = nvml
        self._samples: list[GpuSample] = []
        self._samples_lock = threading.Lock()
        self._state_lock = threading.Lock()  # start/stop may come from different threads
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._handles: list[tuple[int, str, Any]] = []
        self._nvml_up = False
        self._told_unavailable = False
        self._failed_reads: set[tuple[int, str]] = set()
        registry.register(_GpuCollector(self))

    @property
    def running(self) -> bool:
        return self._thread is not None

    def samples(self) -> list[GpuSample]:
        with self._samples_lock:
            return list(self._samples)

    def start(self) -> bool:
        """Initialise NVML, take a first sample and start the thread. False (and a log line) without a GPU."""
        with self._state_lock:
            if self._thread is not None:
                return True
            nvml = self._module()
            if nvml is None or not self._init(nvml):
                return False
            self._sample(nvml)
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, args=(nvml,), name="rtdetect-gpu-sampler", daemon=True
            )
            self._thread.start()
            log.info(
                "sampling %d GPU(s) every %.1f s: %s",
                len(self._handles),
                self.interval_s,
                ", ".join(f"{i}: {name}" for i, name, _ in self._handles),
            )
            return True

    def stop(self) -> None:
        with self._state_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stop.set()
                # An NVML call can take a while on a busy driver; the thread is a daemon, so never hang here.
                thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._shutdown(self._nvml)
            self._handles = []
            with self._samples_lock:
                self._samples = []

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as e:
                self._unavailable(f"pynvml is not installed ({e})")
                return None
        return self._nvml

    def _init(self, nvml: Any) -> bool:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            self._unavailable(f"NVML cannot start: {e}")
            return False
        self._nvml_up = True
        try:
            handles = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                handles.append((index, _text(nvml.nvmlDeviceGetName(handle)), handle))
        except nvml.NVMLError as e:
            log.warning("NVML started but cannot list the GPUs: %s; GPU metrics disabled", e)
            self._shutdown(nvml)
            return False
        if not handles:
            self._unavailable("NVML sees no GPU")
            self._shutdown(nvml)
            return False
        self._handles = handles
        return True

    def _shutdown(self, nvml: Any) -> None:
        if not self._nvml_up:
            return
        self._nvml_up = False
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as e:
            log.warning("nvmlShutdown failed: %s", e)

    def _unavailable(self, reason: str) -> None:
        if not self._told_unavailable:
            self._told_unavailable = True
            log.info("no NVIDIA GPU metrics: %s", reason)

    def _run(self, nvml: Any) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(nvml)

    def _sample(self, nvml: Any) -> None:
        samples = [
            GpuSample(index, name, self._read(nvml, index, handle)) for index, name, handle in self._handles
        ]
        with self._samples_lock:
            self._samples = samples

    def _read(self, nvml: Any, index: int, handle: Any) -> dict[str, float]:
        def utilization() -> dict[str, float]:
            return {"gpu_utilization_ratio": nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0}

        def memory() -> dict[str, float]:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            return {"gpu_memory_used_bytes": float(info.used), "gpu_memory_total_bytes": float(info.total)}

        def temperature() -> dict[str, float]:
            celsius = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            return {"gpu_temperature_celsius": float(celsius)}

        def power() -> dict[str, float]:
            return {"gpu_power_watts": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}  # milliwatts

        values: dict[str, float] = {}
        for read in (utilization, memory, temperature, power):
            try:
                values.update(read())
            except nvml.NVMLError as e:
                # Some GPUs do not report power or temperature (NotSupported), a lost GPU reports nothing:
                # leave the metric out rather than export a stale or made-up value. Say so once per reading.
                if (index, read.__name__) not in self._failed_reads:
                    self._failed_reads.add((index, read.__name__))
                    log.warning("GPU %d: cannot read its %s: %s", index, read.__name__, e)
        return values


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes for names.
    return value.decode(errors="replace") if isinstance(value, bytes) else value
