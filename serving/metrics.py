"""Prometheus metrics shared by every service, served on a separate HTTP port.

``serving.interceptors`` counts every unary RPC by method and status code and
records its latency; services add their own gauges (model version, index size) and
histograms (batch sizes) from here so that names stay consistent.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("recsys_grpc_requests_total", "gRPC requests handled", ["method", "code"])
LATENCY = Histogram(
    "recsys_grpc_request_seconds",
    "gRPC request latency, server side",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "recsys_batch_size",
    "items per batched backend call",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
MODEL_VERSION = Gauge("recsys_model_version", "newest model version loaded (0 = none)", ["service"])
LOADED_VERSIONS = Gauge("recsys_model_versions_loaded", "model versions held in memory", ["service"])
INDEX_SIZE = Gauge("recsys_index_items", "items in the served index (this shard)", ["version"])


class RequestCounts:
    """``REQUESTS`` for one method, with the child per status code looked up once."""

    def __init__(self, method: str):
        self._method = method
        self._by_code: dict[str, prometheus_client.metrics.Counter] = {}

    def inc(self, code: str) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = REQUESTS.labels(self._method, code)
        child.inc()


def start_http_server(port: int, host: str) -> None:
    prometheus_client.start_http_server(port, addr=host)
