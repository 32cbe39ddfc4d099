"""The index alone: ScaNN vs exact numpy in-process, and the index service's memory and start-up."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench import load
from bench.procs import Service
from serving import ann, bundle
from trainer.synthetic import queries_like


def exact_top(queries: np.ndarray, embeddings: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ embeddings.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def best_rate(fn, count: int, repeats: int = 3) -> float:
    """Items per second of ``fn()`` (which handles ``count`` queries), best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def in_process(bundle_dir: Path, queries: int = 1000, k: int = 10) -> dict:
    manifest = bundle.read_manifest(bundle_dir)
    items = bundle.load_items(bundle_dir, manifest)
    emb = items.embeddings
    q = queries_like(emb, queries, seed=123)
    config = {**ann.scann_config(len(emb)), **(manifest.raw.get("scann") or {})}
    start = time.perf_counter()
    searcher = ann.load_serialized(bundle_dir / config["serialized"]) if config.get("serialized") else None
    load_s = time.perf_counter() - start
    if searcher is None:
        start = time.perf_counter()
        searcher = ann.build_searcher(emb, config)
        build_s = time.perf_counter() - start
    else:
        build_s = None
    pre = config.get("reorder", k)
    truth = exact_top(q, emb, k)
    found, _ = searcher.search_batched(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
    single = best_rate(lambda: [searcher.search(v, k, pre) for v in q], len(q))
    batched = best_rate(lambda: searcher.search_batched(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre), len(q))
    few = q[:100]
    exact_single = best_rate(lambda: [exact_top(v[None, :], emb, k) for v in few], len(few), repeats=1)
    exact_batched = best_rate(lambda: exact_top(q[:256], emb, k, chunk=256), 256, repeats=1)
    return {
        "items": len(emb), "dim": emb.shape[1], "queries": len(q), "config": config,
        "recall_at_10": round(recall_at(np.asarray(found), truth), 4),
        "scann_single_qps": round(single), "scann_single_us": round(1e6 / single, 1),
        "scann_batched_qps": round(batched),
        "exact_numpy_single_qps": round(exact_single, 1), "exact_numpy_batched_qps": round(exact_batched, 1),
        "searcher_load_s": round(load_s, 2), "searcher_build_s": round(build_s, 2) if build_s else None,
    }


def without_searcher(bundle_dir: Path, model_base: Path) -> Path:
    """A copy of ``bundle_dir`` (hard links) whose manifest has no serialized searcher: the rebuild path."""
    target = model_base / bundle_dir.name
    shutil.copytree(bundle_dir, target, copy_function=os.link, ignore=shutil.ignore_patterns(ann.SEARCHER_DIR))
    path = target / bundle.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.pop("scann", None)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(ann.SEARCHER_DIR + "/")}
    path.unlink()  # a hard link: do not write through to the original
    path.write_text(json.dumps(manifest))
    return target


def service_startup(model_base: Path, timeout: float = 300) -> dict:
    """Seconds from process start to SERVING, and RSS once serving, of an index service over ``model_base``."""
    svc = Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0"])
    start = time.perf_counter()
    svc.start()
    try:
        svc.wait_serving(timeout)
        seconds = time.perf_counter() - start
        time.sleep(0.5)
        return {"seconds_to_serving": round(seconds, 2), "rss_mb": round(load.rss_bytes(svc.proc.pid) / 2**20, 1)}
    finally:
        svc.stop()
