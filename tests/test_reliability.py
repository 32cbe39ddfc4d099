"""Issue 8: bad input, faults, overload and shutdown: clear errors, nothing hangs or is lost."""

import collections
import json
import signal
import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from load import LoadInBackground, make_recommend
from procs import Service, running
from recsys.internal.v1 import (
    admin_pb2, admin_pb2_grpc, index_service_pb2 as ipb, index_service_pb2_grpc, query_service_pb2 as qpb, query_service_pb2_grpc,
)
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc

pytestmark = pytest.mark.slow

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def code_of(call):
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def raw_call(address, method, payload: bytes, timeout=10):
    """Sends bytes as the request body, as a client with its own encoder might."""
    with grpc.insecure_channel(address) as channel:
        return code_of(lambda: channel.unary_unary(method)(payload, timeout=timeout))


def test_bad_input_corpus(live_stack):
    stub, user = live_stack.stub, live_stack.users.ids[0]
    catalog = live_stack.items.ids.tolist()
    cases = {
        "empty user id": (lambda: stub.Recommend(pb.RecommendRequest(user_id=""), timeout=10), INVALID),
        "10 kB user id": (lambda: stub.Recommend(pb.RecommendRequest(user_id="u" * 10_000), timeout=10), INVALID),
        "k=-1": (lambda: stub.Recommend(pb.RecommendRequest(user_id=user, k=-1), timeout=10), INVALID),
        "k=0 (means 10)": (lambda: stub.Recommend(pb.RecommendRequest(user_id=user, k=0), timeout=10),
                           grpc.StatusCode.OK),
        "k=1001": (lambda: stub.Recommend(pb.RecommendRequest(user_id=user, k=1001), timeout=10), INVALID),
        "k=2^31-1": (lambda: stub.Recommend(pb.RecommendRequest(user_id=user, k=2**31 - 1), timeout=10), INVALID),
        "duplicate + unknown excluded ids": (
            lambda: stub.Recommend(pb.RecommendRequest(
                user_id=user, k=5, exclude_item_ids=[catalog[0], catalog[0], "nope"]), timeout=10),
            grpc.StatusCode.OK),
        "100k excluded ids": (
            lambda: stub.Recommend(pb.RecommendRequest(user_id=user, exclude_item_ids=[str(i) for i in range(100_000)]),
                                   timeout=10), INVALID),
        "empty batch": (lambda: stub.RecommendBatch(pb.RecommendBatchRequest(), timeout=10), INVALID),
        "batch over maximum": (
            lambda: stub.RecommendBatch(pb.RecommendBatchRequest(
                requests=[pb.RecommendRequest(user_id=user)] * 1001), timeout=10), INVALID),
        "unknown genre": (
            lambda: stub.Recommend(pb.RecommendRequest(
                user_id=user, genre_filter=common_pb2.GenreFilter(include_genres=["Nope"])), timeout=10), INVALID),
        "message over the size limit": (
            lambda: stub.Recommend(pb.RecommendRequest(user_id=user, exclude_item_ids=["x" * 1000] * 9000),
                                   timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED),
    }
    seen = {}
    for name, (call, expected) in cases.items():
        code, details = code_of(call)
        seen[name] = code.name
        assert code == expected, (name, code, details)
        if code != grpc.StatusCode.OK and code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert len(details) > 15, (name, details)  # says what is allowed
    # A string field holding bytes that are not UTF-8 (field 1, length 2, 0xff 0xfe).
    code, details = raw_call(live_stack.gateway.address, "/recsys.v1.Gateway/Recommend", b"\x0a\x02\xff\xfe")
    seen["non-UTF-8 user id"] = code.name
    assert code == INVALID and "not a valid message" in details
    print("bad input corpus:", json.dumps(seen))
    # Still serving.
    assert len(stub.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=10).items) == 3


def test_bad_input_directly_against_the_backends(live_stack):
    with grpc.insecure_channel(live_stack.query.address) as q, grpc.insecure_channel(live_stack.index.address) as i:
        query, index = query_service_pb2_grpc.QueryServiceStub(q), index_service_pb2_grpc.IndexServiceStub(i)
        cases = [
            (lambda: query.EmbedUsers(qpb.EmbedUsersRequest(), timeout=10), INVALID),
            (lambda: query.EmbedUsers(qpb.EmbedUsersRequest(user_ids=["1"] * 1025), timeout=10), INVALID),
            (lambda: query.EmbedUsers(qpb.EmbedUsersRequest(user_ids=[""]), timeout=10), INVALID),
            (lambda: query.EmbedUsers(qpb.EmbedUsersRequest(user_ids=["1"], model_version="99"), timeout=10),
             grpc.StatusCode.FAILED_PRECONDITION),
            (lambda: index.Search(ipb.SearchRequest(queries=[ipb.Query(vector=[float("inf")] * 32)]), timeout=10),
             INVALID),
            (lambda: index.Search(ipb.SearchRequest(queries=[ipb.Query(vector=[1.0] * 33)]), timeout=10), INVALID),
            (lambda: index.Search(ipb.SearchRequest(queries=[ipb.Query(vector=[1.0] * 32)] * 1025), timeout=10),
             INVALID),
            (lambda: index.GetItemEmbeddings(ipb.GetItemEmbeddingsRequest(), timeout=10), INVALID),
        ]
        for call, expected in cases:
            assert code_of(call)[0] == expected
        code, _ = raw_call(live_stack.index.address, "/recsys.internal.v1.IndexService/Search", b"\xff\xff\xff")
        assert code == INVALID


ids = st.text(min_size=0, max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user_id=ids,
    k=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    exclude=st.lists(ids, max_size=30),
    exclude_seen=st.booleans(),
    genres=st.lists(st.sampled_from(["Action", "Drama", "comedy", "Nope", ""]), max_size=3),
)
def test_gateway_never_fails_internally(live_stack, user_id, k, exclude, exclude_seen, genres):
    request = pb.RecommendRequest(user_id=user_id, k=k, exclude_item_ids=exclude, exclude_seen=exclude_seen,
                                  genre_filter=common_pb2.GenreFilter(include_genres=genres))
    start = time.monotonic()
    code, details = code_of(lambda: live_stack.stub.Recommend(request, timeout=5))
    assert code not in NEVER, details
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    vectors=st.lists(st.lists(st.floats(width=32), min_size=0, max_size=40), min_size=0, max_size=4),
    k=st.integers(min_value=-5, max_value=1005),
    version=st.sampled_from(["", "1", "2", "x", "-3"]),
)
def test_index_never_fails_internally(live_stack, vectors, k, version):
    request = ipb.SearchRequest(queries=[ipb.Query(vector=v) for v in vectors], k=k, model_version=version)
    with grpc.insecure_channel(live_stack.index.address) as channel:
        code, details = code_of(lambda: index_service_pb2_grpc.IndexServiceStub(channel).Search(request, timeout=5))
    assert code not in NEVER and code != grpc.StatusCode.DEADLINE_EXCEEDED, details


def test_overload_is_refused_fast_and_accepted_requests_stay_fast(live_stack):
    gateway = Service("gateway", ["--query-target", live_stack.query.address,
                                  "--index-targets", live_stack.index.address, "--max-concurrent-rpcs", "8"])
    with running(gateway):
        load = LoadInBackground(gateway.address, total=3000, concurrency=64,
                                make_request=make_recommend(live_stack.users.ids.tolist()), timeout_s=5.0)
        result = load.start().join()
    codes = collections.Counter(c.code for c in result.calls)
    rejected = [c for c in result.calls if c.code == "RESOURCE_EXHAUSTED"]
    figures = {"sent": len(result.calls), "codes": dict(codes), "rejection_rate": round(len(rejected) / 3000, 3),
               "accepted_p99_ms": round(result.p99_ms(), 2),
               "rejected_max_ms": round(max((c.latency_s for c in rejected), default=0) * 1e3, 2)}
    print("overload figures:", json.dumps(figures))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0
    assert result.p99_ms() < 1000  # bounded: nothing queues towards the 5 s deadline


def fake(delay=0.0, fail_code=""):
    return Service("fake_peer", ["--delay", str(delay), "--fail-code", fail_code])


# A user described by features: the gateway must ask the query tier (a known user's id alone goes to the index).
NEW_USER = pb.RecommendRequest(user_id="new-user", user_features=common_pb2.UserFeatures(age=30))


def test_slow_peer_gives_deadline_exceeded_within_the_deadline():
    peer = fake(delay=5)
    gateway = Service("gateway", ["--query-target", peer.address, "--index-targets", peer.address])
    with running(peer, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            start = time.monotonic()
            code, _ = code_of(lambda: gateway_pb2_grpc.GatewayStub(channel).Recommend(
                pb.RecommendRequest(user_id="1"), timeout=0.5))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("fail_code, retried", [("INTERNAL", False), ("UNAVAILABLE", True)])
def test_failing_peer_is_unavailable_without_a_retry_storm(fail_code, retried):
    peer = fake(fail_code=fail_code)
    gateway = Service("gateway", ["--query-target", peer.address, "--index-targets", peer.address])
    with running(peer, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for _ in range(50):
                code, details = code_of(lambda: stub.Recommend(NEW_USER, timeout=5))
                assert code == grpc.StatusCode.UNAVAILABLE and "query service" in details
        with grpc.insecure_channel(peer.address) as channel:
            calls = admin_pb2_grpc.ModelAdminStub(channel).GetModelStatus(
                admin_pb2.GetModelStatusRequest(), timeout=5).services[0].versions[0].size
    if retried:
        assert 50 < calls <= 150  # at most 3 attempts each, fewer once the retry budget is spent
    else:
        assert calls == 50


def test_sigterm_finishes_accepted_requests_then_exits_zero():
    peer = fake(delay=0.5)
    gateway = Service("gateway", ["--query-target", peer.address, "--index-targets", peer.address,
                                  "--grace-period", "5"])
    with running(peer, gateway):
        results = []

        def call():
            with grpc.insecure_channel(gateway.address) as channel:
                results.append(code_of(lambda: gateway_pb2_grpc.GatewayStub(channel).Recommend(
                    NEW_USER, timeout=10))[0])

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # all 20 are in flight: each spends 2 x 0.5 s at the slow peer (EmbedUsers, Search)
        gateway.signal(signal.SIGTERM)
        for t in threads:
            t.join(15)
        assert gateway.proc.wait(15) == 0
    assert results == [grpc.StatusCode.OK] * 20
    print("sigterm figures:", json.dumps({"in_flight": 20, "lost": 20 - results.count(grpc.StatusCode.OK)}))


def test_reload_can_be_disabled(live_stack):
    index = Service("index_service", ["--model-base", str(live_stack.model_base), "--no-allow-reload"])
    with running(index):
        with grpc.insecure_channel(index.address) as channel:
            code, details = code_of(lambda: admin_pb2_grpc.ModelAdminStub(channel).ReloadModels(
                admin_pb2.ReloadModelsRequest(), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "--allow-reload" in details
