"""``python -m bench.cold_start`` (``make bench-cold-start``): the shipped model on issue 17's
cold-start protocols, against their baselines on the same draws.

For each draw (numpy seeds 7..11; ``--draws N`` takes the first N), 10% of the
users or of the movies are held out entirely (``bench.cold_start_baselines.held_out``,
the draws of docs/experiments/cold_start.py), the trainer is run on the rest
exactly as ``python -m trainer train --test-fraction 0`` runs it
(``trainer.train.train``: its defaults, early stopping on its validation
slice; ``--epochs`` caps the epochs), and the published bundle's SavedModels
score the held-out part:

1. new users known only by age, gender, occupation and zip code: the user
   tower's ``embed_features`` with no watched movies; every rating of theirs is
   a test pair, ranked over the whole catalog, nothing excluded;
2. the same users naming their 5 earliest movies (``watched_item_ids``); the
   rest are test pairs, the 5 excluded from the ranking;
3. new movies (no rating in training; not in the trained catalog at all): the
   item tower's ``embed_items`` from genres, release year and title, against
   the known users' ``serving_default`` vectors; each test pair (a rating of a
   new movie) ranks its movie among the new movies.

Baselines on the same draws: popularity and segment popularity (1),
popularity and EASE λ 500 from the 5 named movies (2), uniform random and the
genre profile (3), ranked as the issue ranked them (ties: the lower catalog
row first); the model's ties, if any, are broken in a seeded random order, so
it cannot gain from the catalog's order. Prints mean ± SE over the draws and the mean per-draw ratio
to the issue's yardstick, and writes ``bench/results/cold_start_quality.json``
(``bench/results/cold_start.json`` is the services' start-up measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import cold_start_baselines as base
from trainer.dataset import Dataset, Feature, Interactions, Table

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "cold_start_quality.json"
DRAW_SEEDS = (7, 8, 9, 10, 11)
# Protocol -> (the yardstick row, the target ratios at the two K).
TARGETS = {
    "new users, features only": ("popularity", (1.1, 1.0)),
    "new users, 5 earliest movies named": ("popularity", (1.0, 1.0)),
    "new movies, metadata only": ("genre profile · movie genres (cosine)", (1.0, 1.0)),
}
MODEL = "two-tower (shipped trainer)"
PROFILES = {"F 25 student": (25, "F", "student"), "M 60 retired": (60, "M", "retired")}


def log(message: str) -> None:
    print(f"[bench.cold_start {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data sets without the held-out part


def _take_feature(feature: Feature, rows: np.ndarray) -> Feature:
    if feature.codes is not None:
        return dataclasses.replace(feature, codes=feature.codes[rows])
    if feature.values is not None:
        return dataclasses.replace(feature, values=feature.values[rows])
    lists = feature.lists
    lengths = lists.lengths()[rows]
    starts = np.repeat(lists.splits[rows], lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return dataclasses.replace(feature, lists=dataclasses.replace(lists, splits=splits, values=lists.values[starts]))


def _take_table(table: Table, rows: np.ndarray) -> Table:
    """The rows ``rows`` of ``table``; every feature keeps its vocabulary (the readers'
    codes are kept as they are; the trainer sizes embeddings by the vocabulary)."""
    return Table(ids=table.ids[rows], features=tuple(_take_feature(f, rows) for f in table.features))


def without(ds: Dataset, *, users: np.ndarray | None = None, items: np.ndarray | None = None) -> Dataset:
    """``ds`` with the user rows ``users`` or the item rows ``items`` removed, with all their interactions."""
    inter = ds.interactions
    keep = np.ones(len(inter), dtype=bool)
    kept_users, kept_items = np.arange(len(ds.users)), np.arange(len(ds.items))
    if users is not None:
        keep &= ~np.isin(inter.users, users)
        kept_users = np.setdiff1d(kept_users, users)
    if items is not None:
        keep &= ~np.isin(inter.items, items)
        kept_items = np.setdiff1d(kept_items, items)
    user_row = np.full(len(ds.users), -1, np.int32)
    user_row[kept_users] = np.arange(len(kept_users))
    item_row = np.full(len(ds.items), -1, np.int32)
    item_row[kept_items] = np.arange(len(kept_items))
    taken = inter.take(np.flatnonzero(keep))
    return dataclasses.replace(
        ds,
        interactions=Interactions(user_row[taken.users], item_row[taken.items], taken.timestamps, taken.weights),
        users=_take_table(ds.users, kept_users),
        items=_take_table(ds.items, kept_items),
        item_titles=ds.item_titles[kept_items],
    )


def _vocabulary_free(ds: Dataset) -> Dataset:
    """Vocabularies rebuilt from the rows present, so values seen only in the held-out
    part are unknown to the model (as they would be in production)."""

    def rebuild(feature: Feature) -> Feature:
        if feature.codes is not None:
            used = np.unique(feature.codes[feature.codes > 0])
            new = np.zeros(len(feature.vocab) + 1, np.int32)
            new[used] = np.arange(1, len(used) + 1)
            return dataclasses.replace(feature, vocab=feature.vocab[used - 1], codes=new[feature.codes])
        if feature.lists is not None:
            used = np.unique(feature.lists.values)
            new = np.zeros(len(feature.vocab) + 1, np.int32)
            new[used] = np.arange(1, len(used) + 1)
            lists = dataclasses.replace(feature.lists, values=new[feature.lists.values])
            return dataclasses.replace(feature, vocab=feature.vocab[used - 1], lists=lists)
        return feature

    def table(t: Table) -> Table:
        return Table(ids=t.ids, features=tuple(rebuild(f) for f in t.features))

    return dataclasses.replace(ds, users=table(ds.users), items=table(ds.items))


# --------------------------------------------------------------------------- training and the SavedModels


def train_bundle(ds: Dataset, work: Path, name: str, epochs: int | None) -> Path:
    """Runs the shipped trainer on ``ds`` (every interaction trained on) and returns its bundle;
    the trainer's log goes to ``work/<name>.log``."""
    from trainer.config import TrainConfig
    from trainer.train import train

    config = TrainConfig(test_fraction=0.0) if epochs is None else TrainConfig(test_fraction=0.0, epochs=epochs)
    started = time.monotonic()
    with open(work / f"{name}.log", "w") as out, contextlib.redirect_stdout(out):
        result = train(ds, config, work / name, verbose=0)
    record = json.loads((result.bundle / "manifest.json").read_text())["training"]
    log(f"  trained {name}: {record['epochs_run']} epochs run, best {record['best_epoch']}, "
        f"{time.monotonic() - started:.0f} s")
    return result.bundle


def _user_request(ds: Dataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """embed_features' demographic inputs for user ``rows`` of ``ds``, from the users file."""
    def categorical(name: str) -> np.ndarray:
        feature = ds.users.feature(name)
        return np.where(feature.codes[rows] > 0, np.concatenate([[""], feature.vocab])[feature.codes[rows]], "")

    ages = ds.users.feature("age").values[rows]
    return {"age": np.where(np.isfinite(ages), ages, 0).astype(np.int32), "gender": categorical("gender"),
            "occupation": categorical("occupation"), "zip_code": categorical("zip")}


def embed_new_users(bundle_dir: Path, request: dict[str, np.ndarray], watched: list[list[str]]) -> np.ndarray:
    import tensorflow as tf

    from serving import bundle

    signature = tf.saved_model.load(str(bundle_dir / bundle.USER_TOWER)).signatures[bundle.FEATURES_SIGNATURE]
    width = max(1, max(len(w) for w in watched))
    padded = np.array([w + [""] * (width - len(w)) for w in watched], dtype=str).reshape(len(watched), width)
    inputs = {name: tf.constant(values) for name, values in request.items()}
    return signature(**inputs, watched_item_ids=tf.constant(padded))["embedding"].numpy()


def catalog_vectors(bundle_dir: Path) -> np.ndarray:
    from serving import bundle

    return bundle.load_items(bundle_dir, bundle.read_manifest(bundle_dir)).embeddings


# --------------------------------------------------------------------------- the protocols


def new_user_draw(ds: Dataset, x: np.ndarray, seed: int, work: Path, epochs: int | None) -> dict:
    """Protocols 1 and 2 on one draw of held-out users."""
    inter = ds.interactions
    train_users, held = base.held_out(len(ds.users), seed)
    bundle_dir = train_bundle(_vocabulary_free(without(ds, users=held)), work, f"users-{seed}", epochs)
    items = catalog_vectors(bundle_dir)  # rows = ds.items rows: no movie was removed
    x_train = x[train_users]
    popularity = np.tile(x_train.sum(axis=0), (len(held), 1))
    request = _user_request(ds, held)

    # (1) features only, whole catalog
    queries = embed_new_users(bundle_dir, request, [[] for _ in held])
    scores1 = queries @ items.T
    genders, occupations = ds.users.feature("gender").codes, ds.users.feature("occupation").codes
    ages = ds.users.feature("age").values
    segment = base.segment_popularity(genders, base.age_buckets(np.nan_to_num(ages)), occupations, x, train_users, held)
    one = {MODEL: base.hit_rates(scores1, x[held], None, tie_seed=seed)}
    one.update({name: base.hit_rates(s, x[held], None) for name, s in
                (("popularity", popularity), ("segment popularity", segment))})

    # (2) the 5 earliest movies named, excluded from the ranking
    named, rest = base.earliest(inter.users, inter.items, inter.timestamps, len(ds.items), held)
    watched = [ds.items.ids[np.flatnonzero(row)].tolist() for row in named]
    scores2 = embed_new_users(bundle_dir, request, watched) @ items.T
    seen = named.astype(bool)
    two = {MODEL: base.hit_rates(scores2, rest, seen, tie_seed=seed)}
    two.update({name: base.hit_rates(s, rest, seen) for name, s in
                (("popularity", popularity), ("EASE λ500 from the 5", base.ease_from_named(x_train, named)))})

    # Personalised? Distinct top-10 lists among the held-out users, and the two profiles.
    top = np.argsort(-scores1, axis=1, kind="stable")[:, :10]
    profiles = {label: dict(zip(("age", "gender", "occupation", "zip_code"), (np.array([a], np.int32), np.array([g]),
                                                                             np.array([o]), np.array([""]))))
                for label, (a, g, o) in PROFILES.items()}
    lists = {label: np.argsort(-(embed_new_users(bundle_dir, r, [[]]) @ items.T)[0], kind="stable")[:10]
             for label, r in profiles.items()}
    personal = {
        "held-out users": len(held),
        "distinct top-10 lists": len({tuple(t) for t in top.tolist()}),
        "top-10 overlap of the two profiles": len(set(lists["F 25 student"]) & set(lists["M 60 retired"])),
        "top-10 lists": {label: ds.items.ids[rows].tolist() for label, rows in lists.items()},
    }
    return {"new users, features only": one, "new users, 5 earliest movies named": two, "personalisation": personal}


def new_movie_draw(ds: Dataset, x: np.ndarray, genres: np.ndarray, seed: int, work: Path, epochs: int | None) -> dict:
    """Protocol 3 on one draw of held-out movies."""
    import tensorflow as tf

    from serving import bundle
    from trainer import add_items, export

    known, new = base.held_out(len(ds.items), seed)
    bundle_dir = train_bundle(_vocabulary_free(without(ds, items=new)), work, f"movies-{seed}", epochs)
    manifest = bundle.read_manifest(bundle_dir)
    users = bundle.load_users(bundle_dir, manifest)
    # Known users (the trained ones) with their serving vectors; rows of ds.users.
    user_rows = bundle.IdIndex(ds.users.ids).rows(users.ids.tolist())
    lookup = tf.saved_model.load(str(bundle_dir / bundle.USER_TOWER)).signatures[bundle.USER_TOWER_SIGNATURE]
    queries = lookup(user_id=tf.constant(users.ids.astype(str)))["embedding"].numpy()
    tower = export.load_item_tower(bundle_dir / bundle.ITEM_TOWER)
    new_table = _take_table(ds.items, new)
    features = add_items.raw_item_features(new_table, add_items.item_inputs(manifest, bundle_dir))
    vectors = export.embed_items(tower, new_table.ids, features)
    test = x[user_rows][:, new]
    x_known = x[user_rows] * np.isin(np.arange(len(ds.items)), known)[None, :]
    ks = (10, 50)
    results = {
        MODEL: base.hit_rates(queries @ vectors.T, test, None, ks, tie_seed=seed),
        "uniform random (expected)": {f"hr@{k}": k / len(new) for k in ks},
        "genre profile · movie genres (cosine)": base.hit_rates(base.genre_profile_scores(x_known, genres, new), test, None, ks),
    }
    return {"new movies, metadata only": results}


# --------------------------------------------------------------------------- report


def summarise(per_draw: list[dict]) -> dict:
    """{method: {hr@k: [per draw]}} -> {method: {hr@k: {mean, se, draws}}}."""
    out = {}
    for method in per_draw[0]:
        out[method] = {}
        for k in per_draw[0][method]:
            values = np.array([d[method][k] for d in per_draw])
            se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
            out[method][k] = {"mean": float(values.mean()), "se": se, "draws": values.round(5).tolist()}
    return out


def ratios(per_draw: list[dict], baseline: str) -> dict:
    """{method: {hr@k: mean over draws of HR / the baseline's HR on the same draw (± SE)}}."""
    out = {}
    for method in per_draw[0]:
        out[method] = {}
        for k in per_draw[0][method]:
            r = np.array([d[method][k] / d[baseline][k] for d in per_draw])
            out[method][k] = {"mean": float(r.mean()), "se": float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else None}
    return out


def _pm(cell: dict) -> str:
    return f"{cell['mean']:.4f}" + (f" ± {cell['se']:.4f}" if cell["se"] is not None else "")


def table(report: dict) -> str:
    lines = ["| protocol | method | HR@10 | HR@K2 | ratio HR@10 | ratio HR@K2 | target |", "|---|---|---|---|---|---|---|"]
    for protocol, (baseline, target) in TARGETS.items():
        rows, rel = report["protocols"][protocol], report["ratios"][protocol]
        for method, cells in rows.items():
            k1, k2 = list(cells)
            goal = f"≥ {target[0]:g}× / ≥ {target[1]:g}× {baseline}" if method == MODEL else ""
            lines.append(f"| {protocol} | {method} | {_pm(cells[k1])} | {k2.upper()} {_pm(cells[k2])} | "
                         f"{rel[method][k1]['mean']:.3f} | {rel[method][k2]['mean']:.3f} | {goal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent.parent / "shared" / "data" / "ml-100k",
                        help="MovieLens 100k as GroupLens publishes it (default %(default)s)")
    parser.add_argument("--draws", type=int, default=len(DRAW_SEEDS), help="draws, seeds 7, 8, ... (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="cap on the trainer's epochs (default: its own)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not 1 <= args.draws <= len(DRAW_SEEDS):
        parser.error(f"--draws must be 1..{len(DRAW_SEEDS)}")
    from trainer.readers import ReadOptions, read_folder

    started = time.monotonic()
    ds = read_folder(args.data_dir, ReadOptions(format="ml-100k"))
    inter = ds.interactions
    x = np.zeros((len(ds.users), len(ds.items)))
    x[inter.users, inter.items] = 1.0
    genre = ds.items.feature("genres")
    genres = np.zeros((len(ds.items), len(genre.vocab)))
    genres[np.repeat(np.arange(len(ds.items)), genre.lists.lengths()), genre.lists.values - 1] = 1.0
    seeds = DRAW_SEEDS[: args.draws]
    draws: list[dict] = []
    command = "python -m bench.cold_start " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        for seed in seeds:
            log(f"draw {seed}")
            draws.append({**new_user_draw(ds, x, seed, Path(tmp), args.epochs),
                          **new_movie_draw(ds, x, genres, seed, Path(tmp), args.epochs)})
            # Written after every draw, so a long run interrupted still leaves the draws it finished.
            report = {
                "command": command, "data": str(args.data_dir), "draw_seeds": list(seeds[: len(draws)]),
                "epochs_cap": args.epochs,
                "protocols": {p: summarise([d[p] for d in draws]) for p in TARGETS},
                "ratios": {p: ratios([d[p] for d in draws], baseline) for p, (baseline, _) in TARGETS.items()},
                "personalisation": [d["personalisation"] for d in draws],
                "seconds": round(time.monotonic() - started, 1),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(table(report))
    for seed, p in zip(seeds, report["personalisation"]):
        print(f"draw {seed}: {p['distinct top-10 lists']} distinct top-10 lists among {p['held-out users']} new users "
              f"(features only); F 25 student and M 60 retired share {p['top-10 overlap of the two profiles']} of 10")
    log(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
