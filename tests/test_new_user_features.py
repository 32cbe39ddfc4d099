"""Cold start with features: a request may describe a user the model has not seen.

The exported user tower has a second signature, ``embed_features``, that runs the
query tower on a new user's age, gender, occupation, zip code and watched
movies. A new user's query is the history path over the watched movies plus the
(weighted) features path; a known user's is the history path alone. So, fed a
known user's own features and training history, ``embed_features`` minus the
same features with no movies (the features path alone) must give that user's
``serving_default`` vector: the paths are one model.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.internal.v1 import query_service_pb2, query_service_pb2_grpc
from recsys.v1 import common_pb2, gateway_pb2 as pb
from serving import bundle

pytestmark = pytest.mark.slow


def _raw_users(path: Path) -> dict[str, list[str]]:
    """u.user as written (id|age|gender|occupation|zip), what a client would send: user id -> the other fields."""
    rows = [line.split("|") for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    return {row[0]: row[1:] for row in rows}


def _features_of(users, seen_item_ids, user_id: str) -> common_pb2.UserFeatures:
    age, gender, occupation, zip_code = users[user_id]
    return common_pb2.UserFeatures(
        age=int(age), gender=gender, occupation=occupation, zip_code=zip_code, watched_item_ids=seen_item_ids,
    )


def _features_path(tower, features: list[common_pb2.UserFeatures], weight: float) -> np.ndarray:
    """The features path of each user beside named movies: ``weight`` (the bundle's new-user
    weight) times their vector without movies (where the features path is the whole query)."""
    no_movies = []
    for f in features:
        copy = common_pb2.UserFeatures()
        copy.CopyFrom(f)
        del copy.watched_item_ids[:]
        no_movies.append(copy)
    return weight * tower.embed_features(no_movies)[0]


def _embed(address: str, user_ids: list[str], features: list[common_pb2.UserFeatures] = ()):
    with grpc.insecure_channel(address) as channel:
        return query_service_pb2_grpc.QueryServiceStub(channel).EmbedUsers(
            query_service_pb2.EmbedUsersRequest(user_ids=user_ids, user_features=features), timeout=30
        )


def test_features_signature_reproduces_known_users(trained_model_base, small_movielens_dir):
    import tensorflow as tf

    from query_service.model import load_user_tower

    [path] = bundle.version_dirs(trained_model_base).values()
    manifest = bundle.read_manifest(path)
    tower = load_user_tower(path, manifest)
    assert tower.embeds_features
    users = _raw_users(small_movielens_dir / "u.user")
    known = tower.users.ids[:12].tolist()
    features = [_features_of(users, tower.users.seen_item_ids(u), u) for u in known]
    # Upper/lower case and spaces are normalised like the training data.
    features[0].gender = f" {features[0].gender.lower()} "
    features[1].occupation = features[1].occupation.upper()
    from_features, informative = tower.embed_features(features)
    assert informative.all()
    features_path = _features_path(tower, features, manifest.raw["training"]["new_user_path"]["new_user_weight"])
    by_id = tower.embed(known)
    np.testing.assert_allclose(from_features - features_path, by_id, rtol=1e-4, atol=1e-4)
    assert tower.embed_features([common_pb2.UserFeatures(age=f.age, gender=f.gender) for f in features])[1].all()
    # Unknown values count as unknown; padding, unknown movies and order do not matter.
    f = features[2]
    noisy = common_pb2.UserFeatures()
    noisy.CopyFrom(f)
    noisy.watched_item_ids[:] = ["no-such-movie", *reversed(f.watched_item_ids)]
    np.testing.assert_allclose(tower.embed_features([noisy, features[3]])[0][0], from_features[2], rtol=1e-5, atol=1e-5)
    # Only values the model never saw: nothing to go on.
    nothing, informative = tower.embed_features([common_pb2.UserFeatures(gender="?", occupation="astronaut",
                                                                         watched_item_ids=["no-such-movie"])])
    assert np.isfinite(nothing).all() and not informative[0]
    del tf


def test_query_service_embeds_new_users_from_features(live_stack, small_movielens_dir):
    users = _raw_users(small_movielens_dir / "u.user")
    known = live_stack.users.ids[4]
    as_new = _features_of(users, live_stack.users.seen_item_ids(known), known)
    response = _embed(live_stack.query.address, ["new-user", known, "other"],
                      [as_new, as_new, common_pb2.UserFeatures()])
    new, same, plain = response.embeddings
    assert (new.known, new.from_features) == (False, True)
    assert (same.known, same.from_features) == (True, False)  # known users keep their trained vector
    assert (plain.known, plain.from_features) == (False, False)  # no features: the fallback path
    assert np.isfinite(new.values).all()


@pytest.mark.parametrize(
    "features, message",
    [
        (common_pb2.UserFeatures(age=-3), "age must be 0"),
        (common_pb2.UserFeatures(age=400), "age must be 0"),
        (common_pb2.UserFeatures(gender="x" * 100), "gender is longer than 64 bytes"),
        (common_pb2.UserFeatures(watched_item_ids=["1"] * 1001), "at most 1000"),
        (common_pb2.UserFeatures(watched_item_ids=["1", ""]), "every watched item id must be 1..256 bytes"),
    ],
    ids=["negative-age", "huge-age", "long-gender", "too-many-watched", "empty-watched-id"],
)
def test_bad_features_are_invalid_argument_at_both_tiers(live_stack, features, message):
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=5, user_features=features), timeout=10)
    details = err.value.details()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("user_features: ") and message in details
    with pytest.raises(grpc.RpcError) as err:
        _embed(live_stack.query.address, ["new"], [features])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_query_service_wants_one_features_entry_per_user(live_stack):
    with pytest.raises(grpc.RpcError) as err:
        _embed(live_stack.query.address, ["a", "b"], [common_pb2.UserFeatures(age=30)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_features has 1 entries for 2 user_ids" in err.value.details()


def test_gateway_recommends_for_a_described_new_user(live_stack):
    items = live_stack.items
    watched = [items.ids[r] for r in bundle.popularity_order(items)[:3]]
    features = common_pb2.UserFeatures(age=31, gender="F", occupation="engineer", zip_code="94110",
                                       watched_item_ids=watched)
    vector = np.array(_embed(live_stack.query.address, ["new"], [features]).embeddings[0].values, np.float32)
    scores = items.embeddings @ vector

    response = live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=10, user_features=features), timeout=10)
    assert not response.fallback
    assert [i.item_id for i in response.items] == [items.ids[r] for r in np.argsort(-scores, kind="stable")[:10]]

    excluded = live_stack.stub.Recommend(
        pb.RecommendRequest(user_id="new", k=10, user_features=features, exclude_seen=True), timeout=10
    )
    keep = np.ones(len(items.ids), bool)
    keep[[items.row_of[i] for i in watched]] = False
    expected = [items.ids[r] for r in np.argsort(-np.where(keep, scores, -np.inf), kind="stable")[:10]]
    assert [i.item_id for i in excluded.items] == expected and not set(watched) & {i.item_id for i in excluded.items}

    # Without features, or with only values the model never saw, the same id is a cold-start fallback.
    assert live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=10), timeout=10).fallback
    unknown_only = common_pb2.UserFeatures(gender="?", occupation="astronaut", watched_item_ids=["no-such-movie"])
    fallback = live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=5, user_features=unknown_only), timeout=10)
    assert fallback.fallback
    assert [i.item_id for i in fallback.items] == [items.ids[r] for r in bundle.popularity_order(items)[:5]]


def test_new_users_sharing_a_placeholder_id_keep_their_own_features(live_stack):
    """In one batch, two requests with the same unknown id but different features get different answers."""
    items = live_stack.items
    order = bundle.popularity_order(items)
    a = common_pb2.UserFeatures(age=20, gender="M", watched_item_ids=[items.ids[order[0]], items.ids[order[1]]])
    b = common_pb2.UserFeatures(age=60, gender="F", watched_item_ids=[items.ids[order[-1]], items.ids[order[-2]]])
    requests = [pb.RecommendRequest(user_id="anonymous", k=10, user_features=f) for f in (a, b, a)]
    batch = live_stack.stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=10)
    singles = [live_stack.stub.Recommend(r, timeout=10) for r in requests]
    ids = [[i.item_id for i in r.items] for r in batch.responses]
    assert ids == [[i.item_id for i in r.items] for r in singles]
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert not any(r.fallback for r in batch.responses)


def test_cli_describes_a_new_user(live_stack, capsys):
    from gateway import cli

    watched = live_stack.items.ids[0]
    args = ["--address", live_stack.gateway.address, "recommend", "someone-new", "-k", "3",
            "--age", "30", "--gender", "F", "--watched", watched, "--exclude-seen"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = out.strip().splitlines()[3:]
    assert "fallback" not in out and len(rows) == 3 and watched not in [row.split()[1] for row in rows]
    assert cli.main(["--address", live_stack.gateway.address, "recommend", "someone-new", "-k", "3"]) == 0
    assert "fallback" in capsys.readouterr().out


def test_two_demographic_profiles_get_different_personalised_answers(live_stack):
    """Features alone (no movies) are personalised: different profiles, different lists."""
    answers = []
    for age, gender, occupation in ((25, "F", "student"), (60, "M", "retired")):
        features = common_pb2.UserFeatures(age=age, gender=gender, occupation=occupation)
        response = live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=10, user_features=features), timeout=10)
        assert not response.fallback
        answers.append([(i.item_id, round(i.score, 4)) for i in response.items])
    assert answers[0] != answers[1]
    # Values the model never saw are nothing to go on: the fallback.
    unknown = common_pb2.UserFeatures(gender="?", occupation="astronaut")
    assert live_stack.stub.Recommend(pb.RecommendRequest(user_id="new", k=10, user_features=unknown), timeout=10).fallback
