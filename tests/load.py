"""A bounded load generator for tests: N concurrent clients, a fixed number of calls.

Records per call: start time, latency, status code name and the response, so
tests can split figures into before/during/after an event (a roll-out, a
kill, a SIGTERM) and assert on every single answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


REJECTED_BACKOFF_S = 0.02


@dataclasses.dataclass
class Call:
    started: float
    latency_s: float
    code: str
    response: object


@dataclasses.dataclass
class LoadResult:
    calls: list[Call]

    def failed(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK"]

    def p99_ms(self, start: float = -np.inf, end: float = np.inf) -> float:
        lat = [c.latency_s for c in self.calls if start <= c.started < end and c.code == "OK"]
        return float(np.percentile(lat, 99) * 1e3) if lat else float("nan")

    def count(self, start: float = -np.inf, end: float = np.inf) -> int:
        return sum(1 for c in self.calls if start <= c.started < end)


def make_recommend(user_ids: list[str], k: int = 10, features: common_pb2.UserFeatures | None = None
                   ) -> Callable[[int], gateway_pb2.RecommendRequest]:
    """Requests cycling over ``user_ids``; with ``features`` each also describes its user, which makes the
    gateway ask the query tier (a known user's id alone is answered by the index)."""
    return lambda i: gateway_pb2.RecommendRequest(user_id=user_ids[i % len(user_ids)], k=k, user_features=features)


async def _drive(
    address: str, total: int, concurrency: int, make_request, timeout_s: float, calls: list[Call]
) -> LoadResult:
    counter = iter(range(total))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def client() -> None:
            for i in counter:
                started = time.monotonic()
                try:
                    response = await stub.Recommend(make_request(i), timeout=timeout_s)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    response, code = exc.details(), exc.code().name
                calls.append(Call(started, time.monotonic() - started, code, response))
                if code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(REJECTED_BACKOFF_S)  # what the error message asks clients to do

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return LoadResult(calls)


class LoadInBackground:
    """Runs the load on its own thread and event loop; ``join()`` returns the result."""

    def __init__(self, address: str, total: int, concurrency: int, make_request, timeout_s: float = 5.0):
        self.calls: list[Call] = []  # grows while the load runs
        self._args = (address, total, concurrency, make_request, timeout_s, self.calls)
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._result = asyncio.run(_drive(*self._args))
        except BaseException as exc:  # surfaced in join()
            self._error = exc

    def start(self) -> LoadInBackground:
        self._thread.start()
        return self

    def wait_for_calls(self, n: int, timeout: float = 120.0) -> float:
        """Blocks until ``n`` calls have completed; returns time.monotonic() then."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.calls)} of {n} calls completed")
            time.sleep(0.01)
        return time.monotonic()

    def join(self, timeout: float = 300.0) -> LoadResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("load did not finish in time")
        if self._error is not None:
            raise self._error
        return self._result
