"""``python -m bench.train`` (``make bench-train``): what training costs as the log grows, and whether it learns.

For each log size (default 1M, 5M and 25M interactions; 62,423 items and
users in ML-25M's proportion, so 25M is the ML-25M shape), a synthetic log
in the MovieLens 25M layout (``python -m trainer synthetic-log``, cached under
``--cache-dir``) is trained on by

    python -m trainer train --data-dir <log> --test-fraction 0 --epochs 1 --model-base <tmp>

in a subprocess, one run at a time. Measured per run: wall time,
interactions/s over the whole run (reading and export included), the peak
resident memory of the subprocess tree (polled from /proc every 0.2 s, summed
over the trainer and any children) and the kernel's ru_maxrss of the trainer
(largest single process). The published bundle must hold every item of
movies.csv with finite embeddings. Quality: the generator held out each of
10,000 users' last interaction (``heldout.csv``, not in the log); the bundle's
user tower embeds those users and HR@10 / HR@100 (seen items excluded, whole
catalog ranked; ``trainer.evaluate``) of the model and of the bundle's
popularity are compared (not for the 1M-item catalog).

Then the 1M-item log (``--preset 1m-items``: 100,000 users, 1,000,000 items,
10M interactions) is trained the same way, and an index service is started
on its bundle, waited for until SERVING and asked one Search.

Writes bench/results/train.{json,md,png} and prints the table against the
targets of issue 16 (peak memory <= 8 GB, >= 50,000 interactions/s at 25M;
the model beats popularity at HR@10 and HR@100). The load average before and
after each run is recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer.synthetic_log import LogConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ML25M_USERS, ML25M_ITEMS, ML25M_INTERACTIONS = 162_541, 62_423, 25_000_095
SIZES = (1_000_000, 5_000_000, ML25M_INTERACTIONS)  # the last is ML-25M exactly: 162,541 users
TARGET_PEAK_GB = 8.0
TARGET_RATE = 50_000
POLL_SECONDS = 0.2


def log(message: str) -> None:
    print(f"[bench.train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "protos"), env.get("PYTHONPATH", "")])
    env.update(OPENBLAS_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
    return env


def default_cache_dir() -> Path:
    base = os.environ.get("RECSYS_CACHE_DIR") or Path.home() / ".cache" / "recsys"
    return Path(base) / "synthetic-logs"


# --------------------------------------------------------------------------- measuring a subprocess tree


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the command may contain spaces and parentheses
        children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants now (0 for processes that are gone)."""
    children, total, stack = _children_by_parent(), 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        stack += children.get(pid, [])
    return total


def run_measured(command: list[str], log_path: Path, timeout: float) -> dict:
    """Runs ``command`` (output to ``log_path``); wall time, peak tree RSS (polled) and the kernel's ru_maxrss."""
    load_before = os.getloadavg()
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            peak = max(peak, tree_rss_bytes(proc.pid))
            if time.perf_counter() - started > timeout:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() - wall)),
        "command": " ".join(command),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_tree_rss_gb": round(peak / 2**30, 3),
        "ru_maxrss_gb": round(rusage.ru_maxrss * 1024 / 2**30, 3),  # KiB on Linux
        "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "log": str(log_path),
    }


# --------------------------------------------------------------------------- logs, training, checks


def ensure_log(cache: Path, users: int, items: int, interactions: int, seed: int, layout: str) -> tuple[Path, dict]:
    """The cached log of this shape, generated first (in a subprocess, into a staging folder) if missing."""
    folder = cache / f"{layout}-u{users}-i{items}-n{interactions}-s{seed}"
    meta = folder / "synthetic.json"
    wanted = dataclasses.asdict(LogConfig(users=users, items=items, interactions=interactions, seed=seed))
    if meta.is_file():
        cached = json.loads(meta.read_text())
        if cached.get("config") == wanted and cached.get("layout") == layout:
            return folder, {**cached, "cached": True}
        log(f"{folder} was generated with other settings; generating it again")
        shutil.rmtree(folder)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
    log(f"generating {interactions:,} interactions, {users:,} users, {items:,} items ({layout}) into {folder}")
    command = [sys.executable, "-m", "trainer", "synthetic-log", "--out", str(staging), "--layout", layout,
               "--users", str(users), "--items", str(items), "--interactions", str(interactions), "--seed", str(seed)]  # fmt: skip
    result = run_measured(command, cache / f"{folder.name}.generate.log", timeout=3600)
    if result["exit_code"] != 0:
        raise SystemExit(f"generation failed ({result['exit_code']}), see {result['log']}")
    os.rename(staging, folder)
    summary = json.loads(meta.read_text())
    summary["generation"] = result
    meta.write_text(json.dumps(summary, indent=2) + "\n")
    return folder, {**summary, "cached": False}


def catalog_ids(folder: Path, layout: str) -> np.ndarray:
    """The item ids the layout's items file declares (as strings)."""
    if layout == "ml-25m":
        with open(folder / "movies.csv", newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            next(rows)
            return np.array([row[0] for row in rows])
    if layout == "ml-100k":
        lines = (folder / "u.item").read_text(encoding="latin-1").splitlines()
        return np.array([line.split("|", 1)[0] for line in lines if line.strip()])
    raise ValueError(f"no catalog reader for layout {layout!r}")


def check_bundle(bundle_dir: Path, folder: Path, layout: str) -> dict:
    """Every catalog item is in the bundle, once, with a finite embedding."""
    from serving.bundle import load_items, read_manifest, verify_files

    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    items = load_items(bundle_dir, manifest)
    expected = set(catalog_ids(folder, layout).tolist())
    held = items.ids.tolist()
    missing = len(expected - set(held))
    finite = bool(np.isfinite(items.embeddings).all())
    return {
        "bundle": str(bundle_dir),
        "items_in_catalog": len(expected),
        "items_in_bundle": len(held),
        "missing_items": missing,
        "duplicate_items": len(held) - len(set(held)),
        "finite_embeddings": finite,
        "every_item_embedded": missing == 0 and len(held) == len(set(held)) and finite,
    }


def phases(bundle_dir: Path) -> dict:
    """Where the run's time went, from the trainer's own clock (the bundle's manifest): the fit's
    three phases, and the rest of the run (start, reading, embedding, export)."""
    from serving.bundle import read_manifest

    training = read_manifest(bundle_dir).raw["training"]
    fitted = training.get("phase_seconds", {})
    return {**fitted, "rest": round(training["run_seconds"] - training["train_seconds"], 1)} if fitted else {}


def newest_bundle(model_base: Path) -> Path | None:
    from serving.bundle import version_dirs

    versions = version_dirs(model_base)
    return versions[max(versions)] if versions else None


def held_out_report(bundle_dir: Path, heldout_csv: Path) -> dict:
    """HR@K on the generator's held-out pairs, model vs the bundle's popularity (imports TensorFlow)."""
    from serving.bundle import USER_TOWER, load_items, load_users, read_manifest
    from trainer.dataset import Csr
    from trainer.evaluate import evaluate, evaluation_set
    from trainer.export import embed_users, load_user_tower

    manifest = read_manifest(bundle_dir)
    items, users = load_items(bundle_dir, manifest), load_users(bundle_dir, manifest)
    pairs = np.loadtxt(heldout_csv, delimiter=",", skiprows=1, dtype=str, ndmin=2)
    known = np.isin(pairs[:, 0], users.ids) & np.isin(pairs[:, 1], items.ids)
    pairs = pairs[known]
    seen = Csr(splits=users.seen_indptr, values=users.seen_items)
    data, user_ids = evaluation_set((pairs[:, 0], pairs[:, 1]), items.ids, users.ids, seen, items.popularity)
    vectors = embed_users(load_user_tower(bundle_dir / USER_TOWER), user_ids)
    report = evaluate(vectors, items.embeddings, data)
    out = {"pairs": report["pairs"], "pairs_dropped_unknown": int((~known).sum())}
    for name in ("model", "popularity"):
        for k in (10, 100):
            out[f"{name}_hr@{k}"] = report[name]["seen_excluded"][k - 1]
    out["beats_popularity"] = out["model_hr@10"] > out["popularity_hr@10"] and out["model_hr@100"] > out["popularity_hr@100"]
    return out


def quality_in_subprocess(bundle_dir: Path, heldout_csv: Path, work: Path) -> dict:
    out = work / "quality.json"
    command = [sys.executable, "-m", "bench.train", "--quality-of", str(bundle_dir), "--heldout", str(heldout_csv),
               "--quality-out", str(out)]  # fmt: skip
    result = run_measured(command, work / "quality.log", timeout=3600)
    if result["exit_code"] != 0:
        return {"error": f"exit {result['exit_code']}, see {result['log']}"}
    return {**json.loads(out.read_text()), "seconds": result["wall_s"]}


def train_run(label: str, folder: Path, meta: dict, args, work: Path) -> dict:
    model_base = work / "models"
    command = [sys.executable, "-m", "trainer", "train", "--data-dir", str(folder), "--test-fraction", "0",
               "--epochs", str(args.epochs), "--model-base", str(model_base), *args.train_arg]  # fmt: skip
    log(f"{label}: {' '.join(command[1:])}")
    result = run_measured(command, work / "train.log", timeout=args.timeout)
    interactions = meta["interactions"]
    run = {
        "label": label,
        "layout": meta["layout"],
        "interactions": interactions,
        "users": meta["users"],
        "items": meta["items"],
        "items_with_interactions": meta.get("items_with_interactions"),
        "log_cached": meta["cached"],
        "generation_s": (meta.get("generation") or {}).get("wall_s"),
        **result,
        "interactions_per_s": round(interactions / result["wall_s"]) if result["exit_code"] == 0 else None,
    }
    log(f"  exit {result['exit_code']}, {result['wall_s']} s, peak {result['peak_tree_rss_gb']} GB, "
        f"{run['interactions_per_s']} interactions/s")  # fmt: skip
    if result["exit_code"] != 0:
        run["error"] = Path(result["log"]).read_text(errors="replace")[-2000:]
        return run
    bundle_dir = newest_bundle(model_base)
    run["bundle_check"] = check_bundle(bundle_dir, folder, meta["layout"]) if bundle_dir else {"error": "no bundle"}
    run["model_base"] = str(model_base)
    if bundle_dir:
        run["phases_s"] = phases(bundle_dir)
    # The 1M-item run is about memory and serving: ranking 1M items exactly for 10,000 users is left out.
    if not args.skip_quality and bundle_dir and meta["items"] < 1_000_000:
        log(f"  quality on {folder / 'heldout.csv'}")
        run["quality"] = quality_in_subprocess(bundle_dir, folder / "heldout.csv", work)
        log(f"  {run['quality']}")
    return run


def index_serves(model_base: Path, timeout: float = 900) -> dict:
    """Starts an index service on ``model_base``, waits for SERVING, asks one Search (k=10) with an item's vector."""
    import grpc

    from bench.procs import Service
    from recsys.internal.v1 import index_service_pb2, index_service_pb2_grpc
    from serving.bundle import load_items, read_manifest

    bundle_dir = newest_bundle(model_base)
    vector = load_items(bundle_dir, read_manifest(bundle_dir)).embeddings[0]
    service = Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0"])
    started = time.perf_counter()
    service.start()
    try:
        service.wait_serving(timeout)
        seconds = time.perf_counter() - started
        rss = tree_rss_bytes(service.proc.pid)
        with grpc.insecure_channel(service.address) as channel:
            stub = index_service_pb2_grpc.IndexServiceStub(channel)
            response = stub.Search(
                index_service_pb2.SearchRequest(queries=[index_service_pb2.Query(vector=vector.tolist())], k=10),
                timeout=60,
            )
        ids = list(response.results[0].item_ids)
        return {"seconds_to_serving": round(seconds, 1), "rss_gb": round(rss / 2**30, 2), "search_k10_ids": ids,
                "served": len(ids) == 10}  # fmt: skip
    finally:
        service.stop()


# --------------------------------------------------------------------------- report


def targets(results: dict) -> list[dict]:
    rows = []
    runs = [r for r in results["runs"] if r["label"].startswith("ml-25m shape")]
    full = [r for r in runs if r["interactions"] >= ML25M_INTERACTIONS]
    if full:
        r = full[-1]
        rate, peak = r.get("interactions_per_s") or 0, peak_gb(r)
        rows.append({"target": "25M: finishes, publishes every item", "figure": str(r.get("bundle_check", {}).get("every_item_embedded", False)),
                     "met": r["exit_code"] == 0 and r.get("bundle_check", {}).get("every_item_embedded", False)})  # fmt: skip
        rows.append({"target": f"25M: peak RSS <= {TARGET_PEAK_GB:g} GB", "figure": f"{peak:.2f} GB", "met": peak <= TARGET_PEAK_GB})
        rows.append({"target": f"25M: >= {TARGET_RATE:,} interactions/s", "figure": f"{rate:,}", "met": rate >= TARGET_RATE})
        q = r.get("quality") or {}
        if "model_hr@10" in q:
            rows.append({"target": "25M: beats popularity at HR@10 and HR@100 (held out, seen excluded)",
                         "figure": f"{q['model_hr@10']:.4f} vs {q['popularity_hr@10']:.4f}; "
                                   f"{q['model_hr@100']:.4f} vs {q['popularity_hr@100']:.4f}",
                         "met": q["beats_popularity"]})  # fmt: skip
    big = [r for r in results["runs"] if r["label"].startswith("1M items")]
    if big:
        r = big[-1]
        served = (r.get("index") or {}).get("served", False)
        rows.append({"target": "1M items: trains, bundle loaded and served by the index service",
                     "figure": f"exit {r['exit_code']}, every item: {r.get('bundle_check', {}).get('every_item_embedded')}, "
                               f"served: {served}",
                     "met": r["exit_code"] == 0 and r.get("bundle_check", {}).get("every_item_embedded", False) and served})  # fmt: skip
    return rows


def peak_gb(run: dict) -> float:
    """The polled tree peak can miss a short spike that the kernel's ru_maxrss (one process) saw: the larger."""
    return max(run["peak_tree_rss_gb"], run["ru_maxrss_gb"])


def _phases_cell(phases_s: dict | None) -> str:
    names = ("known_paths", "new_user_path", "new_item_path", "rest")
    return " / ".join(f"{phases_s[n]:g}" for n in names) if phases_s and all(n in phases_s for n in names) else "–"


def markdown(results: dict) -> str:
    lines = [
        "# Training at scale (`python -m bench.train`)",
        "",
        f"{results['machine']['cpus']} CPUs, {results['machine']['memory_gb']} GB RAM, {results['started']}; "
        f"command per run: `{results['train_command']}`.",
        "",
        "| log | users | items | interactions | wall s | interactions/s | peak RSS (tree) GB | ru_maxrss GB "
        "| every item in bundle | HR@10 model / pop | HR@100 model / pop | load avg before → after "
        "| s: known paths / new users / new items / rest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        q = r.get("quality") or {}
        hr10 = f"{q['model_hr@10']:.4f} / {q['popularity_hr@10']:.4f}" if "model_hr@10" in q else "–"
        hr100 = f"{q['model_hr@100']:.4f} / {q['popularity_hr@100']:.4f}" if "model_hr@100" in q else "–"
        rate = f"{r['interactions_per_s']:,}" if r.get("interactions_per_s") else f"failed (exit {r['exit_code']})"
        lines.append(
            f"| {r['label']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['wall_s']} | {rate} "
            f"| {r['peak_tree_rss_gb']:.2f} | {r['ru_maxrss_gb']:.2f} | {r.get('bundle_check', {}).get('every_item_embedded', '–')} "
            f"| {hr10} | {hr100} | {r['load_before'][0]} → {r['load_after'][0]} | {_phases_cell(r.get('phases_s'))} |"
        )
    for r in results["runs"]:
        if r.get("index"):
            i = r["index"]
            lines += ["", f"Index service on the {r['label']} bundle: SERVING after {i.get('seconds_to_serving')} s, "
                          f"RSS {i.get('rss_gb')} GB, one Search(k=10) returned {len(i.get('search_k10_ids', []))} ids."]  # fmt: skip
    lines += ["", "| target | figure | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
    lines += ["", "HR@K: share of held-out (user, item) pairs (each held-out user's last interaction, not in the log) "
                  "whose item is in that user's top K of the whole catalog, the user's logged items excluded.",
              "", "Seconds by phase, from the trainer's own clock (the bundle's manifest): the known paths (set-up, "
                  "warm start, epochs, validation), the new-user and new-item paths, and the rest of the run "
                  "(start, reading, embedding, export).", ""]  # fmt: skip
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    runs = [r for r in results["runs"] if r["label"].startswith("ml-25m shape") and r.get("interactions_per_s")]
    if not runs:
        return
    sizes = [r["interactions"] / 1e6 for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["interactions_per_s"] / 1e3 for r in runs], "o-", label="this trainer")
    left.axhline(TARGET_RATE / 1e3, color="tab:red", linestyle="--", label="target")
    left.set_xlabel("log size (million interactions)")
    left.set_ylabel("thousand interactions / s (whole run)")
    right.plot(sizes, [peak_gb(r) for r in runs], "o-", label="peak resident memory")
    right.axhline(TARGET_PEAK_GB, color="tab:red", linestyle="--", label="target")
    right.set_xlabel("log size (million interactions)")
    right.set_ylabel("GB")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [f"{size:.0f}M" for size in sizes])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"python -m trainer train --epochs 1, {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def users_for(interactions: int) -> int:
    """Users in ML-25M's proportion to interactions (about 154 each)."""
    return max(1, round(ML25M_USERS * interactions / ML25M_INTERACTIONS))


def _int_list(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_int_list, default=list(SIZES), metavar="N1,N2,...",
                        help="log sizes in interactions (default 1000000,5000000,25000095)")
    parser.add_argument("--items", type=int, default=ML25M_ITEMS, help="catalog size of those logs (default %(default)s)")
    parser.add_argument("--layout", default="ml-25m", choices=("ml-25m", "ml-100k"),
                        help="layout of the generated logs (ml-100k: for the trainer before it reads ML-25M)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-arg", action="append", default=[], help="extra argument for trainer train (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="generated logs (default %(default)s)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-1m-items", action="store_true", help="skip the 1M-item run")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="per training run, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where train.{json,md,png} go (default %(default)s)")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in <out>/train.json (other sizes), replacing those run again")
    parser.add_argument("--keep-models", type=Path, default=None, help="keep the bundles under this folder")
    parser.add_argument("--quality-of", type=Path, help=argparse.SUPPRESS)  # internal: the quality subprocess
    parser.add_argument("--heldout", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quality-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.quality_of:
        args.quality_out.write_text(json.dumps(held_out_report(args.quality_of, args.heldout), indent=2))
        return 0

    results = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},  # fmt: skip
        "train_command": f"python -m trainer train --data-dir <log> --test-fraction 0 --epochs {args.epochs} "
                         f"--model-base <tmp> {' '.join(args.train_arg)}".strip(),
        "runs": [],
    }
    plan = [(f"ml-25m shape, {n / 1e6:.0f}M", users_for(n), args.items, n) for n in args.sizes]
    if not args.skip_1m_items:
        plan.append(("1M items", 100_000, 1_000_000, 10_000_000))
    if args.append and (args.out / "train.json").is_file():
        planned = {label for label, *_ in plan}
        earlier = json.loads((args.out / "train.json").read_text())["runs"]
        results["runs"] = [r for r in earlier if r["label"] not in planned]
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        for label, users, items, interactions in plan:
            folder, meta = ensure_log(args.cache_dir, users, items, interactions, args.seed, args.layout)
            work = root / label.replace(" ", "_").replace(",", "")
            work.mkdir()
            run = train_run(label, folder, meta, args, work)
            if label.startswith("1M items") and run["exit_code"] == 0:
                log("  index service on the 1M-item bundle")
                try:
                    run["index"] = index_serves(Path(run["model_base"]))
                except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
                    run["index"] = {"error": str(exc)[-2000:], "served": False}
                log(f"  {run['index']}")
            results["runs"].append(run)
            results["runs"].sort(key=lambda r: (r["items"], r["interactions"]))
            if args.keep_models and run.get("model_base"):
                shutil.copytree(run["model_base"], args.keep_models / work.name, dirs_exist_ok=True)
            _write(results, args.out)  # after every run, so a later failure keeps the earlier figures
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _write(results, args.out)
    print(markdown(results))
    return 0 if all(t["met"] for t in results["targets"]) else 1


def _write(results: dict, out: Path) -> None:
    results["targets"] = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "train.md").write_text(markdown(results))
    chart(results, out / "train.png")


if __name__ == "__main__":
    sys.exit(main())
