"""Readers: a data folder in any supported layout -> ``trainer.dataset.Dataset``.

Layouts (``--format``; detected from the folder's files when not given):

* ``ml-100k``  u.data, u.item, u.user, u.genre                 (trainer.readers.ml100k)
* ``ml-1m``    ratings.dat, movies.dat, users.dat ('::')       (trainer.readers.ml_dat)
* ``ml-10m``   ratings.dat, movies.dat ('::'), no users file   (trainer.readers.ml_dat)
* ``ml-csv``   ratings.csv, movies.csv: 20M, 25M, 32M, latest, latest-small  (trainer.readers.ml_csv)
* ``generic``  an interactions file (CSV, TSV or Parquet), optional items and users
               files, a schema declaring the feature columns  (trainer.readers.generic)

The command line calls ``add_reader_flags(parser)`` and ``read_dataset(args)``;
code calls ``read_folder(path, ReadOptions(...))``. Every problem with the input
is a ``DataError`` whose message names the file (and line) and what to do.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer.dataset import Dataset
from trainer.readers import generic, ml100k, ml_csv, ml_dat
from trainer.readers.download import DATA_DIR_VARIABLES, resolve_data_dir
from trainer.readers.tables import BadRowBudget, DataError

__all__ = [
    "DATA_DIR_VARIABLES",
    "FORMATS",
    "DataError",
    "ReadOptions",
    "add_reader_flags",
    "detect_format",
    "options_from_args",
    "read_dataset",
    "read_folder",
    "resolve_data_dir",
    "summary",
]

ML100K, ML1M, ML10M, MLCSV, GENERIC = "ml-100k", "ml-1m", "ml-10m", "ml-csv", "generic"
FORMATS = (ML100K, ML1M, ML10M, MLCSV, GENERIC)


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How to read a folder; the command-line flags of ``add_reader_flags`` map onto these."""

    format: str | None = None  # one of FORMATS; None = detect from the files
    interactions_file: Path | None = None  # read instead of the layout's own log file (same format)
    max_bad_rows: int = 0  # malformed rows that may be skipped (counted in Dataset.bad_rows)
    allow_unknown_items: bool = False  # an item missing from the items file becomes an item without features
    allow_unknown_users: bool = False  # likewise for a users file
    schema: Path | None = None  # generic layout: the schema file (default: schema.yaml/.yml/.json in the folder)
    item_features: tuple[str, ...] = ()  # generic layout: NAME=KIND[:SEPARATOR], added to the schema's
    user_features: tuple[str, ...] = ()
    genre_feature: str | None = None  # generic layout: the items' multi feature served as genres


def detect_format(data_dir: Path) -> str:
    """The layout of ``data_dir`` from the files it holds (see the module docstring)."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found; pass --data-dir or set DATA_DIR")
    has = {p.name for p in data_dir.iterdir()}
    if "u.data" in has or "u.item" in has:
        return ML100K
    if "ratings.dat" in has:
        return ML1M if "users.dat" in has else ML10M
    if "ratings.csv" in has:
        return MLCSV
    if generic.looks_generic(data_dir):
        return GENERIC
    raise DataError(
        f"{data_dir}: no known data layout (it holds: {', '.join(sorted(has)) or 'nothing'}). Expected "
        "u.data (MovieLens 100k), ratings.dat (1M/10M), ratings.csv (20M/25M/32M/latest) or, for the "
        f"generic layout, {generic.LOOKED_FOR}; see the README's 'Data layouts'"
    )


def read_folder(data_dir: Path, options: ReadOptions = ReadOptions()) -> Dataset:
    """Reads the data set in ``data_dir``."""
    dataset, _ = _read(Path(data_dir), options)
    return dataset


def _read(data_dir: Path, options: ReadOptions) -> tuple[Dataset, dict[str, int]]:
    layout = options.format or detect_format(data_dir)
    if layout not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {layout!r}")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found; pass --data-dir or set DATA_DIR")
    if options.max_bad_rows < 0:
        raise DataError(f"--max-bad-rows must be 0 or more, got {options.max_bad_rows}")
    budget = BadRowBudget(limit=options.max_bad_rows)
    common = {
        "interactions_file": options.interactions_file,
        "allow_unknown_items": options.allow_unknown_items,
        "allow_unknown_users": options.allow_unknown_users,
    }
    if layout == ML100K:
        dataset, counts = ml100k.read(data_dir, budget, **common)
    elif layout in (ML1M, ML10M):
        dataset, counts = ml_dat.read(data_dir, budget, layout=layout, **common)
    elif layout == MLCSV:
        dataset, counts = ml_csv.read(data_dir, budget, **common)
    else:
        dataset, counts = generic.read(data_dir, budget, options, **common)
    return dataset, {**counts, "shown_bad_rows": budget.skipped}


def summary(dataset: Dataset) -> str:
    """One line for the log: what was read."""
    seen = np.zeros(len(dataset.items), dtype=bool)
    seen[dataset.interactions.items] = True

    def features(table) -> str:
        return ", ".join(f"{f.name} ({f.kind})" for f in table.features) or "none"

    return (
        f"{dataset.layout}: {len(dataset.interactions)} interactions, {len(dataset.users)} users, "
        f"{len(dataset.items)} items ({int((~seen).sum())} without interactions); "
        f"item features: {features(dataset.items)}; user features: {features(dataset.users)}"
        + (f"; genre filter: {dataset.genre_feature}" if dataset.genre_feature else "")
    )


# --------------------------------------------------------------------------- command line


def add_reader_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the data flags (--data-dir, --format, --max-bad-rows, ...) to a command's parser."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder holding the data set, in any layout of --format [env DATA_DIR; the older "
             "[env ML100K_DIR] also works]; without either, MovieLens 100k is downloaded once into "
             "$RECSYS_CACHE_DIR or ~/.cache/recsys",
    )  # fmt: skip
    group.add_argument("--format", choices=FORMATS, default=None,
                       help="the folder's layout; detected from its files when not given")
    group.add_argument("--ratings-file", type=Path, default=None,
                       help="interactions in the layout's own log format, read instead of the folder's "
                            "(e.g. another u.data)")
    group.add_argument("--max-bad-rows", type=int, default=0,
                       help="skip up to this many malformed rows (each reported) instead of stopping at "
                            "the first (default %(default)s)")
    group.add_argument("--allow-unknown-items", action="store_true",
                       help="an interaction whose item is not in the items file makes it an item without "
                            "features, instead of an error")
    group.add_argument("--allow-unknown-users", action="store_true",
                       help="likewise for users missing from the users file")
    group.add_argument("--schema", type=Path, default=None,
                       help="generic layout: schema file (YAML or JSON; default: schema.yaml, schema.yml or "
                            "schema.json in the data folder)")
    group.add_argument("--item-feature", action="append", default=[], metavar="NAME=KIND[:SEP]",
                       help="generic layout: declare an items column as a feature, KIND one of categorical, "
                            "multi (SEP: the separator, default '|'), text, numeric; repeatable")
    group.add_argument("--user-feature", action="append", default=[], metavar="NAME=KIND[:SEP]",
                       help="generic layout: likewise for a users column")
    group.add_argument("--genre-feature", default=None, metavar="NAME",
                       help="generic layout: the items' multi feature that the serving genre filter uses")


def options_from_args(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(
        format=args.format,
        interactions_file=args.ratings_file,
        max_bad_rows=args.max_bad_rows,
        allow_unknown_items=args.allow_unknown_items,
        allow_unknown_users=args.allow_unknown_users,
        schema=args.schema,
        item_features=tuple(args.item_feature),
        user_features=tuple(args.user_feature),
        genre_feature=args.genre_feature,
    )


def read_dataset(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> Dataset:
    """The data set the flags of ``add_reader_flags`` name, with what was read printed to ``log``
    (default: stdout): the folder, the layout, the counts, and every row skipped or id added."""
    log = log or (lambda line: print(line, flush=True))
    data_dir = resolve_data_dir(args.data_dir)
    log(f"data: {data_dir}" + (f" (interactions: {args.ratings_file})" if args.ratings_file else ""))
    dataset, counts = _read(data_dir, options_from_args(args))
    log(summary(dataset))
    if dataset.bad_rows:
        log(f"skipped {dataset.bad_rows} malformed rows (--max-bad-rows {args.max_bad_rows}), first:")
        for row in counts["shown_bad_rows"]:
            log(f"  {row}")
    for note in counts.get("notes", ()):
        log(note)
    for role in ("items", "users"):
        if counts.get(f"unknown_{role}"):
            log(f"{counts[f'unknown_{role}']} {role} of the interactions are not in the {role} file: "
                f"added without features (--allow-unknown-{role})")
    return dataset

