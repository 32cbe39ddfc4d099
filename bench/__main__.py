"""``python -m bench``: the stack vs its floor (echo) and its seed (TFRS BruteForce), and the index at 1M.

See bench/README.md. Each target runs alone (the machine has 2 cores); the
load generator is h2load (``apt-get install -y nghttp2-client``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench import index_bench, load, report
from bench.procs import REPO, Service, free_port, running, stack
from recsys.v1 import gateway_pb2
from serving import bundle

RECOMMEND = "/recsys.v1.Gateway/Recommend"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_module(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")]), "OPENBLAS_NUM_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True, capture_output=True, **kwargs)


def newest(model_base: Path) -> Path | None:
    versions = bundle.version_dirs(model_base)
    return versions[max(versions)] if versions else None


def ensure_bundle(model_base: Path, data_dir: Path) -> tuple[Path, str]:
    """The newest bundle under model_base; trains one there (``python -m trainer train``) if there is none."""
    if (path := newest(model_base)) is not None:
        training = bundle.read_manifest(path).raw.get("training") or {}
        if "synthetic" in training or "stand_in" in bundle.read_manifest(path).raw:
            raise SystemExit(f"{path} is not a trained bundle: the stack and TFRS runs need one (python -m trainer train)")
        return path, "existing trained bundle"
    log(f"training a bundle into {model_base}")
    out = run_module(["trainer", "train", "--model-base", str(model_base), "--data-dir", str(data_dir)])
    if out.returncode != 0 or (path := newest(model_base)) is None:
        raise SystemExit(f"python -m trainer train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return path, "trained (python -m trainer train)"


def ensure_synthetic_bundle(model_base: Path, items: int) -> tuple[Path, str]:
    """The newest bundle under model_base; writes a synthetic one of ``items`` items if there is none."""
    if (path := newest(model_base)) is not None:
        synthetic = (bundle.read_manifest(path).raw.get("training") or {}).get("synthetic")
        return path, f"existing bundle ({'synthetic: ' + str(synthetic) if synthetic else 'not synthetic'})"
    # 1 cluster per 500 items (2000 at 1M), as in the ScaNN sweep of bench/README.md.
    cmd = ["trainer", "synthetic", "--items", str(items), "--clusters", str(max(20, items // 500)),
           "--model-base", str(model_base)]
    log(f"writing a synthetic bundle: python -m {' '.join(cmd)}")
    out = run_module(cmd)
    if out.returncode != 0 or (path := newest(model_base)) is None:
        raise SystemExit(f"python -m trainer synthetic failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return path, f"synthetic (python -m {' '.join(cmd[:-2])})"


def sample_check(address: str, request: bytes, parse: bool, count: int = 100) -> tuple[int, str]:
    """gRPC statuses of ``count`` calls from a Python client (for servers without our metrics)."""
    errors = 0
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(RECOMMEND)
        for _ in range(count):
            try:
                raw = call(request, timeout=10)
                if parse and len(gateway_pb2.RecommendResponse.FromString(raw).items) == 0:
                    errors += 1
            except grpc.RpcError:
                errors += 1
    return errors, f"Python client sample: {count - errors}/{count} OK"


def load_section(args, bundle_dir: Path, user_id: str) -> list[dict]:
    """h2load runs of echo, the stack and the TFRS loop, each measured while the others sit idle.

    Echo and the stack run in ``args.rounds`` paired rounds (echo then stack at
    each concurrency, back to back), so each stack figure has a floor measured
    under the same machine conditions; the report takes the median round.
    """
    request = gateway_pb2.RecommendRequest(user_id=user_id, k=10).SerializeToString()
    results = []

    def run(target: str, address: str, pids: dict[str, int], c: int, round_no: int, metrics=None, check=None):
        log(f"{target}: h2load at concurrency {c} (round {round_no})")
        r = load.measure(target, address, RECOMMEND, request, pids=pids, concurrency=c, seconds=args.seconds,
                         metrics=metrics, grpc_check_fn=check, warmup_s=args.warmup_seconds)
        log(f"  {r.rps} req/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, CPU {r.cpu_ms_per_request} ms/req, {r.grpc_check}")
        results.append({**dataclasses.asdict(r), "round": round_no})

    metrics_port = free_port()
    echo = Service("bench.servers", ["--kind", "echo"])
    query, index, gateway = stack(bundle_dir.parent, gateway_args=["--metrics-port", str(metrics_port)], poll="0")
    with running(echo, query, index, gateway, timeout=300):
        stack_pids = {"gateway": gateway.proc.pid, "query": query.proc.pid, "index": index.proc.pid}
        for round_no in range(1, args.rounds + 1):
            for c in args.concurrency:
                run("echo (floor)", echo.address, {"echo": echo.proc.pid}, c, round_no,
                    check=lambda: sample_check(echo.address, request, False))
                run("stack (gateway)", gateway.address, stack_pids, c, round_no, metrics=(metrics_port, RECOMMEND))

    if not args.skip_tfrs:
        tfrs = Service("bench.servers", ["--kind", "tfrs", "--model-base", str(bundle_dir.parent)])
        with running(tfrs, timeout=300):
            for c in args.concurrency:
                run("TFRS BruteForce (seed)", tfrs.address, {"tfrs": tfrs.proc.pid}, c, 1,
                    check=lambda: sample_check(tfrs.address, request, True))
    return results


def index_section(args, work: Path, baseline_base: Path) -> dict:
    base = Path(args.index_model_base) if args.index_model_base else work / "index-models"
    bundle_dir, origin = ensure_synthetic_bundle(base, args.items)
    log(f"index bundle: {bundle_dir} ({origin})")
    out: dict = {"bundle": str(bundle_dir), "origin": origin}
    log("index in-process: recall, single and batched rates, exact numpy")
    out["in_process"] = index_bench.in_process(bundle_dir, queries=args.index_queries)
    log(f"  {out['in_process']}")
    log("index service: start to SERVING from the serialized searcher")
    out["serialized"] = index_bench.service_startup(bundle_dir.parent)
    if not args.skip_rebuild:
        log("index service: start to SERVING rebuilding ScaNN")
        rebuild_base = work / "index-rebuild"
        rebuild_base.mkdir(exist_ok=True)
        index_bench.without_searcher(bundle_dir, rebuild_base)
        out["rebuild"] = index_bench.service_startup(rebuild_base)
    out["baseline"] = index_bench.service_startup(baseline_base)
    raw_mb = out["in_process"]["items"] * out["in_process"]["dim"] * 4 / 2**20
    out["raw_embeddings_mb"] = round(raw_mb, 1)
    out["memory_budget_mb"] = round(3 * raw_mb + out["baseline"]["rss_mb"], 1)
    if not args.skip_stack_1m:
        log("stack over the 1M catalog at concurrency 32: where the CPU goes")
        request = gateway_pb2.RecommendRequest(user_id=args.user_id or "42", k=10).SerializeToString()
        metrics_port = free_port()
        query, index, gateway = stack(bundle_dir.parent, gateway_args=["--metrics-port", str(metrics_port)], poll="0")
        with running(query, index, gateway, timeout=300):
            pids = {"gateway": gateway.proc.pid, "query": query.proc.pid, "index": index.proc.pid}
            r = load.measure("stack, 1M items", gateway.address, RECOMMEND, request, pids=pids, concurrency=32,
                             seconds=args.seconds, metrics=(metrics_port, RECOMMEND))
            out["stack_1m"] = dataclasses.asdict(r)
            out["stack_1m"]["index_rss_mb"] = round(load.rss_bytes(index.proc.pid) / 2**20, 1)
            log(f"  {out['stack_1m']}")
    return out


def targets(results: dict) -> list[dict]:
    t = []
    load_runs = results.get("load", [])
    rows = {(r["target"].split(" ")[0], r["concurrency"]): r for r in report.summary_rows(load_runs)}
    echo32, stack32, stack1, tfrs32 = (rows.get(k) for k in (("echo", 32), ("stack", 32), ("stack", 1), ("TFRS", 32)))
    pairs32 = [p for p in report.paired_rounds(load_runs) if p["concurrency"] == 32]
    stack32_runs = [r for r in load_runs if r["target"].startswith("stack") and r["concurrency"] == 32]
    if pairs32:
        shares = sorted(p["share"] for p in pairs32)
        share = float(np.median(shares))
        t.append({"target": "stack c=32 req/s >= 40% of echo", "met": share >= 0.4,
                  "figure": f"{share:.0%} (median of {len(shares)} paired rounds: "
                            f"{', '.join(f'{s:.0%}' for s in shares)})"})
    if stack32_runs:
        worst = max(r["p99_ms"] for r in stack32_runs)
        t.append({"target": "stack c=32 p99 <= 30 ms", "figure": f"{worst} ms (worst of {len(stack32_runs)} runs)",
                  "met": worst <= 30})
        errs = sum((r["grpc_errors"] or 0) + r["http_failures"] for r in stack32_runs)
        t.append({"target": "stack c=32 zero errors", "figure": f"{errs} (all runs)", "met": errs == 0})
    if stack1:
        t.append({"target": "stack c=1 p50 <= 2 ms", "figure": f"{stack1['p50_ms']} ms (median run)",
                  "met": stack1["p50_ms"] <= 2})
    if stack32 and tfrs32:
        t.append({"target": "stack beats TFRS loop (c=32 req/s)", "figure": f"{stack32['rps']:.0f} vs {tfrs32['rps']:.0f}", "met": stack32["rps"] > tfrs32["rps"]})
    index = results.get("index")
    if index:
        ip = index["in_process"]
        t.append({"target": "index recall@10 >= 0.95", "figure": f"{ip['recall_at_10']:.4f}", "met": ip["recall_at_10"] >= 0.95})
        t.append({"target": "index >= 15k single q/s in-process", "figure": f"{ip['scann_single_qps']:,}", "met": ip["scann_single_qps"] >= 15000})
        s = index["serialized"]
        t.append({"target": "SERVING within 10 s from serialized searcher", "figure": f"{s['seconds_to_serving']} s", "met": s["seconds_to_serving"] <= 10})
        t.append({"target": "index RSS <= 3x raw + baseline", "figure": f"{s['rss_mb']} MB vs {index['memory_budget_mb']} MB", "met": s["rss_mb"] <= index["memory_budget_mb"]})
        if "stack_1m" in index:
            by = index["stack_1m"]["cpu_ms_by_process"]
            share = by["index"] / max(sum(by.values()), 1e-9)
            t.append({"target": "index < 1/4 of request CPU (stack, 1M items)", "figure": f"{share:.0%}", "met": share < 0.25})
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-base", default="", help="folder of a trained bundle for the stack and TFRS runs; one is trained there if it holds none (default: a temp folder)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "ml-100k"), help="MovieLens 100k")
    parser.add_argument("--user-id", default="", help="user of the Recommend requests (default: one drawn from the bundle)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured h2load run")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="load before each measured run (not measured)")
    parser.add_argument("--rounds", type=int, default=3, help="paired echo/stack rounds (the report takes the median)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size of the index benchmark")
    parser.add_argument("--index-queries", type=int, default=1000)
    parser.add_argument("--index-model-base", default="", help="reuse this folder's bundle for the index benchmark (written there by python -m trainer synthetic if it holds none)")
    parser.add_argument("--skip-load", action="store_true", help="no h2load runs (index benchmark only)")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-tfrs", action="store_true")
    parser.add_argument("--skip-rebuild", action="store_true", help="do not time an index start that rebuilds ScaNN")
    parser.add_argument("--skip-stack-1m", action="store_true", help="do not run the stack over the 1M catalog")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    if not args.skip_load:
        load.require_h2load()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        model_base = Path(args.model_base) if args.model_base else work / "models"
        bundle_dir, origin = ensure_bundle(model_base, Path(args.data_dir))
        users = bundle.load_users(bundle_dir, bundle.read_manifest(bundle_dir))
        user_id = args.user_id or str(np.random.default_rng(0).choice(users.ids))
        log(f"bundle {bundle_dir} ({origin}); user {user_id}")
        results: dict = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "bundle": origin, "user_id": user_id, "load_averages_at_start": os.getloadavg(),
        }
        if not args.skip_load:
            results["load"] = load_section(args, bundle_dir, user_id)
        if not args.skip_index:
            args.user_id = user_id
            results["index"] = index_section(args, work, bundle_dir.parent)
        results["targets"] = targets(results)
        results["load_averages_at_end"] = os.getloadavg()
        paths = report.write(results, Path(args.out))
    print(paths["markdown"].read_text())
    log(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
