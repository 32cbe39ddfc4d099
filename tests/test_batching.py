"""MicroBatcher: concurrent callers share backend calls; an idle system adds no wait."""

import asyncio

import pytest

from serving.batching import MicroBatcher


class Backend:
    def __init__(self, delay=0.01, fail_on=None):
        self.calls: list[list] = []
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(self, items):
        self.calls.append(list(items))
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"backend failed on {self.fail_on}")
        return [x * 10 for x in items]


def test_concurrent_callers_are_batched_and_answered_in_order():
    backend = Backend()

    async def scenario():
        batcher = MicroBatcher(backend, max_batch=64, stage="test")
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    # 20 callers arriving together share one or two backend calls, not twenty.
    assert len(backend.calls) <= 2 and sum(map(len, backend.calls)) == 40


def test_max_batch_is_respected():
    backend = Backend()

    async def scenario():
        batcher = MicroBatcher(backend, max_batch=5, stage="test")
        await asyncio.gather(*(batcher.submit([i]) for i in range(23)))
        await batcher.stop()

    asyncio.run(scenario())
    assert max(len(c) for c in backend.calls) <= 5
    assert sorted(x for c in backend.calls for x in c) == list(range(23))


def test_single_caller_is_dispatched_without_waiting():
    backend = Backend(delay=0)

    async def scenario():
        batcher = MicroBatcher(backend, max_batch=64, max_wait_us=500_000, stage="test")
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([1])
        elapsed = loop.time() - start
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 0.25  # far below the 0.5 s window


def test_backend_error_reaches_every_caller_of_that_batch_only():
    backend = Backend(fail_on=3)

    async def scenario():
        batcher = MicroBatcher(backend, max_batch=2, stage="test")
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(6)), return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    failed = [i for i, r in enumerate(results) if isinstance(r, RuntimeError)]
    assert 3 in failed and len(failed) <= 2
    assert all(results[i] == [i * 10] for i in range(6) if i not in failed)


def test_cancelled_caller_does_not_break_the_batcher():
    backend = Backend(delay=0.05)

    async def scenario():
        batcher = MicroBatcher(backend, max_batch=8, stage="test")
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.01)
        doomed = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0)
        doomed.cancel()
        later = await batcher.submit([3])
        await batcher.stop()
        return await first, later

    assert asyncio.run(scenario()) == ([10], [30])


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(Backend(), max_batch=0, stage="test")
