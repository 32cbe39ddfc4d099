"""Driving a unary gRPC method with h2load, and what to measure around it.

h2load (Debian's nghttp2-client) speaks HTTP/2 but not gRPC: it POSTs one
fixed body, and counts HTTP statuses. A unary gRPC call is exactly that POST
(headers ``content-type: application/grpc`` and ``te: trailers``, body = one
length-prefixed message), but its outcome is the ``grpc-status`` trailer,
which h2load ignores; so the gRPC outcome is checked separately (Prometheus
counters on the server, or a sample of calls from a Python client).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def grpc_frame(message: bytes) -> bytes:
    """The body of a unary gRPC request: flag 0 (uncompressed), big-endian length, message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def require_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise SystemExit("h2load not found: install it with `apt-get install -y nghttp2-client` (Debian/Ubuntu)")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def grpc_counts(metrics_port: int, method: str) -> dict[str, float]:
    """recsys_grpc_requests_total for ``method`` by status code, from a service's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    pattern = re.compile(r'^recsys_grpc_requests_total\{code="(\w+)",method="([^"]+)"\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and m.group(2) == method:
            counts[m.group(1)] = counts.get(m.group(1), 0.0) + float(m.group(3))
    return counts


@dataclasses.dataclass
class LoadResult:
    target: str
    concurrency: int
    requests: int  # completed with HTTP 200
    http_failures: int
    grpc_errors: int | None  # None: not observable for this target (see grpc_check)
    grpc_check: str
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    cpu_ms_by_process: dict[str, float]
    load_avg_1m: float | None = None  # the machine's 1-minute load average right after the run (2 cores)


def h2load(address: str, path: str, message: bytes, *, requests: int, concurrency: int, timeout_s: int = 30):
    """Runs h2load; returns (ok_count, failed_count, seconds, latencies_ms array)."""
    exe = require_h2load()
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        data = Path(tmp) / "request.bin"
        data.write_bytes(grpc_frame(message))
        log = Path(tmp) / "requests.log"
        # -c clients, each with one stream in flight: `concurrency` outstanding calls.
        cmd = [exe, "-n", str(requests), "-c", str(concurrency), "-m", "1", "-t", "1", "-T", str(timeout_s),
               "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
               "--log-file", str(log), f"http://{address}{path}"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        # One line per request: start (µs since epoch), HTTP status (-1 if none), duration (µs).
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    statuses = np.array([int(r[1]) for r in rows])
    latencies = np.array([int(r[2]) for r in rows]) / 1000.0
    span = re.search(r"finished in ([\d.]+)(\w+)", out.stdout)
    if span:
        value, unit = float(span.group(1)), span.group(2)
        seconds = value * {"s": 1, "ms": 1e-3, "us": 1e-6}.get(unit, 1)
    ok = int((statuses == 200).sum())
    return ok, len(rows) - ok + (requests - len(rows)), seconds, latencies[statuses == 200]


def measure(target: str, address: str, path: str, message: bytes, *, pids: dict[str, int], concurrency: int,
            seconds: float, metrics: tuple[int, str] | None = None, grpc_check_fn=None,
            warmup_s: float = 0.0) -> LoadResult:
    """Warm-up, then a run of about ``seconds`` at ``concurrency``, with server CPU and gRPC outcome.

    A short probe gives the rate; then about ``warmup_s`` more of unmeasured load
    (connections, HTTP/2 flow-control windows, allocator and caches settle).
    """
    ok, _, took, _ = h2load(address, path, message, requests=max(50, concurrency * 10), concurrency=concurrency)
    rate = ok / max(took, 1e-3)
    if warmup_s > 0:
        ok, _, took, _ = h2load(address, path, message, requests=int(min(max(rate * warmup_s, 100), 100_000)),
                                concurrency=concurrency)
        rate = ok / max(took, 1e-3)
    n = int(min(max(rate * seconds, 200), 200_000))
    before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before_counts = grpc_counts(*metrics) if metrics else None
    ok, failed, took, latencies = h2load(address, path, message, requests=n, concurrency=concurrency)
    cpu = {name: (cpu_seconds(pid) - before_cpu[name]) * 1000 / max(ok, 1) for name, pid in pids.items()}
    if metrics:
        after = grpc_counts(*metrics)
        delta = {code: after.get(code, 0) - before_counts.get(code, 0) for code in after}
        errors = int(sum(v for code, v in delta.items() if code != "OK"))
        check = f"server counters: {int(delta.get('OK', 0))} OK, {errors} not OK"
    else:
        errors, check = grpc_check_fn() if grpc_check_fn else (None, "not checked")
    return LoadResult(
        target=target, concurrency=concurrency, requests=ok, http_failures=failed, grpc_errors=errors,
        grpc_check=check, seconds=round(took, 3), rps=round(ok / took, 1),
        p50_ms=round(float(np.percentile(latencies, 50)), 3) if len(latencies) else float("nan"),
        p99_ms=round(float(np.percentile(latencies, 99)), 3) if len(latencies) else float("nan"),
        cpu_ms_per_request=round(sum(cpu.values()), 4), cpu_ms_by_process={k: round(v, 4) for k, v in cpu.items()},
        load_avg_1m=round(os.getloadavg()[0], 2),
    )
