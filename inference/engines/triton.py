"""Triton Inference Server backend: the engine tier shared by many server processes (KServe v2 over gRPC).

Triton batches requests from every process that talks to it (dynamic batching), so each process sends
single images, several at once (`max_in_flight`), and lets Triton form the batches. tritonclient's asyncio
gRPC client runs on one event loop thread of this engine; `infer` (called from the batcher's worker threads)
hands each request to it and waits. With `shared_memory="system"` (Triton on the same host) the tensors go
through POSIX shared memory regions, one input and one output region per request slot, instead of the gRPC
message.

A Triton that is down or restarting makes `infer` raise InferenceError (the caller counts it; the live path
keeps sending video without boxes) and the next call tries again: the gRPC channel reconnects by itself, and
shared memory regions are registered again after a failure (a restarted Triton has forgotten them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from inference.engines.options import BackendOptions, TritonOptions
from inference.errors import BackendUnavailableError, EngineUnavailableError, InferenceError, ModelLoadError
from inference.preprocess import input_shape
from inference.spec import ModelSpec

log = logging.getLogger("rtdetect.inference")

T = TypeVar("T")
# KServe v2 datatypes <-> numpy.
_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
}
READY_POLL_S = 0.25
# Readiness probes (/readyz, /room) ask Triton's model-ready API at most this often, however many call.
READY_CACHE_S = 1.0
# gRPC statuses that mean "Triton is not there right now" rather than "this request is wrong".
_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def _import_client() -> Any:
    try:
        import tritonclient.grpc.aio as grpc_aio
    except ImportError as e:
        raise BackendUnavailableError("tritonclient is not installed: pip install tritonclient") from e
    return grpc_aio


@dataclass
class _Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis

    @property
    def dtype(self) -> np.dtype[Any]:
        return _DTYPES[self.datatype]

    def nbytes(self, batch: int) -> int:
        return int(batch * int(np.prod(self.dims)) * self.dtype.itemsize)


@dataclass
class _Slot:
    """One request's shared memory: an input region and one region per output."""

    input_name: str
    input_handle: Any
    output_names: dict[str, str]  # tensor -> region name
    output_handles: dict[str, Any]
    registered: bool = False


class TritonEngine:
    backend = "triton"

    def __init__(
        self,
        model_dir: Path,
        spec: ModelSpec,
        *,
        url: str = "127.0.0.1:8701",
        model_name: str = "rtdetect",
        model_version: str = "",
        timeout_s: float = 5.0,
        max_in_flight: int = 8,
        shared_memory: str = "none",
        load_timeout_s: float = 30.0,
        precision: str = "fp32",
    ) -> None:
        if precision != "fp32":
            # The repository holds one model; its precision is whatever was exported into it.
            raise BackendUnavailableError(
                f"the triton backend serves the repository's model as is, not {precision}"
            )
        self.spec = spec
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.shared_memory = shared_memory
        self.precision = precision
        self.provider = "not loaded"
        self.max_batch_size = 1
        self.max_concurrency = max_in_flight
        self.on_gpu = False
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._input: _Tensor | None = None
        self._outputs: list[_Tensor] = []
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all_slots: list[_Slot] = []
        self._ready_lock = threading.Lock()
        self._ready_at = -float("inf")
        self._ready_problem: str | None = None

    @classmethod
    def supported_precisions(
        cls, model_dir: Path, spec: ModelSpec, options: BackendOptions
    ) -> tuple[str, ...]:
        assert isinstance(options, TritonOptions)
        _import_client()
        return ("fp32",)

    # --- the client's event loop --------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        if self._loop is None:
            raise InferenceError("the triton engine is not loaded")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError as e:
            future.cancel()
            raise EngineUnavailableError(f"Triton at {self.url} did not answer within {timeout_s:g} s") from e

    def load(self) -> None:
        grpc_aio = _import_client()
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="rtdetect-triton", daemon=True)
        self._thread.start()
        self._loop = loop

        # gRPC's reconnect backoff grows to minutes by default: a restarted Triton would stay unused that
        # long. Passing channel args replaces tritonclient's, so its message size limits are restated.
        limit = grpc_aio.MAX_GRPC_MESSAGE_SIZE
        channel_args = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

        async def connect() -> Any:
            return grpc_aio.InferenceServerClient(self.url, channel_args=channel_args)

        self._client = self._run(connect(), 10.0)
        try:
            self._run(self._wait_ready(), self.load_timeout_s + 5.0)
            metadata, config, server = self._run(self._describe(), self.timeout_s + 5.0)
        except InferenceError as e:
            self.close()
            raise ModelLoadError(str(e)) from e
        self._check(metadata, config)
        kinds = {g.get("kind", "") for g in config.get("instance_group", [])}
        self.on_gpu = "KIND_GPU" in kinds
        platform = config.get("platform") or config.get("backend", "?")
        self.provider = f"Triton {server.get('version', '?')} at {self.url} ({self.model_name}, {platform})"
        if self.shared_memory == "system":
            self._create_slots()
        log.info(
            "triton: %s, max batch %d, %d in flight, shared memory %s",
            self.provider,
            self.max_batch_size,
            self.max_concurrency,
            self.shared_memory,
        )

    async def _wait_ready(self) -> None:
        """Until the model is ready (Triton's model-ready API) or `load_timeout_s` has passed."""
        deadline = time.monotonic() + self.load_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                if await self._client.is_model_ready(self.model_name, self.model_version):
                    return
                last = f"model {self.model_name!r} is not ready"
            except Exception as e:  # tritonclient raises InferenceServerException or grpc errors
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
            await asyncio.sleep(READY_POLL_S)
        raise InferenceError(f"Triton at {self.url} not ready within {self.load_timeout_s:g} s: {last}")

    def serving_problem(self) -> str | None:
        """Why the model cannot be served now (Triton down or restarting, the model unloaded), or None.

        Triton can go away after start: the servers' readiness follows its model-ready API, so a balancer
        stops sending work that would only fail. Answers from a cache at most READY_CACHE_S old."""
        with self._ready_lock:
            if time.monotonic() - self._ready_at < READY_CACHE_S:
                return self._ready_problem
            problem: str | None = None
            if self._client is None:
                problem = "the triton engine is not loaded"
            else:
                try:
                    ready = self._run(
                        self._client.is_model_ready(self.model_name, self.model_version),
                        min(self.timeout_s, 2.0),
                    )
                    if not ready:
                        problem = f"model {self.model_name!r} is not ready on Triton at {self.url}"
                except Exception as e:  # InferenceError from _run, tritonclient's or gRPC's own errors
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    problem = f"Triton at {self.url} does not answer: {first}"
            self._ready_at, self._ready_problem = time.monotonic(), problem
            return problem

    async def _describe(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        metadata = await self._client.get_model_metadata(self.model_name, self.model_version, as_json=True)
        config = await self._client.get_model_config(self.model_name, self.model_version, as_json=True)
        server = await self._client.get_server_metadata(as_json=True)
        return metadata, config.get("config", config), server

    def _check(self, metadata: dict[str, Any], config: dict[str, Any]) -> None:
        """The served model must take the spec's input and give the decoder's outputs."""
        inputs = {t["name"]: t for t in metadata.get("inputs", [])}
        outputs = {t["name"]: t for t in metadata.get("outputs", [])}
        name = self.spec.input_name
        if name not in inputs:
            raise ModelLoadError(
                f"Triton's {self.model_name!r} has no input {name!r} (inputs: {sorted(inputs)})"
            )
        batched = int(config.get("max_batch_size", 0)) > 0

        def tensor(t: dict[str, Any]) -> _Tensor:
            dims = tuple(int(d) for d in t.get("shape", []))
            return _Tensor(t["name"], t["datatype"], dims[1:] if batched else dims)

        self._input = tensor(inputs[name])
        want = np.dtype(self.spec.input_dtype)
        if self._input.datatype not in _DTYPES or self._input.dtype != want:
            raise ModelLoadError(
                f"Triton's {self.model_name!r} takes {self._input.datatype} but model.json says "
                f"{self.spec.input_dtype}: write the repository again from this model directory"
            )
        if self._input.dims != tuple(input_shape(self.spec)):
            raise ModelLoadError(
                f"Triton's {self.model_name!r} takes {list(self._input.dims)} per image, the spec "
                f"{list(input_shape(self.spec))}"
            )
        needed = self.spec.decoder.output_names
        missing = [n for n in needed if n not in outputs]
        if missing:
            raise ModelLoadError(
                f"Triton's {self.model_name!r} lacks outputs {missing} (has {sorted(outputs)})"
            )
        self._outputs = [tensor(outputs[n]) for n in needed]
        if any(d < 0 for t in self._outputs for d in t.dims) and self.shared_memory == "system":
            raise ModelLoadError("shared_memory=system needs fixed output shapes (the config has -1)")
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1

    # --- shared memory -------------------------------------------------------------------------------------

    def _create_slots(self) -> None:
        from tritonclient.utils import shared_memory as shm

        assert self._input is not None
        tag = f"rtdetect_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        for i in range(self.max_concurrency):
            name = f"{tag}_{i}_in"
            handle = shm.create_shared_memory_region(
                name, f"/{name}", self._input.nbytes(self.max_batch_size)
            )
            out_names = {t.name: f"{tag}_{i}_{t.name}" for t in self._outputs}
            out_handles = {
                t.name: shm.create_shared_memory_region(
                    out_names[t.name], f"/{out_names[t.name]}", t.nbytes(self.max_batch_size)
                )
                for t in self._outputs
            }
            slot = _Slot(name, handle, out_names, out_handles)
            self._all_slots.append(slot)
            self._slots.put(slot)

    async def _register(self, slot: _Slot) -> None:
        assert self._input is not None
        regions = [(slot.input_name, self._input.nbytes(self.max_batch_size))]
        regions += [(slot.output_names[t.name], t.nbytes(self.max_batch_size)) for t in self._outputs]
        for name, size in regions:
            # A region left from before a failure (or a Triton that kept it) is replaced.
            try:
                await self._client.unregister_system_shared_memory(name)
            except Exception as e:  # not registered: nothing to replace
                log.debug("unregister %s: %s", name, e)
            await self._client.register_system_shared_memory(name, f"/{name}", size)
        slot.registered = True

    # --- inference -----------------------------------------------------------------------------------------

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        assert self._input is not None
        for n in batch_sizes:
            self.infer(np.zeros((min(n, self.max_batch_size), *self._input.dims), dtype=self._input.dtype))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._client is None or self._input is None:
            raise InferenceError("the triton engine is not loaded")
        if batch.shape[0] > self.max_batch_size:
            raise InferenceError(f"batch of {batch.shape[0]} exceeds Triton's max {self.max_batch_size}")
        batch = np.ascontiguousarray(batch, dtype=self._input.dtype)
        if self.shared_memory != "system":
            return self._run(self._infer(batch, None), self.timeout_s + 1.0)
        slot = self._slots.get()
        try:
            return self._run(self._infer(batch, slot), self.timeout_s + 1.0)
        except InferenceError:
            slot.registered = False  # a restarted Triton has forgotten the regions
            raise
        finally:
            self._slots.put(slot)

    async def _infer(self, batch: np.ndarray, slot: _Slot | None) -> dict[str, np.ndarray]:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        assert self._input is not None
        n = batch.shape[0]
        request = InferInput(self._input.name, list(batch.shape), self._input.datatype)
        outputs = [InferRequestedOutput(t.name) for t in self._outputs]
        try:
            if slot is None:
                request.set_data_from_numpy(batch)
            else:
                from tritonclient.utils import shared_memory as shm

                if not slot.registered:
                    await self._register(slot)
                shm.set_shared_memory_region(slot.input_handle, [batch])
                request.set_shared_memory(slot.input_name, batch.nbytes)
                for t, out in zip(self._outputs, outputs, strict=True):
                    out.set_shared_memory(slot.output_names[t.name], t.nbytes(n))
            result = await self._client.infer(
                self.model_name,
                [request],
                model_version=self.model_version,
                outputs=outputs,
                client_timeout=self.timeout_s,
            )
        except Exception as e:  # InferenceServerException, grpc errors: all mean "no result this time"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            status = str(getattr(e, "status", lambda: "")() or "")
            error = EngineUnavailableError if any(s in status for s in _UNAVAILABLE) else InferenceError
            raise error(f"Triton at {self.url} failed a batch of {n}: {first}") from e
        if slot is None:
            return {t.name: result.as_numpy(t.name) for t in self._outputs}
        from tritonclient.utils import shared_memory as shm

        # Copies: the region is reused by the next request on this slot.
        return {
            t.name: shm.get_contents_as_numpy(slot.output_handles[t.name], t.dtype, (n, *t.dims)).copy()
            for t in self._outputs
        }

    def close(self) -> None:
        loop, client = self._loop, self._client
        self._client = None
        if loop is not None and client is not None:
            try:
                self._run(self._release(client), 5.0)
            except InferenceError as e:
                log.warning("triton: closing: %s", e)
        if self._all_slots:
            from tritonclient.utils import shared_memory as shm

            for slot in self._all_slots:
                for handle in (slot.input_handle, *slot.output_handles.values()):
                    shm.destroy_shared_memory_region(handle)
            self._all_slots.clear()
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5.0)
            loop.close()
        self._loop = None

    async def _release(self, client: Any) -> None:
        for slot in self._all_slots:
            if slot.registered:
                for name in (slot.input_name, *slot.output_names.values()):
                    try:
                        await client.unregister_system_shared_memory(name)
                    except Exception as e:  # Triton gone: it has forgotten them anyway
                        log.debug("unregister %s: %s", name, e)
        await client.close()
