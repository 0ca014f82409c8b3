"""CONTRACT (to be implemented): the Detector both servers use.

class Detector:
    def __init__(self, engine: Engine, spec: ModelSpec, *, max_batch_size: int = 8,
                 max_delay_ms: float = 2.0, max_queue: int = 256,
                 observer: InferenceObserver | None = None) -> None
    async def start(self) -> None        # engine.load() + engine.warmup() in a thread, then start the batcher
    async def close(self) -> None        # stop batcher (fail pending futures), engine.close()
    ready: bool                          # True once loaded and warmed up
    spec: ModelSpec; engine: Engine
    def info(self) -> dict[str, Any]     # {name, backend, provider, input_size: [w, h], classes: [...],
                                         #  max_batch_size, max_delay_ms}
    async def detect(self, image: np.ndarray, params: DetectParams = DetectParams()) -> DetectionResult
        # image: HxWx3 uint8 BGR. Pre-processing and decoding run in a worker thread; the tensor goes
        # through the shared MicroBatcher so concurrent callers (HTTP requests, WebRTC peers) share batches.
        # Raises OverloadedError when the batcher queue is full, InferenceError when the engine fails.
    def detect_batch_sync(self, images: Sequence[np.ndarray], params: DetectParams = DetectParams())
        -> list[DetectionResult]          # direct path without the batcher (benchmarks, parity tests)
"""
