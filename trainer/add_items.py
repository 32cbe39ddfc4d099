"""``python -m trainer add-items``: new items into the served catalog without retraining.

The newest published bundle's item tower embeds each new item from its features
(the ``embed_items`` signature: the candidate tower's metadata path, the item
id being unknown to it; trainer/export.py). The next version is then published
through the usual atomic staging (serving/bundle.py): the same user tower and
users, the catalog with the new items appended (embeddings, ids, titles, genre
masks, popularity 0) and the item tower re-saved with them. The services load
it by their hot reload; known users' vectors stay valid because the item
space is the same.

The new items file is read by the trainer's own readers, so features are
normalised exactly as in training:

* ``u.item`` (any ``*.item`` file): the MovieLens 100k layout, genres in the
  bundle's genre order;
* otherwise a generic items file (``.csv``, ``.tsv``, ``.parquet``) with a
  header: ``item_id``, optional ``title`` (shown in answers), and any of the
  model's item feature columns (multi values joined by ``--separator``). For a
  model trained on a MovieLens release, ``title`` also gives the ``year`` and
  ``title`` features as there ("Heat (1995)": year 1995, words "heat"), unless a
  ``year`` column is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from serving import bundle
from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT, Table
from trainer.readers import generic, ml100k, movielens
from trainer.readers.assemble import Catalog
from trainer.readers.tables import BadRowBudget, DataError

SHOWN_IDS = 5  # ids an error message names


@dataclasses.dataclass(frozen=True)
class NewItems:
    ids: np.ndarray  # str [n]
    titles: np.ndarray  # str [n]
    features: dict[str, np.ndarray]  # embed_items input name -> raw values (trainer/export.py)
    genre_masks: np.ndarray  # uint32 [n]


def newest_bundle(model_base: Path) -> tuple[Path, bundle.Manifest]:
    versions = bundle.version_dirs(model_base)
    if not versions:
        raise bundle.BundleError(f"{model_base}: no published versions; train one with 'python -m trainer train'")
    path = versions[max(versions)]
    return path, bundle.read_manifest(path)


def item_inputs(manifest: bundle.Manifest, where: Path) -> dict[str, dict]:
    """The manifest's record of ``embed_items``' feature inputs (input name -> entry)."""
    entry = manifest.raw.get(bundle.ITEM_TOWER)
    if not entry or entry.get("signature") != bundle.ITEMS_SIGNATURE:
        raise bundle.BundleError(f"{where}: the item tower has no {bundle.ITEMS_SIGNATURE!r} signature (trained "
                                 "before add-items existed); retrain the model, then add the items")
    return {name: spec for name, spec in entry["inputs"].items() if name != "item_id"}


def _read_generic(path: Path, inputs: dict[str, dict], movielens_titles: bool, separator: str,
                  budget: BadRowBudget, log: Callable[[str], None]) -> Catalog:
    features = {spec["feature"]: spec["kind"] for spec in inputs.values()}
    present = generic._columns_of(path)
    if generic.ITEM_ID not in present:
        raise DataError(f"{path}: no {generic.ITEM_ID!r} column; the header must name item_id, optionally title, "
                        f"and the model's item features: {', '.join(features) or 'none'}")
    unknown = [c for c in present if c not in (generic.ITEM_ID, generic.TITLE, *features)]
    if unknown:
        raise DataError(f"{path}: column {unknown[0]!r} is not an item feature of the model (its item features: "
                        f"{', '.join(f'{n} ({k})' for n, k in features.items()) or 'none'}); remove or rename it")
    missing = [name for name in features if name not in present and not (movielens_titles and name in
                                                                          (movielens.YEAR, movielens.TITLE))]
    if missing:
        log(f"{path}: no column for the item features {', '.join(missing)}: the new items have them unknown")
    declared = {name: generic.FeatureSpec(name, kind, separator) for name, kind in features.items() if name in present}
    if movielens_titles:  # the title is read as the MovieLens readers read it, below
        declared.pop(movielens.TITLE, None)
    catalog = generic.read_table(generic.TableSpec(path, declared), generic.ITEM_ID, budget, [])
    if not movielens_titles or generic.TITLE not in present:
        return catalog
    year, title = movielens.title_features(pa.array(catalog.titles, pa.string()))
    kept = [f for f in catalog.table.features if f.name != movielens.TITLE]
    given_year = catalog.table.feature(movielens.YEAR)
    if given_year is not None:  # a year column wins where it holds a value
        year = dataclasses.replace(year, values=np.where(np.isfinite(given_year.values), given_year.values, year.values))
        kept = [f for f in kept if f.name != movielens.YEAR]
    return Catalog(path, Table(ids=catalog.table.ids, features=(*kept, year, title)), titles=catalog.titles)


def raw_item_features(table: Table, inputs: dict[str, dict]) -> dict[str, np.ndarray]:
    """The features of ``table`` as embed_items takes them: codes back to their values."""
    n = len(table)
    out = {}
    for name, spec in inputs.items():
        feature = table.feature(spec["feature"])
        kind = spec["kind"]
        if kind == NUMERIC:
            values = np.full(n, np.nan, np.float32)
            if feature is not None and feature.kind == NUMERIC:
                values = feature.values.astype(np.float32)
            out[name] = values
            continue
        lists: list[list[str]] = [[] for _ in range(n)]
        if feature is not None and feature.kind == CATEGORICAL:
            lists = [[str(feature.vocab[c - 1])] if c > 0 else [] for c in feature.codes.tolist()]
        elif feature is not None and feature.kind in (MULTI, TEXT):
            splits, values = feature.lists.splits, feature.lists.values
            lists = [[str(feature.vocab[c - 1]) for c in values[splits[r] : splits[r + 1]]] for r in range(n)]
        if kind == MULTI:
            width = max(1, max((len(x) for x in lists), default=1))
            out[name] = np.array([x + [""] * (width - len(x)) for x in lists], dtype=str).reshape(n, width)
        else:  # categorical: the one value; text: the words, which embed_items splits again
            out[name] = np.array([" ".join(x) for x in lists], dtype=str)
    return out


def _genre_masks(table: Table, genre_feature: str | None, genres: tuple[str, ...]) -> np.ndarray:
    """uint32 [n]: bit g set <=> the item has genre ``genres[g]`` (Dataset.genre_masks)."""
    masks = np.zeros(len(table), dtype=np.uint32)
    feature = table.feature(genre_feature) if genre_feature else None
    if feature is None or feature.kind != MULTI:
        return masks
    bit_of = {name: g for g, name in enumerate(genres)}
    for row in range(len(table)):
        for code in feature.lists.values[feature.lists.splits[row] : feature.lists.splits[row + 1]]:
            g = bit_of.get(str(feature.vocab[code - 1]))
            if g is not None:
                masks[row] |= np.uint32(1) << np.uint32(g)
    return masks


def read_new_items(path: Path, manifest: bundle.Manifest, where: Path, separator: str = "|",
                   max_bad_rows: int = 0, log: Callable[[str], None] = print) -> NewItems:
    """The new items file (see the module doc) -> NewItems; DataError on a bad file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    inputs = item_inputs(manifest, where)
    budget = BadRowBudget(max_bad_rows)
    if path.suffix == ".item":
        catalog = ml100k.read_items(path, list(manifest.genres), budget)
    else:
        features = {spec["feature"] for spec in inputs.values()}
        layout = str(manifest.raw.get("training", {}).get("data_layout", ""))
        movielens_titles = layout.startswith("ml-") and {movielens.YEAR, movielens.TITLE} <= features
        catalog = _read_generic(path, inputs, movielens_titles, separator, budget, log)
    table = catalog.table
    if len(table) == 0:
        raise DataError(f"{path}: no items; write one item per row under the header")
    if budget.count:
        log(f"{path}: skipped {budget.count} malformed rows (--max-bad-rows {max_bad_rows}): "
            + "; ".join(str(row) for row in budget.skipped))
    titles = catalog.titles if catalog.titles is not None else table.ids
    titles = np.where(titles == "", table.ids, titles)
    genre_feature = manifest.raw.get("genre_feature")
    return NewItems(ids=table.ids.astype(str), titles=titles.astype(str), features=raw_item_features(table, inputs),
                    genre_masks=_genre_masks(table, genre_feature, manifest.genres))


def add_items(model_base: Path, items_file: Path, separator: str = "|", max_bad_rows: int = 0,
              log: Callable[[str], None] = print) -> Path:
    """Embeds the items of ``items_file`` with the newest bundle's item tower and publishes
    the next version with them appended to the catalog. Returns the new version folder."""
    from serving import ann
    from trainer import export  # TensorFlow, once the inputs are known to be good

    source, manifest = newest_bundle(model_base)
    new = read_new_items(items_file, manifest, source, separator, max_bad_rows, log)
    catalog, users = bundle.validate(source, manifest)
    known = catalog.row_of.rows(new.ids.tolist()) >= 0
    if known.any():
        ids = new.ids[known][:SHOWN_IDS].tolist()
        count = f"{int(known.sum())} item id{'s are' if known.sum() > 1 else ' is'}"
        raise DataError(f"{items_file}: {count} already in the catalog of version "
                        f"{manifest.version}: {', '.join(map(repr, ids))}; add-items only adds new items "
                        "(remove those rows; to change an item, retrain)")
    tower = export.load_item_tower(source / bundle.ITEM_TOWER)
    vectors = export.embed_items(tower, new.ids, new.features)
    if not np.isfinite(vectors).all():
        raise DataError(f"{items_file}: the item tower gave non-finite vectors; check the numeric columns")
    log(f"embedded {len(new.ids)} new items with version {manifest.version}'s item tower")

    ids = np.concatenate([catalog.ids.astype(str), new.ids])
    embeddings = np.concatenate([catalog.embeddings, vectors]).astype(np.float32)
    arrays = {
        "item_embeddings": embeddings,
        "item_ids": ids,
        "item_titles": np.concatenate([catalog.titles.astype(str), new.titles]),
        "item_genres": np.concatenate([catalog.genres, new.genre_masks]).astype(np.uint32),
        "item_popularity": np.concatenate([catalog.popularity, np.zeros(len(new.ids), np.float32)]),
        "user_ids": np.asarray(users.ids).astype(str),
        "seen_indptr": users.seen_indptr,
        "seen_items": np.asarray(users.seen_items),
    }
    with bundle.BundleStaging(model_base) as staging:
        shutil.copytree(source / bundle.USER_TOWER, staging.path / bundle.USER_TOWER)
        if (source / bundle.EVALUATION).is_dir():
            shutil.copytree(source / bundle.EVALUATION, staging.path / bundle.EVALUATION)
        export.resave_item_tower(tower, staging.path / bundle.ITEM_TOWER, ids, embeddings)
        for name, array in arrays.items():
            staging.save_array(name, array)
        fields = {k: v for k, v in manifest.raw.items() if k not in ("format", "version", "created_at", "files")}
        fields.update({
            "item_count": len(ids),
            "scann": ann.write_searcher(staging.path, embeddings),
            # The model (metrics, training) is the base version's; only the catalog grew.
            "added_items": [*manifest.raw.get("added_items", []), {
                "base_version": manifest.version, "file": str(items_file), "sha256": bundle.sha256_file(items_file),
                "count": len(new.ids), "first_row": manifest.item_count,
            }],
        })  # fmt: skip
        published = staging.publish(fields)
    log(f"published {published}: {len(ids):,} items ({len(new.ids)} added to version {manifest.version})")
    return published


def add_command(commands) -> None:
    """Registers ``add-items`` on the trainer's sub-command parser."""
    parser = commands.add_parser(
        "add-items", help="embed new items from their features and publish the next bundle version (no retraining)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("items_file", type=Path, metavar="NEW_ITEMS",
                        help="u.item layout (*.item), or a CSV/TSV/Parquet with item_id, title and feature columns")
    parser.add_argument("--model-base", type=Path, required=True, help="the model base whose newest version to extend")
    parser.add_argument("--separator", default="|", help="between the values of a multi feature (default %(default)s)")
    parser.add_argument("--max-bad-rows", type=int, default=0,
                        help="skip up to this many malformed rows (each reported) instead of stopping (default 0)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.max_bad_rows < 0:
        raise DataError(f"--max-bad-rows must be 0 or more, got {args.max_bad_rows}")
    add_items(args.model_base, args.items_file, args.separator, args.max_bad_rows,
              lambda line: print(line, flush=True))
    return 0
