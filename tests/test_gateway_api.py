"""Issue 5's API through the real gateway: batch, item-to-item, genre filters, deadlines."""

import time

import grpc
import numpy as np
import pytest

from procs import Service, running
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc

pytestmark = pytest.mark.slow


def test_batch_equals_single_calls(live_stack):
    users = [*live_stack.users.ids[:6].tolist(), "cold-start-user"]
    requests = [pb.RecommendRequest(user_id=u, k=7, exclude_seen=i % 2 == 0) for i, u in enumerate(users)]
    batch = live_stack.stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=10)
    singles = [live_stack.stub.Recommend(r, timeout=10) for r in requests]
    assert len(batch.responses) == len(requests)
    for got, want in zip(batch.responses, singles):
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        assert got.fallback == want.fallback and got.model_version == want.model_version
    assert batch.responses[-1].fallback


def test_batch_validation_names_the_bad_entry(live_stack):
    requests = [pb.RecommendRequest(user_id="1"), pb.RecommendRequest(user_id="2", k=5000)]
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.RecommendBatch(pb.RecommendBatchRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_similar_items_match_brute_force(live_stack):
    items = live_stack.items
    for item_id in items.ids[:5].tolist():
        response = live_stack.stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=8), timeout=10)
        scores = items.embeddings @ items.embeddings[items.row_of[item_id]]
        order = [items.ids[r] for r in np.argsort(-scores, kind="stable") if items.ids[r] != item_id][:8]
        assert [i.item_id for i in response.items] == order
        assert item_id not in {i.item_id for i in response.items}


def test_similar_items_unknown_item_is_not_found(live_stack):
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-movie"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _genre_bits(live_stack, names):
    lookup = {g.lower(): b for b, g in enumerate(live_stack.manifest.genres)}
    return sum(1 << lookup[n.lower()] for n in names)


def _common_genre(live_stack):
    counts = [(int(((live_stack.items.genres >> b) & 1).sum()), g) for b, g in enumerate(live_stack.manifest.genres)]
    return max(counts)[1]


@pytest.mark.parametrize("call", ["recommend", "similar"])
def test_genre_filter_returns_exactly_k_of_the_genre(live_stack, call):
    genre = _common_genre(live_stack)
    mask = _genre_bits(live_stack, [genre])
    k = 5
    f = common_pb2.GenreFilter(include_genres=[genre.upper()])
    if call == "recommend":
        response = live_stack.stub.Recommend(
            pb.RecommendRequest(user_id=live_stack.users.ids[0], k=k, genre_filter=f), timeout=10
        )
    else:
        response = live_stack.stub.SimilarItems(
            pb.SimilarItemsRequest(item_id=live_stack.items.ids[0], k=k, genre_filter=f), timeout=10
        )
    assert len(response.items) == k
    for item in response.items:
        assert live_stack.items.genres[live_stack.items.row_of[item.item_id]] & mask


def test_excluding_a_genre(live_stack):
    genre = _common_genre(live_stack)
    mask = _genre_bits(live_stack, [genre])
    response = live_stack.stub.Recommend(
        pb.RecommendRequest(
            user_id=live_stack.users.ids[0], k=10, genre_filter=common_pb2.GenreFilter(exclude_genres=[genre])
        ),
        timeout=10,
    )
    assert len(response.items) == 10
    assert not any(live_stack.items.genres[live_stack.items.row_of[i.item_id]] & mask for i in response.items)


def test_unknown_genre_is_invalid_argument(live_stack):
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.Recommend(
            pb.RecommendRequest(user_id="1", genre_filter=common_pb2.GenreFilter(include_genres=["Space Opera"])),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown genre" in err.value.details() and live_stack.manifest.genres[1] in err.value.details()


def test_expired_deadline_fails_fast(live_stack):
    # gRPC neither sends nor enforces sub-millisecond timeouts exactly: with
    # timeout=0.5 ms a trivial loopback RPC succeeded 199 times in 200 here, its
    # server seeing up to 1.9 ms left. A 1 µs timeout reaches the server with
    # under 1 ms left, which the gateway refuses (MIN_USEFUL_TIME_S) before any
    # peer call, so every one of these must fail, and fast.
    for _ in range(20):
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            live_stack.stub.Recommend(pb.RecommendRequest(user_id="1"), timeout=1e-6)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 1.0


def test_model_status_aggregates_peers(live_stack):
    response = live_stack.stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
    by_service = {s.service: s for s in response.services}
    assert set(by_service) == {"recsys.v1.Gateway", "recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService"}
    version = str(live_stack.manifest.version)
    for name in ("recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService"):
        [v] = by_service[name].versions
        assert v.version == version and v.is_default and v.state == common_pb2.MODEL_VERSION_STATE_AVAILABLE
    assert by_service["recsys.internal.v1.IndexService"].versions[0].size == len(live_stack.items)
    # Internal addresses are an operator's detail, not for any client.
    assert all(s.address == "" for s in response.services)


def test_peer_addresses_only_behind_the_admin_flag(live_stack):
    gateway = Service("gateway", [
        "--query-target", live_stack.query.address, "--index-targets", live_stack.index.address,
        "--expose-peer-addresses",
    ])
    with running(gateway), grpc.insecure_channel(gateway.address) as channel:
        response = gateway_pb2_grpc.GatewayStub(channel).GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
    by_service = {s.service: s for s in response.services}
    assert by_service["recsys.internal.v1.IndexService"].address == live_stack.index.address
    assert by_service["recsys.internal.v1.QueryService"].address == live_stack.query.address
    assert by_service["recsys.v1.Gateway"].address == ""
