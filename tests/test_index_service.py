"""The index service as a real process: correct top-k, exclusions, errors, versions, no TensorFlow."""

import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from bundles import write_item_bundle
from procs import REPO, Service, health_status, running, service_env
from recsys.internal.v1 import admin_pb2, admin_pb2_grpc, index_service_pb2 as pb, index_service_pb2_grpc
from recsys.v1 import common_pb2
from serving import bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("index-models")
    write_item_bundle(base, n_items=300, seed=3)
    return base


@pytest.fixture(scope="module")
def items(model_base):
    path = model_base / "1"
    return bundle.load_items(path, bundle.read_manifest(path))


@pytest.fixture(scope="module")
def index(model_base):
    with running(Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0"])) as (svc,):
        with grpc.insecure_channel(svc.address) as channel:
            yield index_service_pb2_grpc.IndexServiceStub(channel)


def exact_top(items, vector, k, excluded=()):
    scores = items.embeddings @ vector
    order = [r for r in np.argsort(-scores, kind="stable") if items.ids[r] not in set(excluded)]
    return [items.ids[r] for r in order[:k]], scores


def test_index_service_never_imports_tensorflow(model_base):
    code = (
        "import sys, pathlib\n"
        "import index_service.server, index_service.servicer\n"
        "from index_service.index import make_loader\n"
        "from serving import bundle\n"
        f"p = pathlib.Path({str(model_base / '1')!r})\n"
        "index = make_loader()(p, bundle.read_manifest(p))\n"
        "print(len(index), 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=service_env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["300", "False"]


def test_gateway_never_imports_tensorflow():
    code = (
        "import sys\n"
        "import gateway.server, gateway.servicer, gateway.recommender, gateway.peers, gateway.cli\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=service_env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]


def test_search_matches_exact_scores(index, items):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(5, 32)).astype(np.float32)
    response = index.Search(pb.SearchRequest(queries=[pb.Query(vector=q) for q in queries], k=10), timeout=5)
    assert response.model_version == "1" and len(response.results) == 5
    for q, result in zip(queries, response.results):
        expected, scores = exact_top(items, q, 10)
        assert list(result.item_ids) == expected
        assert np.allclose(result.scores, [scores[items.row_of[i]] for i in expected], rtol=1e-4, atol=1e-4)
        assert list(result.scores) == sorted(result.scores, reverse=True)
        assert list(result.titles) == [items.titles[items.row_of[i]] for i in expected]


def test_exclusions_still_return_exactly_k(index, items):
    q = np.ones(32, dtype=np.float32)
    top, _ = exact_top(items, q, 50)
    excluded = top[:40] + ["not-an-item", top[0]]
    result = index.Search(pb.SearchRequest(queries=[pb.Query(vector=q, exclude_item_ids=excluded)], k=20), timeout=5)
    ids = list(result.results[0].item_ids)
    assert len(ids) == 20 and not set(ids) & set(excluded)
    assert ids == exact_top(items, q, 20, excluded)[0]


def test_k_larger_than_catalog_returns_whole_catalog(index):
    result = index.Search(pb.SearchRequest(queries=[pb.Query(vector=[0.1] * 32)], k=1000), timeout=5)
    assert len(result.results[0].item_ids) == 300


def test_most_popular(index, items):
    result = index.Search(pb.SearchRequest(queries=[pb.Query(most_popular=True)], k=5), timeout=5).results[0]
    expected = [items.ids[r] for r in bundle.popularity_order(items)[:5]]
    assert list(result.item_ids) == expected


def test_exact_mode_agrees(index, items):
    q = np.random.default_rng(1).normal(size=32).astype(np.float32)
    result = index.Search(pb.SearchRequest(queries=[pb.Query(vector=q)], k=7, exact=True), timeout=5)
    assert list(result.results[0].item_ids) == exact_top(items, q, 7)[0]


@pytest.mark.parametrize(
    "request_, code, message",
    [
        (pb.SearchRequest(queries=[], k=5), grpc.StatusCode.INVALID_ARGUMENT, "queries is empty"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 32)], k=-1), grpc.StatusCode.INVALID_ARGUMENT, "k must be 1..1000"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 32)], k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k must be 1..1000"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 31)], k=5), grpc.StatusCode.INVALID_ARGUMENT, "needs 32"),
        (pb.SearchRequest(queries=[pb.Query(vector=[float("nan")] * 32)]), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 32, most_popular=True)]), grpc.StatusCode.INVALID_ARGUMENT, "not both"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 32)], model_version="7"), grpc.StatusCode.FAILED_PRECONDITION, "loaded: 1"),
        (pb.SearchRequest(queries=[pb.Query(vector=[1.0] * 32)], model_version="v2"), grpc.StatusCode.INVALID_ARGUMENT, "positive integer"),
        (pb.SearchRequest(queries=[pb.Query(user_id="3", lookup_user_vector=True, vector=[1.0] * 32)]),
         grpc.StatusCode.INVALID_ARGUMENT, "leave vector and most_popular unset"),
        (pb.SearchRequest(queries=[pb.Query(lookup_user_vector=True)]), grpc.StatusCode.INVALID_ARGUMENT,
         "needs the user_id"),
    ],
    ids=["empty", "k-negative", "k-too-big", "wrong-dim", "nan", "vector-and-popular", "unknown-version", "bad-version",
         "lookup-and-vector", "lookup-without-user"],
)
def test_bad_requests_get_clear_errors(index, request_, code, message):
    with pytest.raises(grpc.RpcError) as err:
        index.Search(request_, timeout=5)
    assert err.value.code() == code
    assert message in err.value.details()


def test_not_serving_until_a_model_appears_then_reload(tmp_path):
    svc = Service("index_service", ["--model-base", str(tmp_path), "--poll-interval", "0.2"])
    try:
        svc.start()
        deadline = time.monotonic() + 30
        while health_status(svc.address) != "NOT_SERVING":
            assert time.monotonic() < deadline, svc.log_tail()
        write_item_bundle(tmp_path, n_items=30)
        svc.wait_serving(30)
        with grpc.insecure_channel(svc.address) as channel:
            stub = admin_pb2_grpc.ModelAdminStub(channel)
            write_item_bundle(tmp_path, n_items=31)
            status = stub.ReloadModels(admin_pb2.ReloadModelsRequest(), timeout=10).status
            assert [v.version for v in status.versions if v.state == common_pb2.MODEL_VERSION_STATE_AVAILABLE] == ["2", "1"]
            assert [v.version for v in status.versions if v.is_default] == ["2"]
            assert status.service == "recsys.internal.v1.IndexService" and status.num_shards == 1
    finally:
        assert svc.stop() == 0


def test_known_users_are_searched_with_the_vectors_of_the_version_searched(tmp_path):
    """Issue 19: the index looks a known user's vector up itself, always in the bundle whose items it searches,
    and two shards answer what one index does."""
    base = tmp_path / "models"
    for seed in (11, 12):  # versions 1 and 2: other items and other user vectors
        write_item_bundle(base, n_items=300, n_users=20, seed=seed)
    write_item_bundle(base, n_items=300, n_users=20, seed=13, with_user_vectors=False)  # version 3: none shipped
    tables = {}
    for version in ("1", "2"):
        path = base / version
        manifest = bundle.read_manifest(path)
        tables[version] = (bundle.load_items(path, manifest), bundle.load_users(path, manifest))
    common = ["--model-base", str(base), "--poll-interval", "0", "--keep-versions", "3"]
    single = Service("index_service", common)
    shards = [Service("index_service", [*common, "--shard-index", str(s), "--num-shards", "2"]) for s in range(2)]
    with running(single, *shards):
        stubs = {svc: index_service_pb2_grpc.IndexServiceStub(grpc.insecure_channel(svc.address))
                 for svc in (single, *shards)}
        for version in ("1", "2"):
            items, users = tables[version]
            for user_id in ("3", "17"):
                vector = users.vectors[users.row_of[user_id]]
                seen = users.seen_item_ids(user_id)
                for exclude_seen in (False, True):
                    request = pb.SearchRequest(queries=[pb.Query(user_id=user_id, lookup_user_vector=True,
                                                                 exclude_seen=exclude_seen)], k=10,
                                               model_version=version)
                    expected = exact_top(items, vector, 10, seen if exclude_seen else ())[0]
                    answer = stubs[single].Search(request, timeout=10)
                    assert answer.model_version == version
                    assert answer.results[0].user_lookup == pb.USER_LOOKUP_FOUND
                    assert list(answer.results[0].item_ids) == expected
                    # The shards: each answers its own part of the same top 10, from the same version's vector.
                    merged = []
                    for shard in shards:
                        part = stubs[shard].Search(request, timeout=10)
                        assert part.model_version == version and part.results[0].user_lookup == pb.USER_LOOKUP_FOUND
                        merged += zip(part.results[0].scores, part.results[0].item_ids)
                    assert [i for _, i in sorted(merged, key=lambda p: -p[0])[:10]] == expected
        # A user the version does not know: the most popular items, flagged.
        items, _ = tables["2"]
        stranger = stubs[single].Search(pb.SearchRequest(queries=[pb.Query(user_id="nobody", lookup_user_vector=True)],
                                                         k=5, model_version="2"), timeout=10).results[0]
        assert stranger.user_lookup == pb.USER_LOOKUP_UNKNOWN_USER
        assert list(stranger.item_ids) == [items.ids[r] for r in bundle.popularity_order(items)[:5]]
        # The newest version holds no user vectors: no answer from a guess, the caller is told to embed.
        newest = stubs[single].Search(pb.SearchRequest(queries=[pb.Query(user_id="3", lookup_user_vector=True)], k=5),
                                      timeout=10)
        assert newest.model_version == "3"
        assert newest.results[0].user_lookup == pb.USER_LOOKUP_NOT_IN_BUNDLE and not newest.results[0].item_ids
