"""The engine choice: backend x precision, fastest among those the accuracy gate lets through.

With `backend=auto` (or `precision=auto`) the first start on a machine times every eligible combination
(a fraction of a second each), keeps the fastest and caches the choice in the model directory, keyed by the
machine (CPU model and flags, GPU), the runtime versions, the model's hash and the candidates; later starts
read it back. A combination the gate measured under its threshold is never served, also when chosen
explicitly. Without a gate record only fp32 is eligible for an automatic choice. No server imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.engines import Engine, create_engine, engine_precisions
from inference.engines.options import PRECISIONS, BackendOptions, int8_onnx_file
from inference.errors import BackendUnavailableError, InferenceError, ModelLoadError, RtdetectError
from inference.gate import GATE_FILENAME, GateRecord, current_machine, describe, file_sha256, load_gate
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

# Backends an automatic choice considers, in the order they are timed. torch is the parity baseline only.
AUTO_BACKENDS: tuple[str, ...] = ("tensorrt", "openvino", "onnxruntime")
CHOICE_FILENAME = "engine_choice.json"
MAX_CACHED_CHOICES = 8  # one per machine sharing the model directory, roughly
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch")
MIN_RUNS, MAX_RUNS = 3, 500
TIMING_ROUNDS = 3  # each candidate is timed in this many turns of time_per_candidate_s / TIMING_ROUNDS


class GateRefusedError(ModelLoadError):
    """The chosen backend x precision lost too much accuracy against FP32 on this model: never served."""


@dataclass(frozen=True, order=True)
class Combo:
    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}"


@dataclass(frozen=True)
class Selection:
    backend: str
    precision: str
    how: str  # "explicit", "only candidate", "cached" or "measured"
    gate_score: float | None  # mAP@0.5:0.95 against FP32 as the gate measured it; None: not measured
    figures_ms: dict[str, float] = field(default_factory=dict)  # "backend/precision" -> ms per image, batch 1


class EngineSource(Protocol):
    """Where candidates come from: the registry in serving, small fakes in tests."""

    def precisions(self, backend: str) -> tuple[str, ...]: ...  # BackendUnavailableError: not here

    def create(self, backend: str, precision: str) -> Engine: ...


class RegistrySource:
    def __init__(self, model_dir: Path, spec: ModelSpec, options: Mapping[str, BackendOptions]) -> None:
        self.model_dir, self.spec, self.options = model_dir, spec, options

    def precisions(self, backend: str) -> tuple[str, ...]:
        return engine_precisions(backend, self.model_dir, self.spec, self.options.get(backend))

    def create(self, backend: str, precision: str) -> Engine:
        return create_engine(
            backend, self.model_dir, self.spec, self.options.get(backend), precision=precision
        )


def time_engine(engine: Engine, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median ms of single-image calls of a loaded engine over about `budget_s` (warmup makes the input in
    the engine's own dtype)."""
    engine.warmup((1,))
    samples: list[float] = []
    deadline = clock() + budget_s
    while len(samples) < MIN_RUNS or (clock() < deadline and len(samples) < MAX_RUNS):
        t0 = clock()
        engine.warmup((1,))
        samples.append((clock() - t0) * 1e3)
    return statistics.median(samples)


# --- the gate's verdicts -----------------------------------------------------------------------------------


def verdict(combo: Combo, gate: GateRecord | None) -> bool | None:
    """True: may be served. False: the gate measured it under the threshold. None: not measured
    (fp32 needs no measurement: it is the reference)."""
    measured = gate.passed(combo.backend, combo.precision) if gate is not None else None
    if measured is not None:
        return measured
    return True if combo.precision == "fp32" else None


def _score(combo: Combo, gate: GateRecord | None) -> float | None:
    return gate.score(combo.backend, combo.precision) if gate is not None else None


def _describe_refusals(refused: Sequence[Combo], gate: GateRecord) -> str:
    parts = [f"{c} (mAP {_score(c, gate):.3f})" for c in refused]
    return (
        f"accuracy gate (mAP threshold {gate.threshold:.2f} against fp32): never serving {', '.join(parts)}"
    )


# --- the cache ---------------------------------------------------------------------------------------------


def runtime_versions() -> dict[str, str]:
    versions = {}
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def model_hashes(model_dir: Path, spec: ModelSpec) -> dict[str, str]:
    hashes = {}
    for name in (spec.onnx_file, int8_onnx_file(spec.onnx_file)):
        path = model_dir / name
        if path.is_file():
            hashes[name] = file_sha256(path)
    return hashes


def cache_key(
    model_dir: Path,
    spec: ModelSpec,
    candidates: Sequence[Combo],
    options: Mapping[str, BackendOptions],
) -> dict[str, Any]:
    """What the timing depends on. Any change here means time again."""
    backends = sorted({c.backend for c in candidates})
    return {
        "machine": current_machine().model_dump(mode="json"),
        "runtimes": runtime_versions(),
        "model": model_hashes(model_dir, spec),
        "candidates": [str(c) for c in sorted(candidates)],
        "options": {b: options[b].model_dump(mode="json") for b in backends if b in options},
    }


class ChoiceCache:
    """`<model_dir>/engine_choice.json`: the last choices, one per key (a model directory may be shared)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def digest(key: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock beside the cache file (none where the directory is read-only)."""
        try:
            handle = self.path.with_name(f".{self.path.name}.lock").open("a")
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable engine choice cache %s: %s", self.path, e)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: Mapping[str, Any]) -> tuple[Combo, dict[str, float]] | None:
        entry = self._entries().get(self.digest(key))
        try:
            combo = Combo(str(entry["backend"]), str(entry["precision"]))  # type: ignore[index]
            figures = {str(k): float(v) for k, v in entry.get("figures_ms", {}).items()}  # type: ignore[union-attr]
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        return combo, figures

    def put(self, key: Mapping[str, Any], combo: Combo, figures: Mapping[str, float]) -> None:
        entries = self._entries()
        entries[self.digest(key)] = {
            "backend": combo.backend,
            "precision": combo.precision,
            "figures_ms": dict(figures),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key": dict(key),
        }
        # Oldest out first (dicts keep insertion order; a re-measured key moves to the end).
        kept = dict(list(entries.items())[-MAX_CACHED_CHOICES:])
        tmp = self.path.with_name(f".{self.path.name}.{time.monotonic_ns()}.tmp")
        try:
            tmp.write_text(json.dumps({"entries": kept}, indent=2) + "\n")
            tmp.replace(self.path)  # atomic: two servers starting at once never read half a file
        except OSError as e:
            log.warning("cannot cache the engine choice in %s: %s", self.path, e)
            tmp.unlink(missing_ok=True)


# --- the choice ----------------------------------------------------------------------------------------------


def _candidates(source: EngineSource, backend: str, precision: str) -> tuple[list[Combo], dict[str, str]]:
    """Every backend x precision that can run here and fits the request; and, per backend, what it can run
    here (or why it cannot run at all)."""
    backends = AUTO_BACKENDS if backend == "auto" else (backend,)
    combos: list[Combo] = []
    runs: dict[str, str] = {}
    for name in backends:
        try:
            available = source.precisions(name)
        except BackendUnavailableError as e:
            if backend != "auto":
                raise
            log.info("auto engine: %s is not available here: %s", name, e)
            runs[name] = "not available"
            continue
        runs[name] = ", ".join(available) or "nothing"
        combos += [Combo(name, p) for p in available if precision in ("auto", p)]
    return combos, runs


def select_engine(
    source: EngineSource,
    *,
    backend: str = "auto",
    precision: str = "auto",
    gate: GateRecord | None = None,
    cache: ChoiceCache | None = None,
    key: Callable[[Sequence[Combo]], Mapping[str, Any]] | None = None,
    timer: Callable[[Engine], float] | None = None,
) -> tuple[Selection, Engine | None]:
    """The backend x precision to serve, and the chosen engine already loaded when timing loaded it.

    `timer` times one loaded engine (ms per image); `key` makes the cache key from the candidates.
    Raises GateRefusedError for an explicit choice the gate refuses and BackendUnavailableError when
    nothing eligible can run here.
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise BackendUnavailableError(
            f"unknown precision {precision!r}; choose auto or one of {list(PRECISIONS)}"
        )
    combos, runs = _candidates(source, backend, precision)
    what = f"backend={backend}, precision={precision}"
    if not combos:
        can = "; ".join(f"{b}: {r}" for b, r in runs.items())
        raise BackendUnavailableError(f"nothing here can serve {what} (what runs here: {can})")

    verdicts = {c: verdict(c, gate) for c in combos}
    refused = [c for c, v in verdicts.items() if v is False]
    if refused and gate is not None:
        log.warning("%s", _describe_refusals(refused, gate))
    if gate is None and any(c.precision != "fp32" for c in combos):
        log.warning(
            "no accuracy gate record (%s) for this model: only fp32 is eligible for an automatic choice; "
            "run `python -m engine_build precision` to measure the others",
            GATE_FILENAME,
        )
    if backend != "auto" and precision != "auto":
        (combo,) = combos  # one backend, one precision
        if verdicts[combo] is False:
            assert gate is not None
            raise GateRefusedError(
                f"{combo} is under the accuracy gate's threshold on this model (mAP {_score(combo, gate):.3f} "
                f"< {gate.threshold:.2f} against fp32): choose another precision or backend"
            )
        if verdicts[combo] is None:
            log.warning("%s was chosen explicitly but the accuracy gate has not measured it", combo)
        return Selection(combo.backend, combo.precision, "explicit", _score(combo, gate)), None

    eligible = [c for c in combos if verdicts[c]]
    if not eligible:
        # An explicit choice the gate has not measured (e.g. backend=tensorrt with only an fp16 engine
        # built): served, with a warning; what the gate refused never is.
        eligible = [c for c in combos if verdicts[c] is None]
        if backend == "auto" and precision == "auto":
            eligible = []
        if not eligible:
            raise GateRefusedError(
                f"nothing eligible for {what}: the accuracy gate refuses {[str(c) for c in refused]}"
            )
        log.warning(
            "%s: not measured by the accuracy gate, served because it was asked for",
            ", ".join(map(str, eligible)),
        )
    if len(eligible) == 1:
        (combo,) = eligible
        return Selection(combo.backend, combo.precision, "only candidate", _score(combo, gate)), None

    cache_key_value = key(eligible) if key is not None else None
    if cache is None or cache_key_value is None:
        return _measure(source, eligible, gate, timer or _default_timer, None, None)
    # One process times while the others wait and then read its choice: the detect API and the media
    # server start together, and timing side by side would skew both measurements.
    with cache.lock():
        hit = cache.get(cache_key_value)
        if hit is not None and hit[0] in eligible:
            combo, figures = hit
            log.info("auto engine: %s, cached in %s (%s)", combo, cache.path, _figures_text(combo, figures))
            return Selection(combo.backend, combo.precision, "cached", _score(combo, gate), figures), None
        return _measure(source, eligible, gate, timer or _default_timer, cache, cache_key_value)


def _default_timer(engine: Engine) -> float:
    return time_engine(engine, 0.5 / TIMING_ROUNDS)


def _figures_text(chosen: Combo, figures: Mapping[str, float]) -> str:
    best = figures.get(str(chosen))
    others = ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(figures.items(), key=lambda kv: kv[1]) if k != str(chosen)
    )
    head = f"{best:.1f} ms per image at batch 1" if best is not None else "not timed"
    return f"{head}; {others} ms" if others else head


def _measure(
    source: EngineSource,
    eligible: Sequence[Combo],
    gate: GateRecord | None,
    timer: Callable[[Engine], float],
    cache: ChoiceCache | None,
    key: Mapping[str, Any] | None,
) -> tuple[Selection, Engine | None]:
    log.info(
        "auto engine: timing %d candidates on this machine (%s); once, the choice is cached",
        len(eligible),
        ", ".join(map(str, eligible)),
    )
    loaded: dict[Combo, Engine] = {}
    for combo in eligible:
        engine = source.create(combo.backend, combo.precision)
        try:
            engine.load()
        except ModelLoadError as e:
            log.warning("auto engine: %s cannot run here: %s", combo, e)
            engine.close()
            continue
        loaded[combo] = engine
    # Rounds in turn, not one candidate after the other: a burst of load from a neighbour on a shared
    # machine then slows every candidate alike instead of sinking one.
    samples: dict[Combo, list[float]] = {c: [] for c in loaded}
    for _ in range(TIMING_ROUNDS):
        for combo, engine in list(loaded.items()):
            try:
                samples[combo].append(timer(engine))
            except RtdetectError as e:
                log.warning("auto engine: %s failed while being timed: %s", combo, e)
                loaded.pop(combo).close()
                samples.pop(combo)
    figures = {str(c): round(statistics.median(v), 3) for c, v in samples.items()}
    for i, (combo, ms) in enumerate(sorted(samples.items(), key=lambda kv: statistics.median(kv[1])), 1):
        log.info("auto engine: [%d/%d] %s %.2f ms per image", i, len(samples), combo, statistics.median(ms))
    if not samples:
        raise BackendUnavailableError(f"none of {[str(c) for c in eligible]} could be loaded here")
    combo = min(samples, key=lambda c: statistics.median(samples[c]))
    for other, engine in loaded.items():
        if other != combo:
            engine.close()
    log.info(
        "auto engine: chose %s (%s) on %s", combo, _figures_text(combo, figures), describe(current_machine())
    )
    if cache is not None and key is not None:
        cache.put(key, combo, figures)
    return Selection(combo.backend, combo.precision, "measured", _score(combo, gate), figures), loaded[combo]


# --- the engine the servers hold -----------------------------------------------------------------------------


class SelectedEngine:
    """An Engine whose `load` first decides what to run (explicit settings, the cached choice or a timing
    run, always under the gate), then loads it; everything else goes to the chosen engine."""

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        backend: str = "auto",
        precision: str = "auto",
        options: Mapping[str, BackendOptions] | None = None,
        time_per_candidate_s: float = 0.5,
        source: EngineSource | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.spec = spec
        self.requested = (backend, precision)
        self.options = dict(options or {})
        self.time_per_candidate_s = time_per_candidate_s
        self.source = source or RegistrySource(self.model_dir, spec, self.options)
        self.backend = backend
        self.precision = precision
        self.provider = "not loaded"
        self.max_batch_size = 1
        self.max_concurrency = 1
        self.on_gpu = False
        self.selection: Selection | None = None
        self.gate_score: float | None = None
        self._engine: Engine | None = None

    def load(self) -> None:
        onnx = self.model_dir / self.spec.onnx_file
        int8 = self.model_dir / int8_onnx_file(self.spec.onnx_file)
        gate = load_gate(
            self.model_dir,
            onnx_sha256=file_sha256(onnx) if onnx.is_file() else None,
            machine=current_machine(),
            int8_sha256=file_sha256(int8) if int8.is_file() else None,
        )
        backend, precision = self.requested
        selection, engine = select_engine(
            self.source,
            backend=backend,
            precision=precision,
            gate=gate,
            cache=ChoiceCache(self.model_dir / CHOICE_FILENAME),
            key=lambda combos: cache_key(self.model_dir, self.spec, combos, self.options),
            timer=lambda e: time_engine(e, self.time_per_candidate_s / TIMING_ROUNDS),
        )
        if engine is None:
            engine = self.source.create(selection.backend, selection.precision)
            engine.load()
        self._engine, self.selection, self.gate_score = engine, selection, selection.gate_score
        self.backend, self.precision, self.provider = engine.backend, engine.precision, engine.provider
        self.max_batch_size, self.max_concurrency = engine.max_batch_size, engine.max_concurrency
        self.on_gpu = engine.on_gpu
        # The hot path skips this wrapper.
        self.infer = engine.infer  # type: ignore[method-assign]
        score = "not measured" if self.gate_score is None else f"{self.gate_score:.3f}"
        log.info(
            "engine: %s %s (%s, %s), accuracy gate mAP %s", self.backend, self.precision, self.provider,
            selection.how, score,
        )  # fmt: skip

    def _inner(self) -> Engine:
        if self._engine is None:
            raise InferenceError("the engine is not loaded")
        return self._engine

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        self._inner().warmup(batch_sizes)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._inner().infer(batch)

    def serving_problem(self) -> str | None:
        """The chosen engine's own answer where it has one (an engine tier such as Triton); else None."""
        if self._engine is None:
            return "the engine is not loaded"
        probe = getattr(self._engine, "serving_problem", None)
        return None if probe is None else probe()

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        self.__dict__.pop("infer", None)
