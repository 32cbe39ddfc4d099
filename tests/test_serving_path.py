"""Issue 18's "no wasted hops" and "what the API accepts, the stack can answer" (and issue 19's serving path).

- exclude_seen is applied inside the index from the user id (one index, and two shards);
- internal Search calls are split to stay within the message size limit;
- one request the index refuses fails alone, without the query tier being asked again;
- an unknown user costs no TensorFlow call; RecommendBatch is bounded by the results it asks for;
- a request naming only a user id goes to the index alone, which looks the user's vector up in the
  same bundle version as its items (issue 19: one hop fewer); the query tier embeds new users described
  by features, and known users when the index's bundle holds no user vectors.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import urllib.request

import grpc
import numpy as np
import pytest

from bundles import write_item_bundle
from gateway.recommender import PeerError, Recommender, RecRequest, search_chunks
from gateway.servicer import MAX_BATCH_RESULTS, check_genre_names
from serving.errors import InvalidArgument
from procs import Service, free_port, running, stack
from recsys.internal.v1 import admin_pb2, admin_pb2_grpc, index_service_pb2 as ipb, index_service_pb2_grpc
from recsys.internal.v1 import query_service_pb2 as qpb
from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from serving import bundle

# --------------------------------------------------------------------------- in-process, fake tiers


class FakeQuery:
    """QueryService stand-in: known users are those whose id starts with 'u'; records each call."""

    def __init__(self):
        self.calls: list[qpb.EmbedUsersRequest] = []

    async def EmbedUsers(self, request, timeout=None, metadata=None, wait_for_ready=None):
        self.calls.append(request)
        await asyncio.sleep(0)  # a real call suspends: other callers queue meanwhile
        return qpb.EmbedUsersResponse(
            embeddings=[qpb.UserEmbedding(user_id=u, values=[float(i)] * 4 if u.startswith("u") else [],
                                          known=u.startswith("u")) for i, u in enumerate(request.user_ids)],
            model_version=request.model_version or "1", dimension=4,
        )


class FakeIndex:
    """IndexService stand-in: answers item ids "<first vector value>:<rank>", refuses the genre "Nope".

    Looks known users up as the real one does: "u<n>" is known, with the vector [n, ...]; with
    ``user_vectors=False`` its bundle holds none. Answers ``version`` when asked for the newest.
    """

    def __init__(self, user_vectors: bool = True, version: str = "1"):
        self.calls: list[ipb.SearchRequest] = []
        self.user_vectors, self.version = user_vectors, version

    @staticmethod
    def _looked_up(q: ipb.Query, user_vectors: bool) -> tuple[str, int]:
        if not user_vectors:
            return "", ipb.USER_LOOKUP_NOT_IN_BUNDLE
        if q.user_id.startswith("u"):
            return str(float(q.user_id[1:])), ipb.USER_LOOKUP_FOUND
        return "popular", ipb.USER_LOOKUP_UNKNOWN_USER

    async def Search(self, request, timeout=None, metadata=None, wait_for_ready=None):
        self.calls.append(request)
        await asyncio.sleep(0)
        if any("Nope" in q.genre_filter.include_genres for q in request.queries):
            raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="queries[1].genre_filter: unknown genre 'Nope'")
        results = []
        for q in request.queries:
            label, lookup = (self._looked_up(q, self.user_vectors) if q.lookup_user_vector
                             else (str(q.vector[0]) if q.vector else "popular", ipb.USER_LOOKUP_UNSPECIFIED))
            k = 0 if lookup == ipb.USER_LOOKUP_NOT_IN_BUNDLE else request.k
            results.append(ipb.SearchResult(item_ids=[f"{label}:{r}" for r in range(k)],
                                            scores=[float(k - r) for r in range(k)], titles=["t"] * k,
                                            user_lookup=lookup))
        return ipb.SearchResponse(model_version=request.model_version or self.version, results=results)


class ReadyTier:
    """A tier that is always ready, for a Recommender whose stubs are replaced by fakes."""

    ready = True

    def __init__(self, name: str):
        self.name, self.target = name, f"fake:{name}"
        self.channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never used: the stubs are replaced

    async def wait_ready(self, timeout: float) -> None:
        return None


def fake_recommender(max_message_bytes: int = 8 * 1024 * 1024, index_user_lookup: bool = True,
                     index: FakeIndex | None = None):
    query, index = FakeQuery(), index or FakeIndex()
    recommender = Recommender(ReadyTier("query service"), [ReadyTier("index shard 0")], max_batch=1000,
                              batch_wait_us=0, concurrency=1, default_timeout_s=5, max_message_bytes=max_message_bytes,
                              index_user_lookup=index_user_lookup)
    recommender.query, recommender.index_shards = query, [index]
    return recommender, query, index


def rec(user_id: str, k: int = 3, genre: str | None = None, exclude_seen: bool = False,
        features: common_pb2.UserFeatures | None = None) -> RecRequest:
    genre_filter = common_pb2.GenreFilter(include_genres=[genre]) if genre else None
    return RecRequest(user_id, k, exclude_seen, (), None, genre_filter, user_features=features)


def test_a_request_the_index_refuses_fails_alone_without_asking_the_query_tier_again():
    async def scenario():
        recommender, query, index = fake_recommender(index_user_lookup=False)
        # Four callers at once: the first finds the tiers idle and goes alone; the
        # batcher gathers the other three into one batch while it is in flight.
        outcomes = await asyncio.gather(
            recommender.recommend([rec("u0")]), recommender.recommend([rec("u1")]),
            recommender.recommend([rec("u2", genre="Nope")]), recommender.recommend([rec("u3", genre="Drama")]),
            return_exceptions=True,
        )
        await recommender.batcher.stop()
        return outcomes, query, index

    outcomes, query, index = asyncio.run(scenario())
    assert isinstance(outcomes[2], PeerError) and outcomes[2].code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Nope" in str(outcomes[2])
    assert [item_id for item_id, _, _ in outcomes[1][0].items] == ["0.0:0", "0.0:1", "0.0:2"]
    assert [item_id for item_id, _, _ in outcomes[3][0].items] == ["2.0:0", "2.0:1", "2.0:2"]
    assert [list(c.user_ids) for c in query.calls] == [["u0"], ["u1", "u2", "u3"]]
    # The refused batch, then each of its requests alone with the vectors already embedded.
    assert [len(c.queries) for c in index.calls] == [1, 3, 1, 1, 1]


def test_a_request_the_index_refuses_fails_alone_on_the_one_hop_path():
    async def scenario():
        recommender, query, index = fake_recommender()
        outcomes = await asyncio.gather(
            recommender.recommend([rec("u0")]), recommender.recommend([rec("u1")]),
            recommender.recommend([rec("u2", genre="Nope")]), recommender.recommend([rec("u3", genre="Drama")]),
            return_exceptions=True,
        )
        await recommender.batcher.stop()
        return outcomes, query, index

    outcomes, query, index = asyncio.run(scenario())
    assert isinstance(outcomes[2], PeerError) and outcomes[2].code == grpc.StatusCode.INVALID_ARGUMENT
    assert [item_id for item_id, _, _ in outcomes[1][0].items] == ["1.0:0", "1.0:1", "1.0:2"]
    assert [item_id for item_id, _, _ in outcomes[3][0].items] == ["3.0:0", "3.0:1", "3.0:2"]
    assert query.calls == []  # known users: the index looks their vectors up
    assert [len(c.queries) for c in index.calls] == [1, 3, 1, 1, 1]
    assert all(q.lookup_user_vector and not q.vector for c in index.calls for q in c.queries)


def test_id_only_requests_skip_the_query_tier_and_features_go_through_it():
    async def scenario():
        recommender, query, index = fake_recommender()
        results = await recommender.recommend([
            rec("u4", exclude_seen=True), rec("stranger"), rec("new", features=common_pb2.UserFeatures(age=30)),
        ])
        await recommender.batcher.stop()
        return results, query, index

    results, query, index = asyncio.run(scenario())
    # Only the user described by features is embedded by the query tier.
    assert [list(c.user_ids) for c in query.calls] == [["new"]]
    by_user = {q.user_id or "features": q for c in index.calls for q in c.queries}
    assert by_user["u4"].lookup_user_vector and by_user["u4"].exclude_seen and not by_user["u4"].vector
    assert by_user["stranger"].lookup_user_vector
    assert [r.items[0][0] for r in results] == ["4.0:0", "popular:0", "popular:0"]  # FakeQuery: "new" is unknown
    assert [r.fallback for r in results] == [False, True, True]
    assert [r.model_version for r in results] == ["1", "1", "1"]


def test_a_version_without_user_vectors_is_embedded_by_the_query_tier_with_that_version():
    async def scenario():
        recommender, query, index = fake_recommender(index=FakeIndex(user_vectors=False, version="7"))
        first = await recommender.recommend([rec("u2"), rec("stranger")])
        second = await recommender.recommend([rec("u5")])
        await recommender.batcher.stop()
        return first, second, query, index

    first, second, query, index = asyncio.run(scenario())
    assert [r.items[0][0] for r in first] == ["0.0:0", "popular:0"] and first[0].model_version == "7"
    assert [r.fallback for r in first] == [False, True]
    # The index named its version; the query tier embedded with exactly that one.
    assert [(list(c.user_ids), c.model_version) for c in query.calls] == [(["u2", "stranger"], "7"), (["u5"], "")]
    # After that answer the gateway stops asking this index to look users up (for LOOKUP_RETRY_S).
    assert [any(q.lookup_user_vector for q in c.queries) for c in index.calls] == [True, False, False]
    assert second[0].items[0][0] == "0.0:0"


class FakeAdmin:
    """ModelAdmin stand-in: the versions a tier holds (AVAILABLE); records that it was asked."""

    def __init__(self, versions: set[int]):
        self.versions, self.asked = versions, 0

    async def GetModelStatus(self, request, timeout=None, metadata=None, wait_for_ready=None):
        self.asked += 1
        return admin_pb2.GetModelStatusResponse(services=[common_pb2.ServiceModelStatus(versions=[
            common_pb2.ModelVersionStatus(version=str(v), state=common_pb2.MODEL_VERSION_STATE_AVAILABLE)
            for v in sorted(self.versions)])])


def test_shards_answering_different_versions_are_asked_again_with_the_newest_they_share():
    """A roll-out that reached shard 0 first: its newest is 2, shard 1's is 1. No answer mixes them."""

    async def scenario():
        query, shards = FakeQuery(), [FakeIndex(version="2"), FakeIndex(version="1")]
        recommender = Recommender(ReadyTier("query service"), [ReadyTier("index shard 0"), ReadyTier("index shard 1")],
                                  max_batch=1000, batch_wait_us=0, concurrency=1, default_timeout_s=5)
        recommender.query, recommender.index_shards = query, shards
        admins = [FakeAdmin({1}), FakeAdmin({1, 2}), FakeAdmin({1})]
        recommender.query_admin, recommender.index_admins = admins[0], admins[1:]
        results = await recommender.recommend([rec("u3"), rec("stranger")])
        await recommender.batcher.stop()
        return results, query, shards, admins

    results, query, shards, admins = asyncio.run(scenario())
    assert [r.model_version for r in results] == ["1", "1"]
    assert [r.fallback for r in results] == [False, True]
    for shard in shards:  # the newest first, then the pinned version both shards hold
        assert [c.model_version for c in shard.calls] == ["", "1"]
    # Only the index shards' versions matter to an id-only batch: the query tier is not asked at all.
    assert query.calls == [] and admins[0].asked == 0 and admins[1].asked == admins[2].asked == 1


def test_internal_search_calls_are_split_to_fit_the_message_limit():
    async def scenario():
        # 256 B per result: at most 1,000 results (queries x k) per Search call.
        recommender, query, index = fake_recommender(max_message_bytes=256 * 1000)
        results = await recommender.recommend([rec(f"u{i}", k=100) for i in range(45)])
        await recommender.batcher.stop()
        return results, query, index

    results, query, index = asyncio.run(scenario())
    assert [len(c.queries) for c in index.calls] == [10, 10, 10, 10, 5]
    assert all(len(c.queries) * c.k <= 1000 for c in index.calls)
    # Each answer is its own query's, in order, after the split.
    for i, result in enumerate(results):
        assert len(result.items) == 100 and result.items[0][0] == f"{float(i)}:0"


def test_search_chunks_keep_far_apart_ks_in_separate_calls():
    assert search_chunks([10] * 256, 32768) == [list(range(256))]
    assert search_chunks([10, 1000, 10, 20], 32768) == [[0, 2, 3], [1]]
    assert search_chunks([1000] * 5, 2000) == [[0, 1], [2, 3], [4]]
    assert search_chunks([1000], 10) == [[0]]  # one query always goes, whatever its k


def test_unknown_users_and_exclude_seen_ship_no_vectors_and_no_id_lists():
    async def scenario():
        recommender, query, index = fake_recommender(index_user_lookup=False)
        results = await recommender.recommend([rec("u1", exclude_seen=True), rec("stranger", exclude_seen=True)])
        await recommender.batcher.stop()
        return results, query, index

    results, query, index = asyncio.run(scenario())
    assert query.calls[0].skip_unknown_users and not query.calls[0].include_seen
    known, stranger = index.calls[0].queries
    assert known.user_id == "u1" and known.exclude_seen and not known.exclude_item_ids
    assert stranger.most_popular and not stranger.exclude_seen and not stranger.vector
    assert [r.fallback for r in results] == [False, True]


def test_genre_names_are_checked_against_the_models():
    known = ("Action", "Comedy", "Sci-Fi")
    check_genre_names(common_pb2.GenreFilter(include_genres=["action"], exclude_genres=["SCI-FI"]), known)
    check_genre_names(common_pb2.GenreFilter(include_genres=["Space Opera"]), ())  # names unknown: the index checks
    with pytest.raises(InvalidArgument, match="unknown genre 'Space Opera'; known genres: Action, Comedy, Sci-Fi"):
        check_genre_names(common_pb2.GenreFilter(exclude_genres=["Space Opera"]), known)


# --------------------------------------------------------------------------- the index service


@pytest.fixture(scope="module")
def seen_bundle(tmp_path_factory):
    base = tmp_path_factory.mktemp("seen-models")
    path = write_item_bundle(base, n_items=300, n_users=20, seed=5)
    manifest = bundle.read_manifest(path)
    return base, bundle.load_items(path, manifest), bundle.load_users(path, manifest)


def _exact(items, vector, k, excluded=()):
    scores = items.embeddings @ vector
    return [items.ids[r] for r in np.argsort(-scores, kind="stable") if items.ids[r] not in set(excluded)][:k]


@pytest.mark.slow
def test_the_index_excludes_a_users_training_items_by_user_id(seen_bundle):
    base, items, users = seen_bundle
    single = Service("index_service", ["--model-base", str(base), "--poll-interval", "0"])
    shards = [Service("index_service", ["--model-base", str(base), "--poll-interval", "0", "--shard-index", str(s),
                                        "--num-shards", "2"]) for s in range(2)]
    with running(single, *shards):
        for user_id in ("3", "17"):
            seen = users.seen_item_ids(user_id)
            # A vector that ranks the user's own items first: all of them must go.
            vector = items.embeddings[items.row_of.rows(seen)].sum(axis=0)
            assert set(_exact(items, vector, 5)) & set(seen)
            query = ipb.Query(vector=vector, user_id=user_id, exclude_seen=True, exclude_item_ids=["1"])
            request = ipb.SearchRequest(queries=[query, ipb.Query(vector=vector)], k=10)
            with grpc.insecure_channel(single.address) as channel:
                excluded, plain = index_service_pb2_grpc.IndexServiceStub(channel).Search(request, timeout=10).results
            assert list(excluded.item_ids) == _exact(items, vector, 10, [*seen, "1"])
            assert list(plain.item_ids) == _exact(items, vector, 10)
            per_shard = []
            for shard in shards:
                with grpc.insecure_channel(shard.address) as channel:
                    per_shard += list(index_service_pb2_grpc.IndexServiceStub(channel).Search(request, timeout=10)
                                      .results[0].item_ids)
            assert not set(per_shard) & {*seen, "1"}
            assert set(_exact(items, vector, 10, [*seen, "1"])) <= set(per_shard)
        # A user the bundle does not hold excludes nothing; most-popular answers exclude too.
        with grpc.insecure_channel(single.address) as channel:
            stub = index_service_pb2_grpc.IndexServiceStub(channel)
            vector = items.embeddings[0]
            stranger = stub.Search(ipb.SearchRequest(queries=[ipb.Query(vector=vector, user_id="nobody",
                                                                        exclude_seen=True)], k=10), timeout=10)
            assert list(stranger.results[0].item_ids) == _exact(items, vector, 10)
            popular = [items.ids[r] for r in bundle.popularity_order(items)]
            seen = users.seen_item_ids("4")
            answer = stub.Search(ipb.SearchRequest(queries=[ipb.Query(most_popular=True, user_id="4",
                                                                      exclude_seen=True)], k=10), timeout=10)
            assert list(answer.results[0].item_ids) == [i for i in popular if i not in seen][:10]
            status = admin_pb2_grpc.ModelAdminStub(channel).GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=10)
            assert list(status.services[0].versions[0].genres)[:2] == ["unknown", "Action"]


# --------------------------------------------------------------------------- the whole stack


@pytest.fixture(scope="module")
def small_message_stack(trained_model_base, tmp_path_factory):
    """A stack whose every process accepts and sends messages of at most 200 kB, with the query tier's metrics."""
    model_base = tmp_path_factory.mktemp("small-messages") / "models"
    shutil.copytree(trained_model_base, model_base)
    limit = ["--max-message-bytes", "200000"]
    query_metrics = free_port()
    query, index, gateway = stack(model_base, backend_args=limit, gateway_args=limit)
    query.args += ["--metrics-port", str(query_metrics)]
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            yield gateway_pb2_grpc.GatewayStub(channel), model_base, query_metrics


@pytest.mark.slow
def test_a_batch_whose_answers_exceed_one_internal_message_is_answered(small_message_stack):
    stub, model_base, _ = small_message_stack
    [path] = bundle.version_dirs(model_base).values()
    manifest = bundle.read_manifest(path)
    users = bundle.load_users(path, manifest).ids.tolist()
    k = manifest.item_count  # every movie, for every request: far more than 200 kB in all
    requests = [gateway_pb2.RecommendRequest(user_id=users[i % len(users)], k=k, exclude_seen=i % 3 == 0)
                for i in range(300)]
    assert sum(len(f"{i}Movie title (1990)") + 16 for i in range(k)) * len(requests) > 200_000
    batch = stub.RecommendBatch(gateway_pb2.RecommendBatchRequest(requests=requests), timeout=60)
    assert len(batch.responses) == len(requests)
    for request, response in list(zip(requests, batch.responses))[:4]:
        assert [i.item_id for i in response.items] == [i.item_id for i in stub.Recommend(request, timeout=10).items]


@pytest.mark.slow
def test_a_batch_asking_for_more_than_the_limit_names_it(small_message_stack):
    stub, _, _ = small_message_stack
    requests = [gateway_pb2.RecommendRequest(user_id=str(i), k=1000) for i in range(1, 1001)]
    with pytest.raises(grpc.RpcError) as err:
        stub.RecommendBatch(gateway_pb2.RecommendBatchRequest(requests=requests), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_BATCH_RESULTS}" in err.value.details() and "1000000" in err.value.details()


@pytest.mark.slow
def test_an_unknown_user_costs_no_tensorflow_call_and_a_bad_genre_no_hop(small_message_stack):
    stub, _, query_metrics = small_message_stack

    def metric(pattern: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{query_metrics}/metrics", timeout=5).read().decode()
        return sum(float(m) for m in re.findall(pattern, text, re.M))

    def tf_calls() -> float:
        return metric(r'^recsys_batch_size_count\{stage="query_tf_call"\} (\S+)$')

    def embed_calls() -> float:
        return metric(r'^recsys_grpc_requests_total\{code="\w+",method="/recsys.internal.v1.QueryService/EmbedUsers"\} (\S+)$')

    before, embedded = tf_calls(), embed_calls()
    response = stub.Recommend(gateway_pb2.RecommendRequest(user_id="never-seen-user", k=5, exclude_seen=True),
                              timeout=10)
    assert response.fallback and len(response.items) == 5
    assert tf_calls() == before and embed_calls() == embedded  # the index answers it alone: no query-tier call
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(gateway_pb2.RecommendRequest(
            user_id="1", genre_filter=common_pb2.GenreFilter(exclude_genres=["Space Opera"])), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "known genres: unknown, Action" in err.value.details()
    assert embed_calls() == embedded  # refused by the gateway, before any hop


@pytest.mark.slow
def test_filtered_search_through_scann_pays_only_for_what_it_looks_at(tmp_path):
    from index_service import servicer as index_servicer
    from index_service.index import make_loader
    from trainer.synthetic import clustered_table, queries_like

    table = clustered_table(25_000, dim=32, clusters=50)  # clustered, as trained embeddings are: ANN recall is real
    path = write_item_bundle(tmp_path, n_users=5, seed=9, embeddings=table, with_searcher=True)
    index = make_loader()(path, bundle.read_manifest(path))
    assert index.config["mode"] == "tree_ah"
    items = index.items
    # Dropping one genre keeps ~24k items: more than SUBSET_EXACT_BELOW, so ScaNN over-fetches.
    masks = (0, index.genre_mask(["Drama"]))
    subset = index.allowed_rows(*masks)
    assert subset.count > 20_000 and subset.rows is None and index.allowed_rows(*masks) is subset  # cached
    vectors = queries_like(table, 4)
    excluded = [np.flatnonzero(subset.mask)[:50] for _ in vectors]  # some of them would rank high
    excluded[0] = np.concatenate([excluded[0], np.argsort(-(items.embeddings @ vectors[0]))[:30]])
    results = index_servicer.search(index, 20, vectors, np.zeros(4, dtype=bool), excluded, [masks] * 4, exact=False)
    drama = 1 << index.genre_names.index("Drama")
    for vector, result, banned in zip(vectors, results, excluded):
        rows = items.row_of.rows(list(result.item_ids))
        assert len(rows) == 20 and not set(rows.tolist()) & set(banned.tolist())
        assert not (items.genres[rows] & drama).any()
        scores = items.embeddings @ vector
        allowed = [r for r in np.argsort(-scores) if subset.mask[r] and r not in set(banned.tolist())][:20]
        assert len(set(allowed) & set(rows.tolist())) >= 16  # approximate search: recall@20 >= 0.8
    popular = index_servicer.search(index, 5, vectors[:1], np.array([True]), [np.zeros(0, dtype=np.int64)],
                                    [masks], exact=False)[0]
    expected = [items.ids[r] for r in index.popular_rows if subset.mask[r]][:5]
    assert list(popular.item_ids) == expected


@pytest.mark.slow
def test_a_known_user_is_answered_without_the_query_tier(trained_model_base, tmp_path):
    """Issue 19: an id-only Recommend is gateway -> index; only a user described by features needs the query tier."""
    model_base = tmp_path / "models"
    shutil.copytree(trained_model_base, model_base)
    [path] = bundle.version_dirs(model_base).values()
    manifest = bundle.read_manifest(path)
    items, users = bundle.load_items(path, manifest), bundle.load_users(path, manifest)
    assert users.vectors is not None  # the trainer ships them; the query service checked them against its tower
    query, index, gateway = stack(model_base, poll="0")
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            requests = [gateway_pb2.RecommendRequest(user_id=u, k=10, exclude_seen=seen)
                        for u in users.ids[:3].tolist() for seen in (False, True)]
            before = [stub.Recommend(r, timeout=10) for r in requests]
            for request, answer in zip(requests, before):
                vector = users.vectors[users.row_of[request.user_id]]
                seen = users.seen_item_ids(request.user_id) if request.exclude_seen else ()
                assert [i.item_id for i in answer.items] == _exact(items, vector, 10, seen)
                assert answer.model_version == str(manifest.version) and not answer.fallback
            query.stop()
            after = [stub.Recommend(r, timeout=10) for r in requests]
            assert [[i.item_id for i in a.items] for a in after] == [[i.item_id for i in b.items] for b in before]
            stranger = stub.Recommend(gateway_pb2.RecommendRequest(user_id="never-seen", k=5), timeout=10)
            assert stranger.fallback and len(stranger.items) == 5
            # A new user described by features is embedded by the query tier: that one fails, naming it.
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(gateway_pb2.RecommendRequest(user_id="new-user", k=5,
                                                            user_features=common_pb2.UserFeatures(age=30)), timeout=3)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert "query service" in err.value.details()
