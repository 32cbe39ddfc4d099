"""The towers' cold-start paths recover a signal planted in small generated data sets.

Each data set is written in the generic layout (tests need no MovieLens) and
trained with ``trainer.train.train`` for a few epochs; the assertions read the
published bundle the way the services do:

* users' taste is set by their occupation alone: occupation "a" watches mostly
  the items of category "x", occupation "b" those of category "y". A new user
  described only by an occupation (``embed_features``, no movies) must get the
  items of their occupation's category first, and the two occupations different lists;
* two items no one interacted with, one of each category, are embedded from
  their category alone (the metadata path): every user who likes "x" must score
  the new "x" item above the new "y" item, and the other way round.

A user feature without signal (country) rides along in both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

USERS, ITEMS_PER_CATEGORY, PER_USER = 240, 20, 12


def _write_planted(folder: Path, seed: int = 5) -> dict[str, str]:
    """The generic layout with the planted signal; returns user id -> occupation."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    items = [(f"x{i}", "x") for i in range(ITEMS_PER_CATEGORY)] + [(f"y{i}", "y") for i in range(ITEMS_PER_CATEGORY)]
    new_items = [("new-x", "x"), ("new-y", "y")]
    occupations = {f"u{u}": "a" if u % 2 == 0 else "b" for u in range(USERS)}
    rows = ["user_id,item_id,timestamp"]
    popularity = 1.0 / np.arange(1, ITEMS_PER_CATEGORY + 1)  # within a category, some items are liked more
    for user, occupation in occupations.items():
        liked, other = ("x", "y") if occupation == "a" else ("y", "x")
        picks = set()
        while len(picks) < PER_USER:
            category = liked if rng.random() < 0.9 else other
            picks.add(f"{category}{rng.choice(ITEMS_PER_CATEGORY, p=popularity / popularity.sum())}")
        for t, item in enumerate(sorted(picks, key=lambda _: rng.random())):
            rows.append(f"{user},{item},{1_700_000_000 + 60 * t}")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,category\n" + "".join(f"{i},{c}\n" for i, c in items + new_items))
    # A second user feature without signal: the path must learn which one counts.
    (folder / "users.csv").write_text("user_id,occupation,country\n" + "".join(
        f"{u},{o},{rng.choice(['FR', 'US', 'DE'])}\n" for u, o in occupations.items()))
    (folder / "schema.yaml").write_text(
        "items:\n  features:\n    category: categorical\nusers:\n  features:\n    occupation: categorical\n"
        "    country: categorical\n"
    )
    return occupations


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)

    from serving import bundle
    from trainer.config import ModelConfig, TrainConfig
    from trainer.readers import read_folder
    from trainer.train import train

    folder = tmp_path_factory.mktemp("planted") / "data"
    occupations = _write_planted(folder)
    config = TrainConfig(test_fraction=0.0, validation_fraction=0.0, epochs=1, batch_size=256, model=ModelConfig())
    result = train(read_folder(folder), config, tmp_path_factory.mktemp("models"), verbose=0)
    manifest = bundle.read_manifest(result.bundle)
    return result.bundle, manifest, occupations


def _features_query(bundle_dir: Path, occupations: list[str]) -> np.ndarray:
    import tensorflow as tf

    from serving import bundle

    signature = tf.saved_model.load(str(bundle_dir / bundle.USER_TOWER)).signatures[bundle.FEATURES_SIGNATURE]
    n = len(occupations)
    return signature(age=tf.zeros([n], tf.int32), gender=tf.constant([""] * n), occupation=tf.constant(occupations),
                     zip_code=tf.constant([""] * n), watched_item_ids=tf.constant([[""]] * n))["embedding"].numpy()


def test_a_new_user_is_served_by_occupation(planted) -> None:
    from serving import bundle

    bundle_dir, manifest, _ = planted
    items = bundle.load_items(bundle_dir, manifest)
    a, b, nothing = _features_query(bundle_dir, ["a", "b", "astronaut"])
    for query, liked in ((a, "x"), (b, "y")):
        top = items.ids[np.argsort(-(items.embeddings @ query), kind="stable")[:10]]
        assert sum(i.startswith(liked) for i in top) >= 9, top
    assert not np.allclose(a, b, atol=1e-3)
    # An occupation the model never saw is the query of a user about whom nothing is known.
    assert np.allclose(nothing, _features_query(bundle_dir, [""])[0], atol=1e-6)


def test_a_new_item_is_placed_by_its_category(planted) -> None:
    from serving import bundle

    bundle_dir, manifest, occupations = planted
    items = bundle.load_items(bundle_dir, manifest)
    users = bundle.load_users(bundle_dir, manifest)
    from query_service.model import load_user_tower

    vectors = load_user_tower(bundle_dir, manifest).known_vectors
    row = {item: r for r, item in enumerate(items.ids.tolist())}
    new_x, new_y = items.embeddings[row["new-x"]], items.embeddings[row["new-y"]]
    likes_x = np.array([occupations[u] == "a" for u in users.ids.tolist()])
    prefers_x = vectors @ new_x > vectors @ new_y
    assert prefers_x[likes_x].mean() > 0.95 and prefers_x[~likes_x].mean() < 0.05
    # And it competes with the known items of its category: above the other category's median item.
    scores = vectors @ items.embeddings.T
    y_items = [row[f"y{i}"] for i in range(ITEMS_PER_CATEGORY)]
    assert (scores[likes_x, row["new-x"]] > np.median(scores[likes_x][:, y_items], axis=1)).mean() > 0.9
    record = manifest.raw["training"]["new_item_path"]
    assert record["metadata_scale"] > 0 and record["held_out_items"] >= 1
