"""Dynamic micro-batching: concurrent callers (HTTP requests, WebRTC peers) share engine calls.

One worker task waits for a free inference slot, takes the first waiting request, gathers more for at most
`max_delay_ms` (up to `max_batch_size`), stacks them and runs the engine in one of `workers` dedicated
threads, so inference never blocks the event loop. Each caller gets back its own row of every output.

`workers` > 1 runs that many batches at once (the engine must allow concurrent `infer` calls). On a CPU
this is the throughput setting: two single-threaded engine runs in parallel keep both cores busy while
one of them waits for the next batch, where one two-threaded run leaves a core idle at every hand-off
and loses time whenever the HTTP or decoding work preempts one of its threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from inference.errors import InferenceError, OverloadedError
from inference.observer import InferenceObserver, NullObserver
from inference.ratelog import RateLimitedLog

log = logging.getLogger("rtdetect.inference")

BatchOutput = tuple[dict[str, np.ndarray], int, float]


@dataclass(slots=True)
class _Request:
    tensor: np.ndarray
    future: asyncio.Future[BatchOutput]


class MicroBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], dict[str, np.ndarray]],
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int = 256,
        workers: int = 1,
        observer: InferenceObserver | None = None,
        failure_log_interval_s: float = 10.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._infer = infer
        # A failing engine fails every batch (several a second per peer): one line per kind per interval.
        self._failure_log = RateLimitedLog(log, failure_log_interval_s)
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.max_queue = max_queue
        self.workers = workers
        self._observer: InferenceObserver = observer or NullObserver()
        self._queue: asyncio.Queue[_Request] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rtdetect-infer")
        self._worker = asyncio.create_task(self._run(), name="rtdetect-batcher")

    async def close(self) -> None:
        """Stop the worker, fail every pending request, and wait for the inference thread to finish."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        batches, self._batches = self._batches, set()
        for task in batches:
            task.cancel()
        await asyncio.gather(*batches, return_exceptions=True)  # each fails its own requests
        pending: list[_Request] = []
        if self._queue is not None:
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
        for request in pending:
            _fail(request, InferenceError("the batcher was closed before this request finished"))
        self._notify_depth(0)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # A batch already inside the engine cannot be interrupted; wait for it off the event loop.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def submit(self, tensor: np.ndarray) -> BatchOutput:
        """One image's tensor (no batch axis) -> (its outputs with a batch axis of 1, batch size, seconds).

        Raises OverloadedError when the queue is full and InferenceError when the engine fails.
        """
        if self._queue is None or not self.running:
            raise InferenceError("the batcher is not running")
        future: asyncio.Future[BatchOutput] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(tensor, future))
        except asyncio.QueueFull as e:
            raise OverloadedError(f"inference queue is full ({self.max_queue} waiting); retry later") from e
        self._notify_depth(self._queue.qsize())
        # If the caller is cancelled, so is `future`; the worker skips or ignores it.
        return await future

    async def _run(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            # Gather only once a worker is free: while all are busy, requests wait in the queue and
            # the next batch forms from all of them.
            await self._slots.acquire()
            gathered: list[_Request] = []
            try:
                await self._collect(self._queue, gathered)
            except BaseException:
                self._slots.release()
                for request in gathered:  # out of the queue already: close() would not see them
                    _fail(request, InferenceError("the batcher was closed before this request finished"))
                raise
            self._notify_depth(self._queue.qsize())
            # Callers cancelled while waiting need no inference.
            batch = tuple(r for r in gathered if not r.future.done())
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch), name="rtdetect-batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)
            # The task owns the requests now; holding them here would keep the last batch's input
            # tensors alive while the worker waits for the next request.
            del gathered, batch

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if self._slots is not None:
            self._slots.release()

    async def _collect(self, queue: asyncio.Queue[_Request], batch: list[_Request]) -> None:
        batch.append(await queue.get())
        deadline = asyncio.get_running_loop().time() + self.max_delay_ms / 1000.0
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            try:
                # Queue.get is cancellation-safe: on timeout no request is lost, it stays queued.
                async with asyncio.timeout_at(deadline):
                    batch.append(await queue.get())
            except TimeoutError:
                break

    async def _run_batch(self, batch: tuple[_Request, ...]) -> None:
        try:
            await self._infer_batch(batch)
        finally:
            # Cancelled by close() (or anything unforeseen): no caller is left waiting forever.
            for request in batch:
                _fail(request, InferenceError("the batcher was closed before this request finished"))

    async def _infer_batch(self, batch: tuple[_Request, ...]) -> None:
        assert self._executor is not None
        n = len(batch)
        try:
            # A batch of one (the CPU default) is a view: no 2 MB copy per request.
            stacked = batch[0].tensor[None] if n == 1 else np.stack([r.tensor for r in batch])
            start = time.perf_counter()
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, stacked)
            seconds = time.perf_counter() - start
            rows = _split(outputs, n)
        except Exception as e:  # any failure belongs to this batch's callers, never to the worker
            self._failure_log.warning(type(e).__name__, "inference failed for a batch of %d: %s", n, e)
            for request in batch:
                error = InferenceError(f"inference failed for a batch of {n}: {e}")
                error.__cause__ = e
                _fail(request, error)
            return
        try:
            self._observer.on_batch(n, seconds)
        except Exception:  # metrics must never stop inference; say so loudly instead
            log.exception("observer.on_batch failed")
        for request, row in zip(batch, rows, strict=True):
            if not request.future.done():
                request.future.set_result((row, n, seconds))

    def _notify_depth(self, depth: int) -> None:
        try:
            self._observer.on_queue_depth(depth)
        except Exception:  # metrics must never stop inference; say so loudly instead
            log.exception("observer.on_queue_depth failed")


def _split(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """Per-request views of each output (batch axis kept, size 1)."""
    for name, arr in outputs.items():
        if arr.ndim < 1 or arr.shape[0] != n:
            raise InferenceError(f"output {name!r} has shape {arr.shape} for a batch of {n}")
    return [{name: arr[i : i + 1] for name, arr in outputs.items()} for i in range(n)]


def _fail(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
