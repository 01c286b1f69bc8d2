"""Dynamic batching: concurrent requests become one padded batch on ONNX Runtime.

Each `BatchingGenerator.generate` call (a coroutine) queues one prompt. A
single background task takes the first waiting request, gathers more for at
most ``max_wait_ms`` or until ``max_batch`` are waiting, and runs them as one
`Generator.generate` call in a worker thread (the event loop stays free);
each caller gets its own result. Requests only share a batch when their
generation settings are the same (greedy vs sampling, max tokens, stop strings,
...). Greedy output is identical to generating the prompt alone: the runtime
left-pads with attention masks and position ids (tested).

Examples
--------
>>> import asyncio
>>> class Echo:
...     def generate(self, prompts, **kw):
...         return [p.upper() for p in prompts]
>>> async def main():
...     batcher = BatchingGenerator(Echo(), max_batch=8, max_wait_ms=5)
...     async with batcher:
...         return await asyncio.gather(*(batcher.generate(p) for p in ["a", "b", "c"]))
>>> asyncio.run(main())
['A', 'B', 'C']
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _Request:
    prompt: str
    settings: tuple
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class BatchingGenerator:
    """Gathers concurrent `generate` calls into batches for one `Generator`.

    Parameters
    ----------
    generator
        A `models.serve.runtime.Generator` (anything with ``generate(prompts, **settings)``).
    max_batch
        Most prompts per batch.
    max_wait_ms
        Longest the first request of a batch waits for company.

    Use it as an async context manager (``async with``), or call `start` and
    `close`. `batch_sizes` and `queue_waits_ms` keep the latest 1,000 of each
    for metrics.
    """

    def __init__(self, generator, *, max_batch: int = 16, max_wait_ms: float = 3.0, on_batch=None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.generator = generator
        #: Called after each batch with (prompts, each one's queue wait in ms, seconds to generate): metrics.
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batch_sizes: list[int] = []
        self.queue_waits_ms: list[float] = []
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._held: list[_Request] = []  # taken from the queue, for a later batch (other settings)

    async def __aenter__(self) -> BatchingGenerator:
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tailor-generator-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for request in self._held + _drain(self._queue):
            if not request.future.done():
                request.future.set_exception(RuntimeError("the generator was closed"))
        self._held = []

    async def generate(self, prompt: str, **settings):
        """The `GenerationResult` for one prompt, batched with whatever else is waiting."""
        if self._task is None:
            raise RuntimeError("BatchingGenerator is not running: use `async with` or call start()")
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a string")
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(prompt, key, future))
        return await future

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held:
            return self._held.pop(0)
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, later = [first], []
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                request = await self._next(max(left, 0)) if left > 0 or not self._queue.empty() else None
                if request is None:
                    break
                (batch if request.settings == first.settings else later).append(request)
            self._held = later + self._held
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            started = time.perf_counter()
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            self.queue_waits_ms = (self.queue_waits_ms + [(started - r.queued) * 1000 for r in batch])[-1000:]
            settings = dict(first.settings)
            try:
                results = await loop.run_in_executor(
                    None, lambda: self.generator.generate([r.prompt for r in batch], **settings)
                )
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), self.queue_waits_ms[-len(batch) :], time.perf_counter() - started)
            for r, result in zip(batch, results):
                if not r.future.done():
                    r.future.set_result(result)


def _drain(queue: asyncio.Queue | None) -> Sequence[_Request]:
    out = []
    while queue is not None and not queue.empty():
        out.append(queue.get_nowait())
    return out
