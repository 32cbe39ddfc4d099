"""What operators use: reflection answers for ghz/grpcurl, Prometheus metrics, the CLI, health."""

import subprocess
import sys
import urllib.request

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from procs import REPO, service_env
from recsys.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow


def reflect(address, **request):
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [response] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=5))
    return response


def file_names(response):
    return [descriptor_pb2.FileDescriptorProto.FromString(b).name
            for b in response.file_descriptor_response.file_descriptor_proto]


def test_reflection_lists_services(live_stack):
    response = reflect(live_stack.gateway.address, list_services="")
    names = {s.name for s in response.list_services_response.service}
    assert {"recsys.v1.Gateway", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


@pytest.mark.parametrize("symbol", ["recsys.v1.Gateway", "recsys.v1.Gateway.Recommend", "recsys.v1.RecommendRequest"])
def test_reflection_finds_file_containing_symbol(live_stack, symbol):
    """ghz resolves `recsys.v1.Gateway/Recommend` by asking for the method symbol."""
    response = reflect(live_stack.gateway.address, file_containing_symbol=symbol)
    assert not response.HasField("error_response"), response.error_response.error_message
    assert "recsys/v1/gateway.proto" in file_names(response)


def test_reflection_unknown_symbol_is_not_found(live_stack):
    response = reflect(live_stack.gateway.address, file_containing_symbol="recsys.v1.Gateway.NoSuchMethod")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_file_by_filename_includes_dependencies(live_stack):
    response = reflect(live_stack.gateway.address, file_by_filename="recsys/v1/gateway.proto")
    names = file_names(response)
    assert names[0] == "recsys/v1/gateway.proto" and "recsys/v1/common.proto" in names


def test_metrics_endpoint(live_stack):
    live_stack.stub.Recommend(pb.RecommendRequest(user_id=live_stack.users.ids[0], k=3), timeout=10)
    with pytest.raises(grpc.RpcError):
        live_stack.stub.Recommend(pb.RecommendRequest(user_id="", k=3), timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{live_stack.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recsys_grpc_requests_total{code="OK",method="/recsys.v1.Gateway/Recommend"}' in body
    assert 'recsys_grpc_requests_total{code="INVALID_ARGUMENT",method="/recsys.v1.Gateway/Recommend"}' in body
    assert 'recsys_grpc_request_seconds_bucket{le="0.005",method="/recsys.v1.Gateway/Recommend"}' in body
    assert 'recsys_batch_size_count{stage="gateway"}' in body


def cli(live_stack, *args):
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--address", live_stack.gateway.address, *args],
        env=service_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_cli_recommend_prints_a_table(live_stack):
    user = live_stack.users.ids[0]
    out = cli(live_stack, "recommend", user, "-k", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"user {user} - model version {live_stack.manifest.version}")
    assert lines[1].split() == ["rank", "item_id", "score", "title"]
    rows = lines[3:]
    assert len(rows) == 4 and [r.split()[0] for r in rows] == ["1", "2", "3", "4"]
    assert all(r.split()[1] in live_stack.items.row_of for r in rows)


def test_cli_similar_status_health(live_stack):
    similar = cli(live_stack, "similar", live_stack.items.ids[0], "-k", "3")
    assert similar.returncode == 0 and len(similar.stdout.splitlines()) == 6
    status = cli(live_stack, "status")
    assert status.returncode == 0 and "recsys.internal.v1.IndexService" in status.stdout and "AVAILABLE" in status.stdout
    health = cli(live_stack, "health")
    assert health.returncode == 0 and health.stdout.count("SERVING") == 2


def test_cli_reports_errors_with_status(live_stack):
    out = cli(live_stack, "recommend", "1", "-k", "5000")
    assert out.returncode == 1 and out.stderr.startswith("error: INVALID_ARGUMENT: k must be 1..1000")


@pytest.mark.parametrize("service", ["", "recsys.v1.Gateway"])
def test_health_per_service_name(live_stack, service):
    from serving.healthcheck import check

    assert check(live_stack.gateway.address, service) == "SERVING"
    assert check(live_stack.gateway.address, "recsys.v1.NoSuchService") == "NOT_FOUND"
