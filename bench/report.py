"""Results out: JSON (everything), a markdown table (the headline figures), a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(value, digits=2):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _median_run(runs: list[dict]) -> dict | None:
    """The run with the median requests/s (the lower middle one for an even count)."""
    if not runs:
        return None
    return sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]


def paired_rounds(load_runs: list[dict]) -> list[dict]:
    """Per round, concurrency and stack target: echo and stack measured back to back, and their ratios
    (req/s share of the floor, and p50 as a multiple of the floor's)."""
    echo = {(r.get("round", 1), r["concurrency"]): r for r in load_runs if r["target"].startswith("echo")}
    rows = []
    for r in sorted(load_runs, key=lambda r: (r.get("round", 1), r["concurrency"])):
        floor = echo.get((r.get("round", 1), r["concurrency"]))
        if not r["target"].startswith("stack") or floor is None:
            continue
        rows.append({"round": r.get("round", 1), "concurrency": r["concurrency"], "target": r["target"],
                     "echo_rps": floor["rps"], "stack_rps": r["rps"], "share": round(r["rps"] / floor["rps"], 4),
                     "stack_p99_ms": r["p99_ms"], "echo_p50_ms": floor["p50_ms"], "stack_p50_ms": r["p50_ms"],
                     "p50_ratio": round(r["p50_ms"] / floor["p50_ms"], 3)})
    return rows


def short_label(target: str) -> str:
    """A chart label: echo, ML / 1M (+seen), the hops alone, TFRS."""
    if target.startswith("echo"):
        return "echo"
    if target.startswith("TFRS"):
        return "TFRS"
    if target.startswith("stack"):
        return ("1M" if " 1M" in target else "ML") + ("+seen" if "exclude_seen" in target else "")
    return target.replace(" hop alone", " hop").replace(", 1M", " 1M")


def summary_rows(load_runs: list[dict]) -> list[dict]:
    """One row per target and concurrency: the median run across rounds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in load_runs:
        groups.setdefault((r["target"], r["concurrency"]), []).append(r)
    return [{**_median_run(runs), "rounds": len(runs)} for runs in groups.values()]


def markdown(results: dict) -> str:
    lines = [f"# Benchmark results ({results['started_at']}, {results['machine']})", ""]
    if results.get("command"):
        lines += [f"Command: `OPENBLAS_NUM_THREADS=1 {results['command']}`. Bundle: {results.get('bundle', 'n/a')}."]
    if results.get("load_averages_at_start"):
        avg = lambda key: " / ".join(f"{v:.2f}" for v in results.get(key) or [])  # noqa: E731
        lines += [f"Load averages (1/5/15 min, 2 cores) at start {avg('load_averages_at_start')}, "
                  f"at end {avg('load_averages_at_end')}; load 1m below is right after each run, and includes the "
                  "benchmark's own processes (a stack at c=32 alone keeps it near 2-3).", ""]
    load = results.get("load", [])
    if load:
        rounds = max(r.get("round", 1) for r in load)
        million = (f"; `stack 1M` is the stack over the synthetic 1M-item catalog ({results.get('million_bundle')}), "
                   f"user {results.get('million_user_id')!r} ({results.get('million_user_seen')} training interactions)"
                   if results.get("million_user_id") else "")
        lines += [
            f"Load: h2load, unary `Recommend(user_id, k=10)`, `-c N -m 1` (N outstanding calls), each target measured "
            "while the others sit idle, after an unmeasured warm-up. `stack (gateway)` is the stack over the trained "
            f"MovieLens bundle, user {results.get('user_id')!r} ({results.get('user_seen')} training ratings: the "
            f"median user){million}; `exclude_seen` rows set it. `query hop alone` / `index hop alone` are "
            "`EmbedUsers` of that user / `Search` of its vector (k=10) sent straight to that service: one hop of a "
            f"request at c=1. Echo and the stacks ran in {rounds} paired round(s) (echo, then each stack, back to "
            "back); each row is the median run of its target (by req/s). CPU = server processes' CPU time / requests.",
            "",
            "| target | conc. | req/s | p50 ms | p99 ms | errors (gRPC) | CPU ms/req | CPU by process (ms/req) | load 1m |",
            "|---|---:|---:|---:|---:|---|---:|---|---:|",
        ]
        for r in summary_rows(load):
            errors = "n/a" if r["grpc_errors"] is None else f"{r['grpc_errors'] + r['http_failures']}"
            by = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_by_process"].items())
            lines.append(
                f"| {r['target']} | {r['concurrency']} | {_fmt(r['rps'], 0)} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
                f"| {errors} ({r['grpc_check']}) | {_fmt(r['cpu_ms_per_request'], 3)} | {by} | {_fmt(r.get('load_avg_1m'))} |"
            )
        lines.append("")
        pairs = paired_rounds(load)
        if pairs:
            lines += ["Paired rounds (stack req/s as a share of the echo floor measured just before it, and its p50 as a "
                      "multiple of the floor's):", "",
                      "| round | conc. | echo req/s | stack req/s | share | stack p99 ms | p50 / echo p50 | stack |",
                      "|---:|---:|---:|---:|---:|---:|---:|---|"]
            for p in pairs:
                lines.append(f"| {p['round']} | {p['concurrency']} | {_fmt(p['echo_rps'], 0)} | {_fmt(p['stack_rps'], 0)} "
                             f"| {p['share']:.0%} | {_fmt(p['stack_p99_ms'])} | {p['p50_ratio']:.1f}x | {p['target']} |")
            lines.append("")
    index = results.get("index")
    if index:
        ip = index["in_process"]
        c = ip["config"]
        lines += [
            f"Index at {ip['items']:,} x {ip['dim']} (dot product, {ip['queries']} queries), one core; "
            f"bundle: {index.get('origin', 'n/a')}:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| ScaNN config | {c.get('num_leaves')} leaves, {c.get('num_leaves_to_search')} searched, "
            f"AH {c.get('dims_per_block')} dims/block, reorder {c.get('reorder')} |",
            f"| recall@10 vs exact | {ip['recall_at_10']:.4f} |",
            f"| ScaNN single-query q/s (µs/query) | {ip['scann_single_qps']:,} ({ip['scann_single_us']}) |",
            f"| ScaNN batched q/s | {ip['scann_batched_qps']:,} |",
            f"| numpy exact single / batched q/s | {ip['exact_numpy_single_qps']:,} / {ip['exact_numpy_batched_qps']:,} |",
            f"| searcher load from bundle (in-process) | {ip['searcher_load_s']} s |",
        ]
        for key, label in (("serialized", "index service from serialized searcher"), ("rebuild", "index service rebuilding ScaNN"),
                           ("baseline", "index service over MovieLens (interpreter baseline)")):
            if key in index:
                s = index[key]
                lines.append(f"| {label}: start to SERVING / RSS | {s['seconds_to_serving']} s / {s['rss_mb']} MB |")
        if "memory_budget_mb" in index:
            lines.append(f"| memory budget: 3 x raw float32 + seen lists and user vectors ({index.get('user_tables_mb', 0)} MB) + baseline "
                         f"| {index['memory_budget_mb']} MB |")
        lines.append("")
    if results.get("targets"):
        lines += ["Targets:", "", "| target | figure | met |", "|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results.get("load"):
        return
    load = summary_rows(results["load"])
    load = sorted(load, key=lambda r: r["concurrency"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    labels = [f"{short_label(r['target'])} c={r['concurrency']}" for r in load]
    colors = ["#888888" if r["target"].startswith("echo") else "#2ca02c" if "hop" in r["target"] else
              "#ff7f0e" if " 1M" in r["target"] else "#1f77b4" if r["target"].startswith("stack") else "#d62728"
              for r in load]
    axes[0].bar(labels, [r["rps"] for r in load], color=colors)
    axes[0].set_title("requests/s (higher is better)")
    axes[1].bar(labels, [r["p99_ms"] for r in load], color=colors)
    axes[1].set_title("p99 latency, ms (lower is better)")
    axes[1].set_yscale("log")
    axes[2].bar(labels, [r["cpu_ms_per_request"] for r in load], color=colors)
    axes[2].set_title("server CPU ms per request")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, labelrotation=90)
    fig.suptitle(f"recsys benchmark, {results['started_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "png": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(results) + "\n")
    chart(results, paths["png"])
    return paths
