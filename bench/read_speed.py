"""How fast trainer.readers reads a large log, and with how much memory.

    .venv/bin/python -m bench.read_speed                  # 25M rows, ML-25M layout and generic layout
    .venv/bin/python -m bench.read_speed --rows 1000000 --layouts generic

Generates a folder per layout in a temporary directory (or --work-dir, kept):

* ``ml-25m``: ratings.csv (userId,movieId,rating,timestamp) over 162,541 users and
  62,423 movies as in MovieLens 25M, plus movies.csv;
* ``generic``: interactions.csv with string ids ("user-000123", "sku-0004567"),
  integer timestamps and a weight, items.csv with a multi and a categorical
  feature, schema.yaml;
* ``generic-parquet``: the same with interactions.parquet.

Each folder is then read by ``trainer.readers.read_folder`` in a fresh
process, which reports wall and CPU seconds of the read (CPU: all threads) and
its peak resident memory against its resident memory before reading. The
machine's load average is recorded too: on a shared machine wall time
stretches, CPU time much less.
Prints the figures and writes them to bench/results/read_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "read_speed.json"
USERS, MOVIES, MOVIE_ID_RANGE = 162_541, 62_423, 209_171  # MovieLens 25M
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip

# Memory from /proc/self/status: VmHWM is this process's peak RSS (ru_maxrss would carry the
# parent's peak across fork + exec).
_CHILD = """
import json, sys, time
from pathlib import Path
from trainer.readers import read_folder
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
base = status("VmRSS")
wall, cpu = time.perf_counter(), time.process_time()
dataset = read_folder(Path(sys.argv[1]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_before_bytes": base, "peak_rss_bytes": status("VmHWM"),
                  "interactions": len(dataset.interactions), "users": len(dataset.users), "items": len(dataset.items),
                  "layout": dataset.layout}))
"""


def _write_csv(table: pa.Table, path: Path) -> None:
    pa_csv.write_csv(table, path, pa_csv.WriteOptions(quoting_style="needed"))


def _catalog(rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str]]:
    ids = np.sort(rng.choice(np.arange(1, MOVIE_ID_RANGE + 1), size=MOVIES, replace=False))
    titles = [f"Movie number {i}, part {i % 7} ({1900 + i % 120})" for i in ids.tolist()]
    genres = ["|".join(sorted(set(rng.choice(GENRES, size=1 + i % 3).tolist()))) for i in range(MOVIES)]
    return ids, titles, genres


def write_ml25m(folder: Path, rows: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids, titles, genres = _catalog(rng)
    _write_csv(pa.table({"movieId": ids, "title": titles, "genres": genres}), folder / "movies.csv")
    popularity = rng.zipf(1.3, size=MOVIES).astype(np.float64)
    ratings = pa.table({
        "userId": rng.integers(1, USERS + 1, size=rows, dtype=np.int32),
        "movieId": ids[rng.choice(MOVIES, size=rows, p=popularity / popularity.sum())].astype(np.int32),
        "rating": rng.integers(1, 11, size=rows).astype(np.float32) / 2,
        "timestamp": rng.integers(789_652_009, 1_574_327_703, size=rows),
    })  # fmt: skip
    _write_csv(ratings, folder / "ratings.csv")


def write_generic(folder: Path, rows: int, rng: np.random.Generator, parquet: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids, titles, genres = _catalog(rng)
    item_ids = pc.binary_join_element_wise("sku-", pc.utf8_lpad(pa.array(ids).cast(pa.string()), 7, "0"), "")
    brands = [f"brand {i % 500}" for i in range(MOVIES)]
    _write_csv(pa.table({"item_id": item_ids, "title": titles, "genres": genres, "brand": brands}), folder / "items.csv")
    users = pa.array(rng.integers(1, USERS + 1, size=rows, dtype=np.int32)).cast(pa.string())
    items = pa.array(ids[rng.integers(0, MOVIES, size=rows)]).cast(pa.string())
    log = pa.table({
        "user_id": pc.binary_join_element_wise("user-", pc.utf8_lpad(users, 6, "0"), ""),
        "item_id": pc.binary_join_element_wise("sku-", pc.utf8_lpad(items, 7, "0"), ""),
        "timestamp": rng.integers(1_600_000_000, 1_700_000_000, size=rows),
        "weight": rng.integers(1, 4, size=rows).astype(np.float32),
    })  # fmt: skip
    if parquet:
        pq.write_table(log, folder / "interactions.parquet")
    else:
        _write_csv(log, folder / "interactions.csv")
    (folder / "schema.yaml").write_text(
        "items:\n  features:\n    genres: {kind: multi, separator: '|'}\n    brand: categorical\n    title: text\n"
        "  genre_filter: genres\n"
    )


WRITERS = {
    "ml-25m": write_ml25m,
    "generic": write_generic,
    "generic-parquet": lambda folder, rows, rng: write_generic(folder, rows, rng, parquet=True),
}
LOG_FILES = {"ml-25m": "ratings.csv", "generic": "interactions.csv", "generic-parquet": "interactions.parquet"}


def measure(folder: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000_000)
    parser.add_argument("--layouts", nargs="+", choices=tuple(WRITERS), default=list(WRITERS))
    parser.add_argument("--work-dir", type=Path, default=None, help="write the files here and keep them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        results = []
        for layout in args.layouts:
            folder = work / layout
            log_file = folder / LOG_FILES[layout]
            if not log_file.is_file() or args.work_dir is None:
                started = time.perf_counter()
                WRITERS[layout](folder, args.rows, np.random.default_rng(args.seed))
                print(f"{layout}: wrote {args.rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
            figures = measure(folder)
            figures["file_bytes"] = log_file.stat().st_size
            per_row = (figures["peak_rss_bytes"] - figures["rss_before_bytes"]) / figures["interactions"]
            figures.update(rows_per_s=figures["interactions"] / figures["wall_s"], peak_bytes_per_row=per_row)
            results.append(figures)
            print(
                f"{layout}: {figures['interactions']:,} rows ({figures['file_bytes'] / 1e6:.0f} MB) read in "
                f"{figures['wall_s']:.1f} s wall / {figures['cpu_s']:.1f} s CPU = {figures['rows_per_s'] / 1e6:.2f} M rows/s; "
                f"peak RSS {figures['peak_rss_bytes'] / 1e9:.2f} GB ({figures['rss_before_bytes'] / 1e9:.2f} GB before "
                f"reading: {per_row:.1f} bytes per row); {figures['users']:,} users, {figures['items']:,} items",
                flush=True,
            )
    report = {"rows": args.rows, "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
