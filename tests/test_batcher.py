"""MicroBatcher with fake engines: every wait is on an event or a future with a timeout, never a sleep."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable

import numpy as np
import pytest

from inference.batcher import MicroBatcher
from inference.errors import InferenceError, OverloadedError

TIMEOUT = 10.0


class RecordingObserver:
    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []
        self.depths: list[int] = []

    def on_batch(self, batch_size: int, inference_seconds: float) -> None:
        self.batches.append((batch_size, inference_seconds))

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


class GatedEngine:
    """Fake infer that echoes each row's content (so a mixed-up row is caught) and can be held at a gate.

    `entered` is set when a batch reaches the engine; the batch then waits for `gate`.
    """

    def __init__(self, *, gated: bool = False, fail_when: Callable[[np.ndarray], bool] | None = None) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.fail_when = fail_when
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.batch_sizes.append(batch.shape[0])
        self.entered.set()
        if not self.gate.wait(TIMEOUT):
            raise RuntimeError("test gate never opened")
        if self.fail_when is not None and self.fail_when(batch):
            raise ValueError("engine exploded")
        ids = batch.reshape(batch.shape[0], -1)[:, 0]
        return {"echo": batch * 2.0, "id": ids.copy(), "sum": batch.sum(axis=1)}


def tensor(i: int) -> np.ndarray:
    return np.full((2, 3), float(i), np.float32)


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, TIMEOUT), "timed out waiting for the engine"


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until the batcher's internal state matches; bounded by TIMEOUT, never a fixed nap."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - queue depth and hand-over have no event to wait on
            await asyncio.sleep(0)


async def test_each_caller_gets_its_own_row() -> None:
    engine = GatedEngine()
    batcher = MicroBatcher(engine, max_batch_size=4, max_delay_ms=100)
    await batcher.start()
    try:
        # All ten are queued before the worker runs, so the batches are exactly 4, 4 and 2.
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(tensor(i)) for i in range(10))), TIMEOUT
        )
    finally:
        await batcher.close()
    for i, (outputs, batch_size, seconds) in enumerate(results):
        assert outputs["id"].shape == (1,) and outputs["id"][0] == i
        np.testing.assert_array_equal(outputs["echo"], tensor(i)[None] * 2)
        np.testing.assert_array_equal(outputs["sum"], [[2 * i] * 3])
        assert batch_size == (4 if i < 8 else 2) and seconds >= 0
    assert engine.batch_sizes == [4, 4, 2]


async def test_requests_arriving_during_a_slow_batch_are_batched_together() -> None:
    engine = GatedEngine(gated=True)
    observer = RecordingObserver()
    batcher = MicroBatcher(engine, max_batch_size=8, max_delay_ms=0, observer=observer)
    await batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_thread_event(engine.entered)  # batch 1 (alone) is now inside the slow engine
        rest = [asyncio.create_task(batcher.submit(tensor(i))) for i in range(1, 6)]
        await wait_until(lambda: batcher.queue_depth == 5)
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT)
    finally:
        await batcher.close()
    assert [r[1] for r in results] == [1, 5, 5, 5, 5, 5]
    assert [int(r[0]["id"][0]) for r in results] == list(range(6))
    assert [n for n, _ in observer.batches] == [1, 5]
    assert all(seconds > 0 for _, seconds in observer.batches)
    assert 5 in observer.depths  # the queue was reported while it filled


async def test_max_batch_size_is_respected() -> None:
    engine = GatedEngine(gated=True)
    batcher = MicroBatcher(engine, max_batch_size=3, max_delay_ms=0)
    await batcher.start()
    try:
        blocker = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_thread_event(engine.entered)
        tasks = [asyncio.create_task(batcher.submit(tensor(i))) for i in range(1, 8)]
        await wait_until(lambda: batcher.queue_depth == 7)
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(blocker, *tasks), TIMEOUT)
    finally:
        await batcher.close()
    assert engine.batch_sizes == [1, 3, 3, 1]
    assert [int(r[0]["id"][0]) for r in results] == list(range(8))


async def test_waits_up_to_max_delay_for_company() -> None:
    engine = GatedEngine()
    observer = RecordingObserver()
    batcher = MicroBatcher(engine, max_batch_size=2, max_delay_ms=5000, observer=observer)
    await batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_until(lambda: observer.depths == [1] and batcher.queue_depth == 0)  # the worker holds it
        assert not first.done() and engine.batch_sizes == []
        second = asyncio.create_task(batcher.submit(tensor(1)))
        results = await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)
    finally:
        await batcher.close()
    assert [r[1] for r in results] == [2, 2]


async def test_full_queue_raises_overloaded() -> None:
    engine = GatedEngine(gated=True)
    batcher = MicroBatcher(engine, max_batch_size=1, max_delay_ms=0, max_queue=2)
    await batcher.start()
    try:
        running = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_thread_event(engine.entered)
        queued = [asyncio.create_task(batcher.submit(tensor(i))) for i in (1, 2)]
        await wait_until(lambda: batcher.queue_depth == 2)
        with pytest.raises(OverloadedError):
            await batcher.submit(tensor(3))
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(running, *queued), TIMEOUT)
        assert [int(r[0]["id"][0]) for r in results] == [0, 1, 2]
    finally:
        await batcher.close()


async def test_engine_errors_fail_only_their_batch() -> None:
    engine = GatedEngine(gated=True, fail_when=lambda batch: bool((batch == 13).any()))
    batcher = MicroBatcher(engine, max_batch_size=4, max_delay_ms=0)
    await batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_thread_event(engine.entered)
        doomed = [asyncio.create_task(batcher.submit(tensor(i))) for i in (11, 12, 13)]
        await wait_until(lambda: batcher.queue_depth == 3)
        engine.gate.set()
        assert (await asyncio.wait_for(first, TIMEOUT))[0]["id"][0] == 0
        outcomes = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), TIMEOUT)
        for outcome in outcomes:
            assert isinstance(outcome, InferenceError)
            assert isinstance(outcome.__cause__, ValueError)
        # The worker survived: later requests still run.
        outputs, batch_size, _ = await asyncio.wait_for(batcher.submit(tensor(7)), TIMEOUT)
        assert outputs["id"][0] == 7 and batch_size == 1
    finally:
        await batcher.close()


async def test_outputs_without_the_batch_axis_fail_the_batch() -> None:
    batcher = MicroBatcher(lambda batch: {"bad": np.zeros(3)}, max_batch_size=2, max_delay_ms=0)
    await batcher.start()
    try:
        with pytest.raises(InferenceError, match="bad"):
            await asyncio.wait_for(batcher.submit(tensor(1)), TIMEOUT)
    finally:
        await batcher.close()


async def test_cancelled_callers_do_not_break_the_worker() -> None:
    engine = GatedEngine(gated=True)
    batcher = MicroBatcher(engine, max_batch_size=4, max_delay_ms=0)
    await batcher.start()
    try:
        in_engine = asyncio.create_task(batcher.submit(tensor(0)))
        await wait_thread_event(engine.entered)
        waiting = asyncio.create_task(batcher.submit(tensor(1)))
        survivor = asyncio.create_task(batcher.submit(tensor(2)))
        await wait_until(lambda: batcher.queue_depth == 2)
        in_engine.cancel()  # cancelled while its batch is inside the engine
        waiting.cancel()  # cancelled while still queued
        engine.gate.set()
        outputs, batch_size, _ = await asyncio.wait_for(survivor, TIMEOUT)
        assert outputs["id"][0] == 2
        assert batch_size == 1  # the cancelled request was dropped before inference
        assert in_engine.cancelled() and waiting.cancelled()
        assert (await asyncio.wait_for(batcher.submit(tensor(3)), TIMEOUT))[0]["id"][0] == 3
    finally:
        await batcher.close()


async def test_close_fails_pending_and_stops_the_thread() -> None:
    engine = GatedEngine(gated=True)
    batcher = MicroBatcher(engine, max_batch_size=1, max_delay_ms=0)
    await batcher.start()
    in_engine = asyncio.create_task(batcher.submit(tensor(0)))
    await wait_thread_event(engine.entered)
    queued = [asyncio.create_task(batcher.submit(tensor(i))) for i in (1, 2)]
    await wait_until(lambda: batcher.queue_depth == 2)
    closing = asyncio.create_task(batcher.close())
    outcomes = await asyncio.wait_for(asyncio.gather(in_engine, *queued, return_exceptions=True), TIMEOUT)
    assert all(isinstance(o, InferenceError) for o in outcomes)
    engine.gate.set()  # let the batch inside the engine finish so close() can join the thread
    await asyncio.wait_for(closing, TIMEOUT)
    assert not batcher.running
    assert not any(t.name.startswith("rtdetect-infer") for t in threading.enumerate())
    with pytest.raises(InferenceError):
        await batcher.submit(tensor(9))


async def test_close_fails_a_batch_being_gathered() -> None:
    observer = RecordingObserver()
    batcher = MicroBatcher(GatedEngine(), max_batch_size=4, max_delay_ms=60_000, observer=observer)
    await batcher.start()
    pending = asyncio.create_task(batcher.submit(tensor(0)))
    await wait_until(lambda: observer.depths == [1] and batcher.queue_depth == 0)  # held by the worker
    await asyncio.wait_for(batcher.close(), TIMEOUT)
    with pytest.raises(InferenceError):
        await asyncio.wait_for(pending, TIMEOUT)


async def test_inference_runs_off_the_event_loop_in_one_thread() -> None:
    engine = GatedEngine()
    batcher = MicroBatcher(engine, max_batch_size=2, max_delay_ms=0)
    await batcher.start()
    try:
        for i in range(3):
            await asyncio.wait_for(batcher.submit(tensor(i)), TIMEOUT)
    finally:
        await batcher.close()
    assert len(engine.threads) == 1
    (name,) = engine.threads
    assert name.startswith("rtdetect-infer") and name != threading.current_thread().name


async def test_submit_before_start_fails() -> None:
    batcher = MicroBatcher(GatedEngine(), max_batch_size=2, max_delay_ms=0)
    with pytest.raises(InferenceError):
        await batcher.submit(tensor(0))


class CountingEngine:
    """Holds every batch at `gate` and counts how many are inside at once (and from which threads)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.current_thread().name)
        try:
            if not self.gate.wait(TIMEOUT):
                raise RuntimeError("test gate never opened")
            return {"id": batch.reshape(batch.shape[0], -1)[:, 0].copy()}
        finally:
            with self._lock:
                self.inside -= 1


async def test_workers_run_that_many_batches_at_once_and_no_more() -> None:
    engine = CountingEngine()
    batcher = MicroBatcher(engine, max_batch_size=1, max_delay_ms=0, workers=2)
    await batcher.start()
    try:
        calls = [asyncio.create_task(batcher.submit(tensor(i))) for i in range(3)]
        # Two batches enter the engine together; the third waits in the queue for a free worker.
        await wait_until(lambda: engine.inside == 2 and batcher.queue_depth == 1)
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)
    finally:
        engine.gate.set()
        await batcher.close()
    assert [float(out["id"][0]) for out, _, _ in results] == [0.0, 1.0, 2.0]
    assert engine.most_inside == 2
    assert len(engine.threads) == 2 and all(t.startswith("rtdetect-infer") for t in engine.threads)


async def test_close_fails_every_batch_in_flight() -> None:
    engine = CountingEngine()
    batcher = MicroBatcher(engine, max_batch_size=1, max_delay_ms=0, workers=2)
    await batcher.start()
    calls = [asyncio.create_task(batcher.submit(tensor(i))) for i in range(3)]
    await wait_until(lambda: engine.inside == 2 and batcher.queue_depth == 1)
    closing = asyncio.create_task(batcher.close())
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), TIMEOUT)
    assert all(isinstance(o, InferenceError) for o in outcomes)
    engine.gate.set()  # both threads leave the engine, so close() can join them
    await asyncio.wait_for(closing, TIMEOUT)
    assert not any(t.name.startswith("rtdetect-infer") for t in threading.enumerate())


async def test_answered_requests_leave_nothing_behind() -> None:
    # The worker must not hold the last batch's input (a 416x416 image is 2 MB) while it waits for more.
    batcher = MicroBatcher(GatedEngine(), max_batch_size=2, max_delay_ms=0, workers=2)
    await batcher.start()
    try:
        inputs = [tensor(i) for i in range(3)]
        refs = [weakref.ref(t) for t in inputs]
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(t) for t in inputs)), TIMEOUT)
        await wait_until(lambda: batcher.queue_depth == 0)
        del inputs
        gc.collect()
        assert sum(r() is not None for r in refs) == 0
    finally:
        await batcher.close()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(GatedEngine(), max_batch_size=1, max_delay_ms=1, workers=0)
    with pytest.raises(ValueError):
        MicroBatcher(GatedEngine(), max_batch_size=0, max_delay_ms=1)
    with pytest.raises(ValueError):
        MicroBatcher(GatedEngine(), max_batch_size=1, max_delay_ms=-1)
