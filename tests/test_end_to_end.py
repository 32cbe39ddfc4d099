"""Issue 2's end-to-end check: a model trained here, three real servers, a real Recommend."""

import time

import grpc
import numpy as np
import pytest

from procs import Service, running
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc
from serving import bundle

pytestmark = pytest.mark.slow


def test_recommend_returns_k_sorted_catalog_items(live_stack):
    user = live_stack.users.ids[0]
    response = live_stack.stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
    assert len(response.items) == 10
    assert response.model_version == str(live_stack.manifest.version)
    assert not response.fallback
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
    items = live_stack.items
    for item in response.items:
        row = items.row_of[item.item_id]
        assert item.title == items.titles[row]
    assert len({i.item_id for i in response.items}) == 10


def test_scores_are_the_dot_products_of_the_two_towers(live_stack):
    """The top-10 equals exact scoring of the user's vector against the exported item table."""
    from recsys.internal.v1 import query_service_pb2, query_service_pb2_grpc

    user = live_stack.users.ids[1]
    with grpc.insecure_channel(live_stack.query.address) as channel:
        embedded = query_service_pb2_grpc.QueryServiceStub(channel).EmbedUsers(
            query_service_pb2.EmbedUsersRequest(user_ids=[user]), timeout=10
        )
    vector = np.array(embedded.embeddings[0].values, dtype=np.float32)
    scores = live_stack.items.embeddings @ vector
    expected = [live_stack.items.ids[r] for r in np.argsort(-scores, kind="stable")[:10]]
    response = live_stack.stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
    assert [i.item_id for i in response.items] == expected
    assert np.allclose([i.score for i in response.items], np.sort(scores)[::-1][:10], rtol=1e-4, atol=1e-4)


def test_k_zero_means_ten(live_stack):
    response = live_stack.stub.Recommend(pb.RecommendRequest(user_id=live_stack.users.ids[0]), timeout=10)
    assert len(response.items) == 10


def test_exclude_seen_and_excluded_ids(live_stack):
    user = live_stack.users.ids[2]
    seen = set(live_stack.users.seen_item_ids(user))
    assert seen, "the fixture's users all have training interactions"
    plain = live_stack.stub.Recommend(pb.RecommendRequest(user_id=user, k=20), timeout=10)
    dropped = [plain.items[0].item_id, plain.items[3].item_id]
    response = live_stack.stub.Recommend(
        pb.RecommendRequest(user_id=user, k=20, exclude_seen=True, exclude_item_ids=dropped), timeout=10
    )
    ids = [i.item_id for i in response.items]
    assert len(ids) == 20
    assert not set(ids) & seen and not set(ids) & set(dropped)


def test_unknown_user_gets_popular_fallback(live_stack):
    response = live_stack.stub.Recommend(pb.RecommendRequest(user_id="no-such-user", k=5), timeout=10)
    assert response.fallback
    expected = [live_stack.items.ids[r] for r in bundle.popularity_order(live_stack.items)[:5]]
    assert [i.item_id for i in response.items] == expected


@pytest.mark.parametrize(
    "request_, message",
    [
        (pb.RecommendRequest(user_id="", k=5), "user_id is required"),
        (pb.RecommendRequest(user_id="1", k=-1), "k must be 1..1000"),
        (pb.RecommendRequest(user_id="1", k=1001), "k must be 1..1000"),
        (pb.RecommendRequest(user_id="x" * 10_000, k=5), "at most 256"),
    ],
    ids=["empty-user", "k-negative", "k-too-big", "huge-user-id"],
)
def test_invalid_requests(live_stack, request_, message):
    with pytest.raises(grpc.RpcError) as err:
        live_stack.stub.Recommend(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_peer_down_is_unavailable_not_a_hang(live_stack):
    from procs import free_port

    dead = f"127.0.0.1:{free_port()}"
    gateway = Service("gateway", ["--query-target", dead, "--index-targets", live_stack.index.address,
                                  "--peer-restart-wait", "1"])
    try:
        # Never SERVING without its query tier (the start-up gate), but it answers.
        assert gateway.start().wait_answering() == "NOT_SERVING"
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:  # a new user described by features needs the query tier
                stub.Recommend(pb.RecommendRequest(user_id="new", k=5, user_features=common_pb2.UserFeatures(age=30)),
                               timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "query service" in err.value.details()
            assert time.monotonic() - start < 5
    finally:
        gateway.stop()
