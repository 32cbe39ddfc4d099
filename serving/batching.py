"""Cross-request micro-batching: many concurrent callers, one backend call.

A backend call has a fixed cost (a TensorFlow call, a gRPC round trip) that
dwarfs the per-item cost, so concurrent requests are gathered and sent as one
batch. Nothing waits when the system is idle: a caller that finds no batch in
flight and nothing queued runs its own batch in its own task (no hand-off to
a worker and back, ~40 us a request here), and a worker takes whatever is
queued the moment a slot is free; batches form only while earlier ones are in
flight. ``max_wait_us``
optionally lets a worker that already holds more than one request wait a little
longer for a fuller batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from serving import metrics, tracing

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` (same length, same order) on gathered items.

    ``submit(items)`` enqueues one caller's items and returns its results; an
    exception from ``run_batch`` is raised to every caller in that batch, and
    an exception instance in place of a result is raised to that item's caller.
    ``concurrency`` batches may be in flight at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        max_wait_us: int = 0,
        concurrency: int = 1,
        stage: str,
    ):
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_us / 1e6
        self._concurrency = concurrency
        self._stage = stage
        # (items, the caller's future, the caller's trace context or None when tracing is off)
        self._queue: asyncio.Queue[tuple[list[T], asyncio.Future[list[R]], object]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        # Batches in flight, whether run by a worker or directly by an idle caller.
        self._slots = asyncio.Semaphore(concurrency)

    def start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def submit(self, items: list[T]) -> list[R]:
        if self._queue.empty() and not self._slots.locked():
            async with self._slots:
                return await self._run_alone(items)
        self.start()
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((items, future, tracing.capture()))
        return await future

    async def _run_alone(self, items: list[T]) -> list[R]:
        metrics.BATCH_SIZE.labels(self._stage).observe(len(items))
        if tracing.enabled:
            with tracing.batch_span(self._stage, [tracing.capture()], len(items)):
                results = list(await self._run_batch(items))
        else:
            results = list(await self._run_batch(items))
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        return results

    async def _work(self) -> None:
        while True:
            pending = [await self._queue.get()]
            async with self._slots:
                await self._gather_and_dispatch(pending)

    async def _gather_and_dispatch(self, pending: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        """Adds whatever is queued (up to max_batch) to ``pending`` and runs it; holds a slot."""
        size = len(pending[0][0])
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_batch:
            if not self._queue.empty():
                nxt = self._queue.get_nowait()
            elif len(pending) > 1 and self._max_wait_s > 0 and time.perf_counter() < deadline:
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), deadline - time.perf_counter())
                except TimeoutError:
                    break
            else:
                break
            if size + len(nxt[0]) > self._max_batch:
                await self._dispatch(pending)
                pending, size = [], 0
            pending.append(nxt)
            size += len(nxt[0])
        await self._dispatch(pending)

    async def _dispatch(self, pending: list[tuple[list[T], asyncio.Future[list[R]], object]]) -> None:
        # Callers whose RPC was cancelled (deadline, disconnect) are dropped here.
        pending = [entry for entry in pending if not entry[1].done()]
        if not pending:
            return
        batch = [item for items, _, _ in pending for item in items]
        metrics.BATCH_SIZE.labels(self._stage).observe(len(batch))
        try:
            if tracing.enabled:
                with tracing.batch_span(self._stage, [ctx for _, _, ctx in pending], len(batch)):
                    results = await self._run_batch(batch)
            else:
                results = await self._run_batch(batch)
        except Exception as exc:
            for _, fut, _ in pending:
                if not fut.done():
                    fut.set_exception(exc)
            return
        offset = 0
        for items, fut, _ in pending:
            mine = list(results[offset : offset + len(items)])
            offset += len(items)
            if fut.done():
                continue
            failure = next((r for r in mine if isinstance(r, BaseException)), None)
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(mine)
