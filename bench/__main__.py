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
from recsys.internal.v1 import index_service_pb2, query_service_pb2, query_service_pb2_grpc
from recsys.v1 import gateway_pb2
from serving import bundle

RECOMMEND = "/recsys.v1.Gateway/Recommend"
EMBED_USERS = "/recsys.internal.v1.QueryService/EmbedUsers"
SEARCH = "/recsys.internal.v1.IndexService/Search"
ECHO = "echo (floor)"
STACK = "stack (gateway)"  # over the trained MovieLens bundle


def stack_target(million: bool = False, exclude_seen: bool = False) -> str:
    """The label of a stack run: over MovieLens or the 1M synthetic catalog, with or without exclude_seen."""
    return f"stack{' 1M' if million else ''} (gateway{', exclude_seen' if exclude_seen else ''})"


def hop_target(tier: str, million: bool) -> str:
    """The label of a run against one internal service alone (c=1: its share of a request)."""
    return f"{tier} hop alone{', 1M' if million else ''}"


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


def ensure_synthetic_bundle(model_base: Path, items: int, users: int = 100_000) -> tuple[Path, str]:
    """The newest bundle under model_base; writes a synthetic one of ``items`` items and ``users`` users
    (with MovieLens-like seen lists) if there is none."""
    if (path := newest(model_base)) is not None:
        synthetic = (bundle.read_manifest(path).raw.get("training") or {}).get("synthetic")
        return path, f"existing bundle ({'synthetic: ' + str(synthetic) if synthetic else 'not synthetic'})"
    # 1 cluster per 500 items (2000 at 1M), as in the ScaNN sweep of bench/README.md.
    cmd = ["trainer", "synthetic", "--items", str(items), "--clusters", str(max(20, items // 500)),
           "--users", str(users), "--model-base", str(model_base)]
    log(f"writing a synthetic bundle: python -m {' '.join(cmd)}")
    out = run_module(cmd)
    if out.returncode != 0 or (path := newest(model_base)) is None:
        raise SystemExit(f"python -m trainer synthetic failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return path, f"synthetic (python -m {' '.join(cmd[:-2])})"


def sample_check(address: str, request: bytes, parse: bool, count: int = 100, path: str = RECOMMEND) -> tuple[int, str]:
    """gRPC statuses of ``count`` calls from a Python client (for servers without our metrics)."""
    errors = 0
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path)
        for _ in range(count):
            try:
                raw = call(request, timeout=10)
                if parse and len(gateway_pb2.RecommendResponse.FromString(raw).items) == 0:
                    errors += 1
            except grpc.RpcError:
                errors += 1
    return errors, f"Python client sample: {count - errors}/{count} OK"


def median_user(bundle_dir: Path) -> tuple[str, int]:
    """The user with the median number of training interactions, and that number (what exclude_seen leaves out)."""
    users = bundle.load_users(bundle_dir, bundle.read_manifest(bundle_dir))
    counts = np.diff(users.seen_indptr)
    row = int(np.argsort(counts, kind="stable")[len(counts) // 2])
    return str(users.ids[row]), int(counts[row])


@dataclasses.dataclass
class Catalog:
    """One stack under test: its bundle, the user of its requests, and whether it is the 1M catalog."""

    bundle_dir: Path
    user_id: str
    million: bool


def load_section(args, catalogs: list[Catalog]) -> list[dict]:
    """h2load runs of echo, the stacks and the TFRS loop, each measured while the others sit idle.

    Echo and every stack run in ``args.rounds`` paired rounds (at each
    concurrency: echo, then each stack with and without exclude_seen, back to
    back; at c=1 also the query and index services alone, each one hop), so
    each stack figure has a floor measured under the same machine conditions;
    the report takes the median round.
    """
    results = []
    plain = gateway_pb2.RecommendRequest(user_id=catalogs[0].user_id, k=10).SerializeToString()

    def run(target: str, address: str, pids: dict[str, int], c: int, round_no: int, request: bytes, path=RECOMMEND,
            metrics=None, check=None):
        log(f"{target}: h2load at concurrency {c} (round {round_no})")
        r = load.measure(target, address, path, request, pids=pids, concurrency=c, seconds=args.seconds,
                         metrics=metrics, grpc_check_fn=check, warmup_s=args.warmup_seconds)
        log(f"  {r.rps} req/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, CPU {r.cpu_ms_per_request} ms/req, {r.grpc_check}")
        results.append({**dataclasses.asdict(r), "round": round_no})

    echo = Service("bench.servers", ["--kind", "echo"])
    stacks = []
    for catalog in catalogs:
        metrics_port = free_port()
        services = stack(catalog.bundle_dir.parent, gateway_args=["--metrics-port", str(metrics_port)], poll="0")
        stacks.append((catalog, metrics_port, services))
    with running(echo, *(s for _, _, services in stacks for s in services), timeout=300):
        hops = []
        for catalog, metrics_port, (query, index, gateway) in stacks:
            # The requests each hop gets for this user: the query tier's, and the index's with its vector.
            with grpc.insecure_channel(query.address) as channel:
                embed = query_service_pb2.EmbedUsersRequest(user_ids=[catalog.user_id], skip_unknown_users=True)
                vector = query_service_pb2_grpc.QueryServiceStub(channel).EmbedUsers(embed, timeout=30).embeddings[0].values
            search = index_service_pb2.SearchRequest(queries=[index_service_pb2.Query(vector=vector)], k=10)
            hops += [(hop_target("query", catalog.million), query, EMBED_USERS, embed.SerializeToString()),
                     (hop_target("index", catalog.million), index, SEARCH, search.SerializeToString())]
        for round_no in range(1, args.rounds + 1):
            for c in args.concurrency:
                run(ECHO, echo.address, {"echo": echo.proc.pid}, c, round_no, plain,
                    check=lambda: sample_check(echo.address, plain, False))
                for catalog, metrics_port, (query, index, gateway) in stacks:
                    pids = {"gateway": gateway.proc.pid, "query": query.proc.pid, "index": index.proc.pid}
                    for exclude_seen in (False, True):
                        request = gateway_pb2.RecommendRequest(user_id=catalog.user_id, k=10, exclude_seen=exclude_seen)
                        run(stack_target(catalog.million, exclude_seen), gateway.address, pids, c, round_no,
                            request.SerializeToString(), metrics=(metrics_port, RECOMMEND))
                if c == 1:
                    for target, service, path, request in hops:
                        run(target, service.address, {target.split(" ")[0]: service.proc.pid}, c, round_no, request,
                            path=path, check=lambda: sample_check(service.address, request, False, 20, path))

    if not args.skip_tfrs:
        tfrs = Service("bench.servers", ["--kind", "tfrs", "--model-base", str(catalogs[0].bundle_dir.parent)])
        with running(tfrs, timeout=300):
            for c in args.concurrency:
                run("TFRS BruteForce (seed)", tfrs.address, {"tfrs": tfrs.proc.pid}, c, 1, plain,
                    check=lambda: sample_check(tfrs.address, plain, True))
    return results


def index_section(args, bundle_dir: Path, origin: str, work: Path, baseline_base: Path) -> dict:
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
    # The index also holds every training user's seen list (for exclude_seen) and vector (to answer a known
    # user without the query tier), as stored in the bundle.
    out["user_tables_mb"] = round(sum((bundle_dir / f"{name}.npy").stat().st_size
                                      for name in ("seen_indptr", "seen_items", bundle.USER_VECTORS)
                                      if (bundle_dir / f"{name}.npy").exists()) / 2**20, 1)
    out["memory_budget_mb"] = round(3 * raw_mb + out["user_tables_mb"] + out["baseline"]["rss_mb"], 1)
    return out


def _median_ratio(pairs: list[dict], key: str) -> tuple[float, list[float]]:
    values = sorted(p[key] for p in pairs)
    return float(np.median(values)), values


def targets(results: dict) -> list[dict]:
    t = []
    load_runs = results.get("load", [])
    rows = {(r["target"], r["concurrency"]): r for r in report.summary_rows(load_runs)}
    stack32, stack1 = rows.get((STACK, 32)), rows.get((STACK, 1))
    tfrs32 = rows.get(("TFRS BruteForce (seed)", 32))
    pairs = report.paired_rounds(load_runs)
    pairs32 = [p for p in pairs if p["concurrency"] == 32 and p["target"] == STACK]
    stack32_runs = [r for r in load_runs if r["target"] == STACK and r["concurrency"] == 32]
    if pairs32:
        share, shares = _median_ratio(pairs32, "share")
        t.append({"target": "stack c=32 req/s >= 40% of echo", "met": share >= 0.4,
                  "figure": f"{share:.0%} (median of {len(shares)} paired rounds: "
                            f"{', '.join(f'{s:.0%}' for s in shares)})"})
    if stack32_runs:
        worst = max(r["p99_ms"] for r in stack32_runs)
        t.append({"target": "stack c=32 p99 <= 30 ms", "figure": f"{worst} ms (worst of {len(stack32_runs)} runs)",
                  "met": worst <= 30})
        every32 = [r for r in load_runs if r["target"].startswith("stack") and r["concurrency"] == 32]
        errs = sum((r["grpc_errors"] or 0) + r["http_failures"] for r in every32)
        t.append({"target": "stack c=32 zero errors", "figure": f"{errs} (all runs, every stack)", "met": errs == 0})
    if stack1:
        t.append({"target": "stack c=1 p50 <= 2 ms", "figure": f"{stack1['p50_ms']} ms (median run)",
                  "met": stack1["p50_ms"] <= 2})
    # Issue 19: the 1M catalog against MovieLens, and c=1 against the floor, as ratios within each round.
    by_round = {(p["round"], p["concurrency"], p["target"]): p for p in pairs}
    for seen in (False, True):
        small, large = stack_target(False, seen), stack_target(True, seen)
        ratios = [{"r": by_round[(rnd, 32, large)]["share"] / by_round[(rnd, 32, small)]["share"]}
                  for (rnd, c, target) in by_round if c == 32 and target == small and (rnd, 32, large) in by_round]
        if ratios:
            ratio, values = _median_ratio(ratios, "r")
            t.append({"target": f"1M share of echo at c=32 >= 90% of MovieLens's{' (exclude_seen)' if seen else ''}",
                      "figure": f"{ratio:.0%} (median of rounds: {', '.join(f'{v:.0%}' for v in values)})",
                      "met": ratio >= 0.9})
    for million in (False, True):
        c1 = [p for p in pairs if p["concurrency"] == 1 and p["target"] == stack_target(million)]
        if c1:
            ratio, values = _median_ratio(c1, "p50_ratio")
            t.append({"target": f"stack c=1 p50 <= 5x echo p50 ({'1M items' if million else 'MovieLens'})",
                      "figure": f"{ratio:.1f}x (median of rounds: {', '.join(f'{v:.1f}' for v in values)})",
                      "met": ratio <= 5})
    if stack32 and tfrs32:
        t.append({"target": "stack beats TFRS loop (c=32 req/s)", "figure": f"{stack32['rps']:.0f} vs {tfrs32['rps']:.0f}", "met": stack32["rps"] > tfrs32["rps"]})
    index = results.get("index")
    if index:
        ip = index["in_process"]
        t.append({"target": "index recall@10 >= 0.95", "figure": f"{ip['recall_at_10']:.4f}", "met": ip["recall_at_10"] >= 0.95})
        t.append({"target": "index >= 15k single q/s in-process", "figure": f"{ip['scann_single_qps']:,}", "met": ip["scann_single_qps"] >= 15000})
        s = index["serialized"]
        t.append({"target": "SERVING within 10 s from serialized searcher", "figure": f"{s['seconds_to_serving']} s", "met": s["seconds_to_serving"] <= 10})
        t.append({"target": "index RSS <= 3x raw + user tables + baseline", "figure": f"{s['rss_mb']} MB vs {index['memory_budget_mb']} MB", "met": s["rss_mb"] <= index["memory_budget_mb"]})
    million32 = rows.get((stack_target(True), 32))
    if million32:
        by = million32["cpu_ms_by_process"]
        share = by["index"] / max(sum(by.values()), 1e-9)
        t.append({"target": "index < 1/4 of request CPU (stack, 1M items, c=32)", "figure": f"{share:.0%}", "met": share < 0.25})
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-base", default="", help="folder of a trained bundle for the stack and TFRS runs; one is trained there if it holds none (default: a temp folder)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "ml-100k"), help="MovieLens 100k")
    parser.add_argument("--user-id", default="", help="user of the MovieLens Recommend requests (default: the user with the median number of training ratings)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured h2load run")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="load before each measured run (not measured)")
    parser.add_argument("--rounds", type=int, default=3, help="paired echo/stack rounds (the report takes the median)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size of the index benchmark and the 1M stack")
    parser.add_argument("--users", type=int, default=100_000, help="users of a synthetic bundle written for them")
    parser.add_argument("--index-queries", type=int, default=1000)
    parser.add_argument("--index-model-base", default="", help="reuse this folder's bundle for the index benchmark (written there by python -m trainer synthetic if it holds none)")
    parser.add_argument("--skip-load", action="store_true", help="no h2load runs (index benchmark only)")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-tfrs", action="store_true")
    parser.add_argument("--skip-rebuild", action="store_true", help="do not time an index start that rebuilds ScaNN")
    parser.add_argument("--skip-stack-1m", action="store_true", help="do not run the stack over the 1M catalog in the load rounds")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    if not args.skip_load:
        load.require_h2load()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        model_base = Path(args.model_base) if args.model_base else work / "models"
        bundle_dir, origin = ensure_bundle(model_base, Path(args.data_dir))
        user_id, seen = (args.user_id, None) if args.user_id else median_user(bundle_dir)
        log(f"bundle {bundle_dir} ({origin}); user {user_id} ({seen} training ratings)")
        catalogs = [Catalog(bundle_dir, user_id, million=False)]
        results: dict = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "bundle": origin, "user_id": user_id, "user_seen": seen, "load_averages_at_start": os.getloadavg(),
        }
        big_dir = big_origin = None
        if not (args.skip_index and (args.skip_load or args.skip_stack_1m)):
            base = Path(args.index_model_base) if args.index_model_base else work / "index-models"
            big_dir, big_origin = ensure_synthetic_bundle(base, args.items, args.users)
            big_user, big_seen = median_user(big_dir)
            log(f"1M bundle: {big_dir} ({big_origin}); user {big_user} ({big_seen} training interactions)")
            results.update(million_bundle=big_origin, million_user_id=big_user, million_user_seen=big_seen)
            if not args.skip_stack_1m:
                catalogs.append(Catalog(big_dir, big_user, million=True))
        if not args.skip_load:
            results["load"] = load_section(args, catalogs)
        if not args.skip_index:
            results["index"] = index_section(args, big_dir, big_origin, work, bundle_dir.parent)
        results["targets"] = targets(results)
        results["load_averages_at_end"] = os.getloadavg()
        paths = report.write(results, Path(args.out))
    print(paths["markdown"].read_text())
    log(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
