"""What tracing costs: the stack with tracing off against the stack with it on, in alternated pairs.

    OPENBLAS_NUM_THREADS=1 python -m bench.tracing_cost --model-base DIR [--pairs 20] [--exporter otlp]

Two copies of the stack run at once over the same bundle, one with the OpenTelemetry
environment unset (off) and one with it set (on: ``parentbased_traceidratio`` at
``--ratio``, spans exported over OTLP/gRPC to ``bench/otlp_sink.py`` or appended to
/dev/null by ``RECSYS_TRACES_FILE``). Each pair is a short h2load run against one
stack followed at once by the same run against the other (the order swaps every
pair), so both halves of a pair see the same machine load; on a shared machine the
load moves far more between minutes than between two runs a few seconds apart.
Reported: each pair's on/off ratios of requests/s and of server CPU per request, and
their medians. Writes ``bench/results/tracing_cost.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import load
from bench.__main__ import ensure_bundle, median_user
from bench.procs import REPO, free_port, running, stack
from recsys.v1 import gateway_pb2

RECOMMEND = "/recsys.v1.Gateway/Recommend"


def tracing_env(exporter: str, ratio: float, sink_port: int | None) -> dict[str, str]:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
    if exporter == "otlp":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    else:
        env["RECSYS_TRACES_FILE"] = os.devnull
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base", type=Path, default=None, help="a trained bundle's base (trained there if empty)")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run of a pair")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.01, help="the sampling ratio with tracing on")
    parser.add_argument("--exporter", choices=("otlp", "file"), default="otlp")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tracing_cost.json")
    args = parser.parse_args(argv)

    model_base = args.model_base or Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    bundle_dir, origin = ensure_bundle(model_base, args.data_dir)
    user, _ = median_user(bundle_dir)
    request = gateway_pb2.RecommendRequest(user_id=user, k=10).SerializeToString()

    sink_port = free_port()
    sink = None
    if args.exporter == "otlp":
        sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", "--port", str(sink_port)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
    env_on = tracing_env(args.exporter, args.ratio, sink_port)
    off = stack(model_base, poll="0")
    saved = {k: os.environ.get(k) for k in env_on}
    os.environ.update(env_on)  # the services inherit the environment when they start
    try:
        on = stack(model_base, poll="0")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    pairs = []
    load_start = os.getloadavg()
    try:
        with running(*off, *on):
            for p in range(args.pairs):
                order = [("off", off), ("on", on)] if p % 2 == 0 else [("on", on), ("off", off)]
                got = {}
                for mode, (query, index, gateway) in order:
                    pids = {"gateway": gateway.proc.pid, "query": query.proc.pid, "index": index.proc.pid}
                    got[mode] = load.measure(mode, gateway.address, RECOMMEND, request, pids=pids,
                                             concurrency=args.concurrency, seconds=args.seconds, warmup_s=0.5)
                pair = {
                    "pair": p, "load_1m": round(os.getloadavg()[0], 2),
                    "rps_ratio": round(got["on"].rps / got["off"].rps, 4),
                    "cpu_ratio": round(got["on"].cpu_ms_per_request / got["off"].cpu_ms_per_request, 4),
                    **{mode: {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "cpu_ms_per_request": r.cpu_ms_per_request,
                              "cpu_ms_by_process": r.cpu_ms_by_process, "errors": r.http_failures}
                       for mode, r in got.items()},
                }
                pairs.append(pair)
                print(f"pair {p:2d} load {pair['load_1m']:5.1f}: req/s on/off {pair['rps_ratio']:.3f}, "
                      f"CPU/request on/off {pair['cpu_ratio']:.3f}", flush=True)
    finally:
        spans = None
        if sink is not None:
            sink.terminate()
            out, _ = sink.communicate(timeout=10)
            spans = out.strip().splitlines()[-1] if out.strip() else None

    def quartiles(key: str) -> list[float]:
        values = sorted(p[key] for p in pairs)
        return [round(v, 4) for v in statistics.quantiles(values, n=4)] if len(values) > 1 else values

    summary = {
        "command": "python -m bench.tracing_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "bundle": str(bundle_dir), "bundle_origin": origin, "user": user,
        "tracing_on_env": env_on, "exporter_received": spans,
        "pairs": args.pairs, "seconds": args.seconds, "concurrency": args.concurrency,
        "load_1m_at_start": round(load_start[0], 2), "load_1m_at_end": round(os.getloadavg()[0], 2),
        "median_rps_ratio": round(statistics.median(p["rps_ratio"] for p in pairs), 4),
        "median_cpu_ratio": round(statistics.median(p["cpu_ratio"] for p in pairs), 4),
        "rps_ratio_quartiles": quartiles("rps_ratio"), "cpu_ratio_quartiles": quartiles("cpu_ratio"),
        "runs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"median over {args.pairs} pairs: throughput on/off {summary['median_rps_ratio']:.3f} "
          f"(quartiles {summary['rps_ratio_quartiles']}), CPU per request on/off {summary['median_cpu_ratio']:.3f} "
          f"(quartiles {summary['cpu_ratio_quartiles']}); exporter: {spans}; wrote {args.out}")


if __name__ == "__main__":
    main()
