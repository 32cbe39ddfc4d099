"""A stand-in bundle for benchmarking when the trainer cannot be run: ``python -m bench.standin``.

Same format and same serving cost as a trained bundle: MovieLens 100k's items,
users and watch histories, and a user tower of the trained model's shape
(user-id embedding plus the mean of the watched movies' embeddings, through a
dense layer, 32 dims), but with random weights: its recommendations mean
nothing, its latency and CPU are those of the real tower. The results say
when this was used. Optionally the catalog is replaced by a synthetic one of
``--items`` rows (the users' histories keep pointing at its first rows).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DIM = 32


def read_movielens(data_dir: Path):
    genres = [line.split("|")[0] for line in (data_dir / "u.genre").read_text(encoding="latin-1").splitlines() if line]
    rows = [line.split("|") for line in (data_dir / "u.item").read_text(encoding="latin-1").splitlines() if line]
    item_ids = np.array([r[0] for r in rows])
    titles = np.array([r[1] for r in rows])
    bits = np.array([[int(x) for x in r[5:5 + len(genres)]] for r in rows], dtype=np.uint32)
    genre_mask = (bits << np.arange(len(genres), dtype=np.uint32)).sum(axis=1).astype(np.uint32)
    ratings = np.loadtxt(data_dir / "u.data", dtype=np.int64)
    return genres, item_ids, titles, genre_mask, ratings


def build(model_base: Path, data_dir: Path, items: int | None = None, seed: int = 0) -> Path:
    import tensorflow as tf

    from bench.synthetic import clustered_table
    from serving import ann, bundle

    genres, item_ids, titles, genre_mask, ratings = read_movielens(data_dir)
    rng = np.random.default_rng(seed)
    row_of_item = {item: row for row, item in enumerate(item_ids.tolist())}
    user_ids = np.array(sorted({str(u) for u in ratings[:, 0]}, key=int))
    row_of_user = {u: i for i, u in enumerate(user_ids.tolist())}
    seen: list[list[int]] = [[] for _ in user_ids]
    for u, i, *_ in ratings:
        seen[row_of_user[str(u)]].append(row_of_item[str(i)])
    indptr = np.cumsum([0] + [len(s) for s in seen]).astype(np.int64)
    seen_items = np.concatenate([np.array(s, dtype=np.int32) for s in seen])
    popularity = np.bincount(seen_items, minlength=len(item_ids)).astype(np.float32)

    n = items or len(item_ids)
    embeddings = clustered_table(max(n, len(item_ids)), DIM, clusters=max(20, n // 500), seed=seed)[:n] * 5.0
    if n > len(item_ids):
        extra = np.arange(len(item_ids) + 1, n + 1)
        item_ids = np.array(item_ids.tolist() + [str(i) for i in extra])  # narrowest fixed width
        titles = np.concatenate([titles, np.char.add("Synthetic movie ", extra.astype(str))])
        genre_mask = np.concatenate([genre_mask, (1 << rng.integers(0, len(genres), n - len(genre_mask))).astype(np.uint32)])
        popularity = np.concatenate([popularity, np.zeros(n - len(popularity), dtype=np.float32)])
    popularity = (popularity + 1e-3) / (popularity + 1e-3).sum()

    class Tower(tf.Module):
        def __init__(self):
            super().__init__()
            self.lookup = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(user_ids), tf.range(1, len(user_ids) + 1, dtype=tf.int64)), 0
            )
            self.user_emb = tf.Variable(rng.normal(scale=0.1, size=(len(user_ids) + 1, DIM)).astype(np.float32))
            self.item_emb = tf.Variable(rng.normal(scale=0.1, size=(len(item_ids[: len(row_of_item)]), DIM)).astype(np.float32))
            self.splits = tf.constant(np.concatenate([[0, 0], indptr[1:]]).astype(np.int64))  # row 0 = unknown user
            self.values = tf.constant(seen_items.astype(np.int64))
            self.dense = tf.Variable(rng.normal(scale=0.2, size=(2 * DIM, DIM)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
        def serve(self, user_id):
            rows = self.lookup.lookup(user_id)
            history = tf.RaggedTensor.from_row_splits(self.values, self.splits)
            pooled = tf.reduce_mean(tf.gather(self.item_emb, tf.gather(history, rows)), axis=1)
            pooled = tf.where(tf.math.is_nan(pooled), tf.zeros_like(pooled), pooled)
            x = tf.concat([tf.gather(self.user_emb, rows), pooled], axis=1)
            return {"embedding": tf.matmul(x, self.dense) * 10.0}

    with bundle.BundleStaging(model_base) as staging:
        staging.save_array("item_embeddings", embeddings.astype(np.float32))
        staging.save_array("item_ids", item_ids)
        staging.save_array("item_titles", titles)
        staging.save_array("item_genres", genre_mask)
        staging.save_array("item_popularity", popularity.astype(np.float32))
        staging.save_array("user_ids", user_ids)
        staging.save_array("seen_indptr", indptr)
        staging.save_array("seen_items", seen_items)
        tower = Tower()
        tf.saved_model.save(tower, str(staging.path / bundle.USER_TOWER), signatures={"serving_default": tower.serve})
        config = ann.write_searcher(staging.path, embeddings)
        return staging.publish({
            "embedding_dim": DIM, "item_count": n, "user_count": len(user_ids), "genres": genres,
            "scann": config, "metrics": {}, "stand_in": "bench.standin: untrained user tower of the trained shape",
        })


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--model-base", required=True)
    parser.add_argument("--data-dir", required=True, help="MovieLens 100k folder (u.data, u.item, u.genre)")
    parser.add_argument("--items", type=int, default=None, help="catalog size (default: MovieLens' 1682)")
    args = parser.parse_args()
    print(build(Path(args.model_base), Path(args.data_dir), args.items))


if __name__ == "__main__":
    main()
