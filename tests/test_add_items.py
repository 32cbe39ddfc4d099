"""Issue 17: new items without retraining (``python -m trainer add-items``).

The item tower's ``embed_items`` signature is the candidate tower applied to a
new item's raw features with its id unknown (the metadata path); add-items
embeds new movies with it and publishes the next bundle version, which the
running services load by their hot reload.

The served test uses a planted data set in which the genre (and the title
words that go with it) is all that decides who watches a movie: two groups
of users, one watching only Action movies, the other only Comedies. A new
Action movie and a new Comedy are then added, with no rating. Only a
metadata path that carries the genre can rank each new movie above the other
for its own group and place it among the movies of its genre: with feature
weights at zero both new movies get one and the same vector.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from movielens_fixture import GENRES
from procs import REPO, running, stack
from recsys.v1 import common_pb2, gateway_pb2 as pb
from serving import bundle

pytestmark = pytest.mark.slow

AVAILABLE = common_pb2.MODEL_VERSION_STATE_AVAILABLE
ACTION, COMEDY = GENRES.index("Action"), GENRES.index("Comedy")
# Title words that go with each genre in the planted data (the title feature carries the genre too).
WORDS = {ACTION: ("Blast", "Fury", "Strike"), COMEDY: ("Laugh", "Giggle", "Prank")}


def _trainer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_two_genre_movielens(directory: Path, users: int = 80, movies: int = 40, per_user: int = 12,
                              seed: int = 3) -> Path:
    """ml-100k layout: odd movie ids are Action, even ids Comedy; odd users watch only
    Action movies, even users only Comedies (``per_user`` of them, at random)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)), encoding="latin-1")
    lines = []
    for movie in range(1, movies + 1):
        genre = ACTION if movie % 2 else COMEDY
        year = 1950 + int(rng.integers(0, 45))
        flags = "|".join("1" if g == genre else "0" for g in range(len(GENRES)))
        title = f"{rng.choice(WORDS[genre])} {movie} ({year})"
        lines.append(f"{movie}|{title}|01-Jan-{year}||http://example.invalid/{movie}|{flags}\n")
    (directory / "u.item").write_text("".join(lines), encoding="latin-1")
    (directory / "u.user").write_text(
        "".join(f"{u}|{int(rng.integers(18, 60))}|{'MF'[u % 2]}|student|{int(rng.integers(10000, 99999))}\n"
                for u in range(1, users + 1)), encoding="latin-1")  # fmt: skip
    ratings = []
    for user in range(1, users + 1):
        own = np.arange(1 if user % 2 else 2, movies + 1, 2)
        for movie in rng.choice(own, size=per_user, replace=False):
            ratings.append(f"{user}\t{movie}\t{int(rng.integers(1, 6))}\t{880_000_000 + int(rng.integers(0, 10**7))}\n")
    (directory / "u.data").write_text("".join(ratings[i] for i in rng.permutation(len(ratings))))
    return directory


# --------------------------------------------------------------------------- embed_items, in process


def test_embed_items_is_the_candidate_tower_on_the_raw_features(small_movielens_dir, tmp_path):
    """The signature turns raw values into the codes training used: for every catalog movie
    under a new id, it gives the candidate tower's vector of that movie's feature codes with
    the id unknown. A catalog id keeps its catalog vector; spelling (case, spaces,
    punctuation between words) and values the model never saw do not break it."""
    import tensorflow as tf

    from trainer import add_items, export
    from trainer.config import ModelConfig
    from trainer.features import empty_columns, feature_columns, feature_specs
    from trainer.model import ITEM, CandidateTower
    from trainer.readers import ReadOptions, read_folder

    items = read_folder(small_movielens_dir, ReadOptions()).items
    specs = feature_specs(items)
    tower = CandidateTower(specs, len(items), ModelConfig())
    tower.build_with_dummy()  # random weights: every feature moves the vector
    catalog = np.random.default_rng(0).normal(size=(len(items), 32)).astype(np.float32)
    export.save_item_tower(tmp_path / "item_tower", items.ids, catalog, np.zeros(32, np.float32), tower, specs)
    loaded = export.load_item_tower(tmp_path / "item_tower")

    inputs = add_items.raw_item_features(items, export.item_feature_inputs(specs))
    assert set(inputs) == {"genres", "year", "title"} and inputs["genres"].ndim == 2
    new_ids = np.array([f"new-{i}" for i in items.ids])
    from_raw = export.embed_items(loaded, new_ids, inputs)
    columns = feature_columns(items, specs)
    expected = tower({**columns, ITEM: np.zeros(len(items), np.int32)}).numpy()
    np.testing.assert_allclose(from_raw, expected, rtol=1e-5, atol=1e-5)
    assert np.linalg.norm(expected - expected[0], axis=1).max() > 0  # the movies' features differ

    np.testing.assert_allclose(export.embed_items(loaded, items.ids, inputs), catalog)  # catalog ids: their vector
    respelled = {
        "genres": np.array([[f"  {g.upper()} " for g in row] for row in inputs["genres"][:3]]),
        "year": inputs["year"][:3],
        "title": np.array([f"{t.upper()}!!  --" for t in inputs["title"][:3]]),
    }
    np.testing.assert_allclose(export.embed_items(loaded, new_ids[:3], respelled), from_raw[:3], rtol=1e-5, atol=1e-5)
    unseen = {"genres": np.array([["Space Opera", ""]]), "year": np.array([np.nan], np.float32),
              "title": np.array(["zzzunseenword"])}
    nothing = tower({**empty_columns(specs), ITEM: np.zeros(1, np.int32)}).numpy()
    np.testing.assert_allclose(export.embed_items(loaded, np.array(["x"]), unseen), nothing, rtol=1e-5, atol=1e-5)
    del tf


# --------------------------------------------------------------------------- the command's errors


@pytest.fixture
def model_base(trained_model_base, tmp_path):
    import shutil

    base = tmp_path / "models"
    shutil.copytree(trained_model_base, base)
    return base


@pytest.mark.parametrize("content, message", [
    ("item_id,title,genres\n1,Old,Drama\n9001,New,Drama\n",
     "1 item id is already in the catalog of version 1: '1'"),
    ("item_id,title,genres,colour\n9001,New,Drama,red\n", "column 'colour' is not an item feature of the model"),
    ("item_id,title,genres\n", "no items"),
    ("", "no 'item_id' column"),
    ("item_id,title,year\n9001,New,1990\n9002,Newer,soon\n", "new.csv:3: year 'soon' is not a number"),
    ("item_id,title\n9001,New\n9001,Again\n", "item_id '9001' is defined twice (data rows 1 and 2)"),
])  # fmt: skip
def test_bad_new_items_files_are_refused_and_nothing_is_published(model_base, tmp_path, content, message):
    path = tmp_path / "new.csv"
    path.write_text(content)
    result = _trainer("add-items", "--model-base", str(model_base), str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert list(bundle.version_dirs(model_base)) == [1]
    assert not [p for p in model_base.iterdir() if p.name.startswith(".staging")]


def test_added_items_form_a_valid_next_version(model_base, tmp_path):
    """Same users and user tower, the catalog with the new movies appended (u.item layout
    too), the manifest saying where they came from; version 1's items are untouched."""
    path = tmp_path / "u.item"
    flags = ["0"] * len(GENRES)
    flags[ACTION] = "1"
    path.write_text(f"9001|Brand New Blast (1997)|01-Jan-1997||http://example.invalid|{'|'.join(flags)}\n",
                    encoding="latin-1")
    result = _trainer("add-items", "--model-base", str(model_base), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    old_dir, new_dir = bundle.version_dirs(model_base)[1], bundle.version_dirs(model_base)[2]
    old_manifest, new_manifest = bundle.read_manifest(old_dir), bundle.read_manifest(new_dir)
    old_items, old_users = bundle.validate(old_dir, old_manifest)
    new_items, new_users = bundle.validate(new_dir, new_manifest)
    assert new_items.ids.tolist() == [*old_items.ids.tolist(), "9001"]
    assert new_items.titles[-1] == "Brand New Blast (1997)" and new_items.genres[-1] == 1 << ACTION
    assert new_items.popularity[-1] == 0
    np.testing.assert_array_equal(new_items.embeddings[:-1], old_items.embeddings)
    assert np.isfinite(new_items.embeddings[-1]).all()
    assert new_users.ids.tolist() == old_users.ids.tolist()
    np.testing.assert_array_equal(new_users.seen_items, old_users.seen_items)
    for name, digest in old_manifest.files.items():
        if name.startswith(bundle.USER_TOWER):
            assert new_manifest.files[name] == digest
    [added] = new_manifest.raw["added_items"]
    assert added["base_version"] == 1 and added["count"] == 1 and added["first_row"] == old_manifest.item_count
    assert new_manifest.raw["metrics"] == old_manifest.raw["metrics"]

    # The re-saved item tower knows the new movie by id now (its serving_default row).
    from trainer import export

    loaded = export.load_item_tower(new_dir / bundle.ITEM_TOWER)
    row = loaded.signatures["serving_default"](item_id=np.array(["9001"]))["embedding"].numpy()[0]
    np.testing.assert_allclose(row, new_items.embeddings[-1])
    again = _trainer("add-items", "--model-base", str(model_base), str(path))
    assert again.returncode == 2 and "already in the catalog of version 2: '9001'" in again.stderr


# --------------------------------------------------------------------------- served after the reload


@pytest.fixture(scope="module")
def two_genre_model_base(tmp_path_factory) -> Path:
    data = write_two_genre_movielens(tmp_path_factory.mktemp("two-genres"))
    base = tmp_path_factory.mktemp("two-genre-models") / "models"
    result = _trainer("train", "--data-dir", str(data), "--model-base", str(base), "--test-fraction", "0",
                      "--batch-size", "128")
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def _wait_for_version(stub, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
        held = {s.service: {v.version for v in s.versions if v.state == AVAILABLE} for s in status.services}
        if all(version in held.get(s, ()) for s in ("recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService")):
            return
        assert time.monotonic() < deadline, f"version {version} not loaded by both tiers: {held}"
        time.sleep(0.1)


def test_added_movies_are_recommended_and_similar_after_the_reload(two_genre_model_base, tmp_path):
    new_items = tmp_path / "new_items.csv"
    new_items.write_text("item_id,title,genres\n"
                         "9001,Fury Strike Blast (1996),Action\n"
                         "9002,Giggle Prank Laugh (1996),Comedy\n")  # fmt: skip
    query, index, gateway = stack(two_genre_model_base)
    with running(query, index, gateway), grpc.insecure_channel(gateway.address) as channel:
        from recsys.v1 import gateway_pb2_grpc

        stub = gateway_pb2_grpc.GatewayStub(channel)
        before = stub.Recommend(pb.RecommendRequest(user_id="1", k=10), timeout=10)
        assert before.model_version == "1"
        result = _trainer("add-items", "--model-base", str(two_genre_model_base), str(new_items))
        assert result.returncode == 0, result.stdout + result.stderr
        _wait_for_version(stub, "2")

        catalog = 42  # 40 trained movies + 2 added
        for user, own, other in (("1", "9001", "9002"), ("3", "9001", "9002"), ("2", "9002", "9001"),
                                 ("4", "9002", "9001")):  # fmt: skip
            everything = stub.Recommend(pb.RecommendRequest(user_id=user, k=catalog), timeout=10)
            assert everything.model_version == "2" and not everything.fallback
            ranked = [i.item_id for i in everything.items]
            assert len(ranked) == catalog and ranked.index(own) < ranked.index(other), (user, ranked)
            # Among what the user has not watched, the new movie of their genre ranks with
            # the other movies of that genre, ahead of every movie of the other genre.
            unseen = stub.Recommend(pb.RecommendRequest(user_id=user, k=catalog, exclude_seen=True), timeout=10)
            ranked = [i.item_id for i in unseen.items]
            same_genre = [i for i in ranked if i.isdigit() and int(i) <= 40 and int(i) % 2 == int(user) % 2]
            assert ranked.index(own) < len(same_genre) + 1, (user, ranked)

        for new, parity in (("9001", 1), ("9002", 0)):
            # Its nearest movies are those of its genre (a vector that ignored the metadata
            # would be as near to one genre as to the other: about 5 of 10).
            similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=new, k=10), timeout=10)
            assert similar.model_version == "2"
            same = [int(i.item_id) % 2 == parity for i in similar.items if int(i.item_id) <= 40]
            assert len(similar.items) == 10 and sum(same) >= 7, [i.item_id for i in similar.items]
        # ... and the index serves the new movies, titled, to every similar-items query.
        similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="1", k=catalog - 1), timeout=10)
        titles = {i.item_id: i.title for i in similar.items}
        assert titles["9001"] == "Fury Strike Blast (1996)" and titles["9002"] == "Giggle Prank Laugh (1996)"
