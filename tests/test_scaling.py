"""Issue 6: index replicas and shards behind the gateway, on 127.0.0.1 processes."""

import signal
import time
import urllib.request

import grpc
import pytest

from load import LoadInBackground, make_recommend
from procs import Service, free_port, health_status, running
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc

pytestmark = pytest.mark.slow


def index_replica(model_base, shard, num_shards, metrics_port=0):
    return Service(
        "index_service",
        ["--model-base", str(model_base), "--poll-interval", "0", "--shard-index", str(shard),
         "--num-shards", str(num_shards), "--metrics-port", str(metrics_port)],
    )


def targets(shards):
    """``ipv4:`` static lists, one per shard, ';'-separated: what the gateway's --index-targets takes."""
    return ";".join("ipv4:" + ",".join(r.address for r in replicas) for replicas in shards)


def searches_served(metrics_port, method="/recsys.internal.v1.IndexService/Search"):
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(f'recsys_grpc_requests_total{{code="OK",method="{method}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_two_shards_two_replicas_equal_the_single_index(live_stack):
    shards = [[index_replica(live_stack.model_base, s, 2) for _ in range(2)] for s in range(2)]
    gateway = Service("gateway", ["--query-target", live_stack.query.address, "--index-targets", targets(shards)])
    with running(*shards[0], *shards[1], gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            sharded = gateway_pb2_grpc.GatewayStub(channel)
            status = sharded.GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
            held = sorted((s.shard_index, s.num_shards, s.versions[0].size) for s in status.services
                          if s.service == "recsys.internal.v1.IndexService")
            assert [h[:2] for h in held] == [(0, 2), (1, 2)]
            assert sum(h[2] for h in held) == len(live_stack.items)
            for user in [*live_stack.users.ids.tolist(), "cold-user"]:
                for request in (pb.RecommendRequest(user_id=user, k=10),
                                pb.RecommendRequest(user_id=user, k=10, exclude_seen=True)):
                    want = live_stack.stub.Recommend(request, timeout=10)
                    got = sharded.Recommend(request, timeout=10)
                    assert [i.item_id for i in got.items] == [i.item_id for i in want.items], user
            item = live_stack.items.ids[3]
            want = live_stack.stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=10), timeout=10)
            got = sharded.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=10), timeout=10)
            assert [i.item_id for i in got.items] == [i.item_id for i in want.items]


def test_killing_a_replica_under_load_fails_nothing(live_stack):
    ports = [free_port(), free_port()]
    replicas = [index_replica(live_stack.model_base, 0, 1, p) for p in ports]
    gateway = Service("gateway", ["--query-target", live_stack.query.address, "--index-targets", targets([replicas])])
    users = live_stack.users.ids.tolist()
    with running(*replicas, gateway):
        load = LoadInBackground(gateway.address, total=3000, concurrency=8, make_request=make_recommend(users))
        load.start()
        killed_at = load.wait_for_calls(800)
        replicas[0].signal(signal.SIGKILL)
        replicas[0].proc.wait()
        restarted_at = load.wait_for_calls(1800)
        replicas[0].start().wait_serving(60)
        back_at = time.monotonic()
        result = load.join()
        # Back in rotation: the restarted replica serves Search calls again.
        before = searches_served(ports[0])
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            deadline = time.monotonic() + 15
            while searches_served(ports[0]) <= before:
                assert time.monotonic() < deadline, "restarted replica never got traffic"
                stub.Recommend(pb.RecommendRequest(user_id=users[0]), timeout=10)
    figures = {
        "sent": len(result.calls),
        "failed": len(result.failed()),
        "p99_ms_before": round(result.p99_ms(end=killed_at), 2),
        "p99_ms_during": round(result.p99_ms(killed_at, restarted_at), 2),
        "p99_ms_after": round(result.p99_ms(start=back_at), 2),
    }
    print("failover figures:", figures)
    assert result.failed() == [], result.failed()[:3]


def test_killing_a_query_replica_under_load_fails_nothing(live_stack):
    """Issue 20: the query tier fails over like the index tier (two replicas behind one target)."""
    ports = [free_port(), free_port()]
    replicas = [Service("query_service", ["--model-base", str(live_stack.model_base), "--poll-interval", "0",
                                          "--metrics-port", str(p)]) for p in ports]
    gateway = Service("gateway", ["--query-target", "ipv4:" + ",".join(r.address for r in replicas),
                                  "--index-targets", live_stack.index.address])
    users = live_stack.users.ids.tolist()
    via_query = make_recommend(users, features=common_pb2.UserFeatures(age=30))  # so that every call needs the query tier
    with running(*replicas, gateway):
        load = LoadInBackground(gateway.address, total=3000, concurrency=8, make_request=via_query)
        load.start()
        killed_at = load.wait_for_calls(800)
        replicas[0].signal(signal.SIGKILL)
        replicas[0].proc.wait()
        during = load.join()
        # The query service takes seconds to start (TensorFlow): measure "after" with a second load.
        replicas[0].start().wait_serving(90)
        before = searches_served(ports[0], "/recsys.internal.v1.QueryService/EmbedUsers")
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            deadline = time.monotonic() + 15
            while searches_served(ports[0], "/recsys.internal.v1.QueryService/EmbedUsers") <= before:
                assert time.monotonic() < deadline, "restarted query replica never got traffic"
                stub.Recommend(via_query(0), timeout=10)
        after = LoadInBackground(gateway.address, total=1500, concurrency=8, make_request=via_query)
        after = after.start().join()
    figures = {
        "sent": len(during.calls) + len(after.calls),
        "failed": len(during.failed()) + len(after.failed()),
        "p99_ms_before": round(during.p99_ms(end=killed_at), 2),
        "p99_ms_during": round(during.p99_ms(start=killed_at), 2),
        "p99_ms_after": round(after.p99_ms(), 2),
    }
    print("query failover figures:", figures)
    assert during.failed() == [] and after.failed() == [], (during.failed() + after.failed())[:3]


def test_losing_every_replica_of_a_shard_fails_fast(live_stack):
    shards = [[index_replica(live_stack.model_base, s, 2)] for s in range(2)]
    # A shard without a SERVING replica for more than --peer-restart-wait counts as gone.
    gateway = Service("gateway", ["--query-target", live_stack.query.address, "--index-targets", targets(shards),
                                  "--peer-restart-wait", "1"])
    with running(shards[0][0], shards[1][0], gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            stub.Recommend(pb.RecommendRequest(user_id=live_stack.users.ids[0]), timeout=10)
            shards[1][0].signal(signal.SIGKILL)
            shards[1][0].proc.wait()
            for attempt in range(5):
                start = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    stub.Recommend(pb.RecommendRequest(user_id=live_stack.users.ids[0]), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert "index shard 1" in err.value.details()
                # The first call waits out the restart window; once it has passed, calls fail at once.
                assert time.monotonic() - start < (1.5 if attempt == 0 else 0.5)
            # The gate latched: the gateway stays SERVING (it does not leave the load balancer).
            assert health_status(gateway.address, "recsys.v1.Gateway") == "SERVING"
