"""The generic layout: any interaction log, with an optional catalog and users file and a schema.

Files (CSV, TSV or Parquet, by extension; .csv.gz / .tsv.gz are read too)::

    interactions.csv   user_id, item_id [, timestamp] [, weight]   any further columns are not read
    items.csv          item_id [, title] [, feature columns]       optional: the catalog
    users.csv          user_id [, feature columns]                 optional
    schema.yaml        the feature columns' kinds (or schema.yml / schema.json, or --schema FILE)

Ids are arbitrary strings (compared exactly). ``timestamp`` is integer seconds
since 1970 or ISO 8601 text (``2024-05-01T12:00:00Z``); ``weight`` a number
(default 1). The schema, all keys optional::

    interactions: {file: events.parquet}
    items:
      file: items.csv
      features:
        genres: {kind: multi, separator: "|"}
        brand: categorical
        description: text
        price: numeric
      genre_filter: genres
    users:
      file: users.csv
      features: {country: categorical, age: numeric}

Flags add to it: ``--item-feature genres=multi:|``, ``--user-feature age=numeric``,
``--genre-feature genres``. A column the schema does not declare is not read
(the summary names it). Feature kinds: ``categorical`` (one value per row),
``multi`` (values joined by ``separator``, default "|"), ``text`` (lower-cased
words), ``numeric`` (a number; empty = missing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from trainer.dataset import CATEGORICAL, FEATURE_KINDS, MAX_GENRES, MULTI, NUMERIC, TEXT, Dataset, Feature, Table
from trainer.readers.assemble import (
    Catalog,
    Log,
    build_dataset,
    categorical_feature,
    log_columns,
    multi_feature,
    numeric_feature,
    text_feature,
    to_numpy,
)
from trainer.readers.tables import (
    FLOAT32,
    ID,
    STRING,
    TIME,
    BadRowBudget,
    Column,
    DataError,
    Delimited,
    header_names,
    read_delimited,
    read_parquet,
)

LAYOUT = "generic"
USER_ID, ITEM_ID, TIMESTAMP, WEIGHT, TITLE = "user_id", "item_id", "timestamp", "weight", "title"
SCHEMA_FILES = ("schema.yaml", "schema.yml", "schema.json")
EXTENSIONS = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")
LOOKED_FOR = "interactions.csv, .tsv or .parquet (or a schema.yaml naming the file)"
DEFAULT_SEPARATOR = "|"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    separator: str = DEFAULT_SEPARATOR


@dataclasses.dataclass(frozen=True)
class TableSpec:
    file: Path | None
    features: dict[str, FeatureSpec]


@dataclasses.dataclass(frozen=True)
class Schema:
    interactions: Path
    items: TableSpec
    users: TableSpec
    genre_filter: str | None


def looks_generic(data_dir: Path) -> bool:
    return any((data_dir / name).is_file() for name in SCHEMA_FILES) or _find(data_dir, "interactions") is not None


def _find(data_dir: Path, stem: str) -> Path | None:
    found = [data_dir / f"{stem}{ext}" for ext in EXTENSIONS if (data_dir / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{data_dir}: both {' and '.join(p.name for p in found)}; keep one, or name it in the schema")
    return found[0] if found else None


# --------------------------------------------------------------------------- schema


def parse_feature(text: str, where: str) -> FeatureSpec:
    """'genres=multi:|' (a flag) -> FeatureSpec."""
    name, _, kind = text.partition("=")
    kind, _, separator = kind.partition(":")
    if not name or not kind:
        raise DataError(f"{where}: expected NAME=KIND[:SEPARATOR], got {text!r}")
    return _feature(name.strip(), {"kind": kind.strip(), **({"separator": separator} if separator else {})}, where)


def _feature(name: str, spec, where: str) -> FeatureSpec:
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or set(spec) - {"kind", "separator"} or "kind" not in spec:
        raise DataError(f"{where}: feature {name!r} must be a kind or {{kind: ..., separator: ...}}, got {spec!r}")
    kind = spec["kind"]
    if kind not in FEATURE_KINDS:
        raise DataError(f"{where}: feature {name!r} has kind {kind!r}; kinds are {', '.join(FEATURE_KINDS)}")
    separator = spec.get("separator", DEFAULT_SEPARATOR)
    if kind != MULTI and "separator" in spec:
        raise DataError(f"{where}: feature {name!r}: only multi features take a separator")
    if not isinstance(separator, str) or not separator:
        raise DataError(f"{where}: feature {name!r}: the separator must be a non-empty string")
    if name in (USER_ID, ITEM_ID):
        raise DataError(f"{where}: {name} is the id column, not a feature")
    return FeatureSpec(name, kind, separator)


def _section(raw: dict, key: str, allowed: set[str], where: str) -> dict:
    section = raw.get(key) or {}
    if isinstance(section, str):
        section = {"file": section}
    if not isinstance(section, dict) or set(section) - allowed:
        raise DataError(f"{where}: '{key}' may have the keys {', '.join(sorted(allowed))}, got {section!r}")
    return section


def load_schema(data_dir: Path, options) -> tuple[Schema, Path | None]:
    """The schema from the file (``options.schema`` or one in the folder) plus the flags."""
    path = options.schema or next((data_dir / n for n in SCHEMA_FILES if (data_dir / n).is_file()), None)
    raw: dict = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: unreadable schema ({exc})") from exc
        try:
            if path.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both say where
            raise DataError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from exc
        raw = raw or {}
        if not isinstance(raw, dict) or set(raw) - {"interactions", "items", "users"}:
            raise DataError(f"{path}: the schema's top-level keys are interactions, items, users; got {raw!r}")
    where = str(path) if path else "schema"
    log = _section(raw, "interactions", {"file"}, where)
    sections, items_section = {}, {}
    for role, flags in (("items", options.item_features), ("users", options.user_features)):
        section = _section(raw, role, {"file", "features"} | ({"genre_filter"} if role == "items" else set()), where)
        items_section = section if role == "items" else items_section
        declared = section.get("features") or {}
        if not isinstance(declared, dict):
            raise DataError(f"{where}: {role}.features must map column names to kinds, got {declared!r}")
        features = {name: _feature(name, spec, where) for name, spec in declared.items()}
        for flag in flags:
            feature = parse_feature(flag, f"--{role[:-1]}-feature")
            features[feature.name] = feature
        file = _resolve(data_dir, section.get("file"), role)
        if features and file is None:
            raise DataError(f"{where}: {role} features are declared but there is no {role} file "
                            f"({role}.csv, .tsv or .parquet in {data_dir}, or {role}.file in the schema)")
        sections[role] = TableSpec(file, features)
    genre_filter = options.genre_feature or items_section.get("genre_filter")
    if genre_filter is not None:
        feature = sections["items"].features.get(genre_filter)
        if feature is None or feature.kind != MULTI:
            declared = ", ".join(f"{f.name} ({f.kind})" for f in sections["items"].features.values()) or "none"
            raise DataError(f"{where}: the genre filter {genre_filter!r} must be one of the items' multi features "
                            f"(declared: {declared})")
    interactions = _resolve(data_dir, log.get("file"), "interactions")
    if interactions is None:
        raise DataError(f"{data_dir}: no interactions file; expected {LOOKED_FOR}")
    return Schema(interactions, sections["items"], sections["users"], genre_filter), path


def _resolve(data_dir: Path, named: str | None, stem: str) -> Path | None:
    if named is None:
        return _find(data_dir, stem)
    path = Path(named) if Path(named).is_absolute() else data_dir / named
    if not path.is_file():
        raise DataError(f"{path}: file not found (named as the {stem} file in the schema)")
    return path


# --------------------------------------------------------------------------- files


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def _delimited(path: Path, newlines_in_values: bool) -> Delimited:
    if ".tsv" in path.suffixes or ".tab" in path.suffixes:
        # Tab-separated files rarely quote; a '"' in a title is then just a character.
        return Delimited(delimiter="\t", quoting=False)
    return Delimited(newlines_in_values=newlines_in_values)


def _columns_of(path: Path) -> list[str]:
    if _is_parquet(path):
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    return header_names(path, _delimited(path, False))


def _read(path: Path, columns: dict[str, Column], budget: BadRowBudget, newlines_in_values: bool) -> pa.Table:
    if _is_parquet(path):
        return read_parquet(path, columns, budget)
    return read_delimited(path, _delimited(path, newlines_in_values), columns, budget)


def read_log(path: Path, budget: BadRowBudget) -> Log:
    present = _columns_of(path)
    columns = {USER_ID: Column(ID), ITEM_ID: Column(ID)}
    if TIMESTAMP in present:
        columns[TIMESTAMP] = Column(TIME)
    if WEIGHT in present:
        columns[WEIGHT] = Column(FLOAT32)
    table = _read(path, columns, budget, newlines_in_values=False)
    optional = [name if name in columns else None for name in (TIMESTAMP, WEIGHT)]
    users, items, stamps, weights = log_columns(path, table, USER_ID, ITEM_ID, *optional)
    del table
    weights = to_numpy(weights)
    if weights is not None and not np.isfinite(weights).all():
        row = int(np.flatnonzero(~np.isfinite(weights))[0])
        raise DataError(f"{path}: data row {row + 1}: weight {weights[row]} is not a finite number")
    return Log(path, users, items, timestamps=to_numpy(stamps), weights=weights)


def read_table(spec: TableSpec, id_column: str, budget: BadRowBudget, notes: list[str]) -> Catalog | None:
    """An items or users file -> Catalog with the declared features (and titles for items)."""
    if spec.file is None:
        return None
    path = spec.file
    present = _columns_of(path)
    with_title = id_column == ITEM_ID and TITLE in present
    columns = {id_column: Column(STRING)}
    if with_title and TITLE not in spec.features:
        columns[TITLE] = Column(STRING, required=False)
    for feature in spec.features.values():
        columns[feature.name] = Column(FLOAT32 if feature.kind == NUMERIC else STRING, required=False)
    unused = [c for c in present if c not in columns]
    if unused:
        notes.append(f"{path}: columns not declared in the schema, not used: {', '.join(unused)}")
    table = _read(path, columns, budget, newlines_in_values=True)
    ids = np.asarray(table.column(id_column).to_pylist(), dtype=object)
    uniques, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        duplicate = str(uniques[counts > 1][0])
        rows = np.flatnonzero(ids == duplicate)[:2] + 1
        raise DataError(f"{path}: {id_column} {duplicate!r} is defined twice (data rows {rows[0]} and {rows[1]}); "
                        "each id needs exactly one row")
    features: list[Feature] = []
    for spec_feature in spec.features.values():
        values = table.column(spec_feature.name).combine_chunks()
        if spec_feature.kind == CATEGORICAL:
            features.append(categorical_feature(spec_feature.name, values))
        elif spec_feature.kind == MULTI:
            features.append(multi_feature(spec_feature.name, values, spec_feature.separator))
        elif spec_feature.kind == TEXT:
            features.append(text_feature(spec_feature.name, values))
        else:
            features.append(numeric_feature(spec_feature.name, values))
    titles = None
    if with_title:
        titles = np.asarray([t or "" for t in table.column(TITLE).to_pylist()], dtype=str)
    return Catalog(path, Table(ids=ids.astype(str), features=tuple(features)), titles=titles)


def read(
    data_dir: Path,
    budget: BadRowBudget,
    options,
    *,
    interactions_file: Path | None = None,
    allow_unknown_items: bool = False,
    allow_unknown_users: bool = False,
) -> tuple[Dataset, dict]:
    schema, schema_path = load_schema(data_dir, options)
    notes: list[str] = []
    items = read_table(schema.items, ITEM_ID, budget, notes)
    users = read_table(schema.users, USER_ID, budget, notes)
    log_path = interactions_file or schema.interactions
    log = read_log(log_path, budget)
    if schema.genre_filter is not None:
        vocab = items.table.feature(schema.genre_filter).vocab
        if len(vocab) > MAX_GENRES:
            notes.append(f"genre filter {schema.genre_filter!r}: {len(vocab)} values; only the first {MAX_GENRES} "
                         f"({', '.join(vocab[:3].tolist())}, ...) can be filtered on")
    files = {"interactions": log_path}
    files.update({role: spec.file for role, spec in (("items", schema.items), ("users", schema.users)) if spec.file})
    if schema_path is not None:
        files["schema"] = schema_path
    dataset, counts = build_dataset(
        LAYOUT, log, items, users, genre_feature=schema.genre_filter, files=files, bad_rows=budget.count,
        allow_unknown_items=allow_unknown_items, allow_unknown_users=allow_unknown_users,
    )  # fmt: skip
    return dataset, {**counts, "notes": notes}
