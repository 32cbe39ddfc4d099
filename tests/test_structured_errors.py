"""Structured errors as a client sees them: BadRequest field violations and ErrorInfo, through real servers."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from procs import Service, free_port
from recsys.internal.v1 import index_service_pb2, index_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc
from serving import errors, request_id

pytestmark = pytest.mark.slow


def _fail(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value


def _violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in the trailers of {error.code()}: {error.details()}"
    assert status.code == error.code().value[0] and status.message == error.details()
    [bad_request] = [d for d in errors.details_of(error) if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad_request.field_violations}


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    [info] = [d for d in errors.details_of(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return info


def test_every_bad_field_of_a_recommend_is_one_violation(live_stack):
    request = pb.RecommendRequest(
        user_id="", k=5000,
        user_features=common_pb2.UserFeatures(age=400, gender="x" * 100, watched_item_ids=["1", ""]),
        genre_filter=common_pb2.GenreFilter(include_genres=["Comedy", ""]),
    )
    error = _fail(live_stack.stub.Recommend, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(error)
    assert set(violations) == {
        "user_id", "k", "user_features.age", "user_features.gender", "user_features.watched_item_ids[1]",
        "genre_filter.include_genres[1]",
    }
    assert "1..1000" in violations["k"] and "1..150" in violations["user_features.age"]
    # The human-readable message names the same fields.
    assert "user_features: age must be 0" in error.details() and "k must be 1..1000" in error.details()
    # The request id is still in the trailers, once.
    assert [k for k, _ in error.trailing_metadata()].count(request_id.HEADER) == 1


def test_batch_violations_name_the_entry(live_stack):
    requests = [pb.RecommendRequest(user_id="1"), pb.RecommendRequest(user_id="2"),
                pb.RecommendRequest(user_id="3", k=-1), pb.RecommendRequest(user_id="", k=5)]
    error = _fail(live_stack.stub.RecommendBatch, pb.RecommendBatchRequest(requests=requests))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(error)) == {"requests[2].k", "requests[3].user_id"}
    error = _fail(live_stack.stub.RecommendBatch, pb.RecommendBatchRequest())
    assert set(_violations(error)) == {"requests"}


def test_a_thousand_bad_entries_report_a_bounded_list(live_stack):
    requests = [pb.RecommendRequest(user_id=str(i), k=-1) for i in range(1000)]
    error = _fail(live_stack.stub.RecommendBatch, pb.RecommendBatchRequest(requests=requests))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(error)
    assert len(violations) == errors.MAX_REPORTED_VIOLATIONS and "requests[0].k" in violations
    assert f"(and {1000 - errors.MAX_REPORTED_VIOLATIONS} more bad fields)" in error.details()


def test_similar_items_violations(live_stack):
    error = _fail(live_stack.stub.SimilarItems, pb.SimilarItemsRequest(item_id="", k=1001))
    assert set(_violations(error)) == {"item_id", "k"}


def test_unknown_genre_refused_by_the_index_names_the_callers_field(live_stack):
    request = pb.RecommendRequest(
        user_id=live_stack.users.ids[0], k=5, genre_filter=common_pb2.GenreFilter(exclude_genres=["Polka"])
    )
    error = _fail(live_stack.stub.Recommend, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(error).items()
    assert field.startswith("genre_filter") and "unknown genre 'Polka'" in description


def test_backends_report_violations_and_missing_versions(live_stack):
    with grpc.insecure_channel(live_stack.index.address) as channel:
        index = index_service_pb2_grpc.IndexServiceStub(channel)
        error = _fail(index.Search, index_service_pb2.SearchRequest(
            queries=[index_service_pb2.Query(most_popular=True), index_service_pb2.Query(vector=[1.0] * 3)], k=5,
        ))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(_violations(error)) == {"queries[1].vector"}
        error = _fail(index.Search, index_service_pb2.SearchRequest(
            queries=[index_service_pb2.Query(most_popular=True)], model_version="99",
        ))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = _error_info(error)
        assert info.reason == "MODEL_VERSION_NOT_LOADED" and info.domain == errors.DOMAIN
        assert info.metadata["requested"] == "99" and info.metadata["loaded"] == str(live_stack.manifest.version)
    with grpc.insecure_channel(live_stack.query.address) as channel:
        query = query_service_pb2_grpc.QueryServiceStub(channel)
        error = _fail(query.EmbedUsers, query_service_pb2.EmbedUsersRequest(
            user_ids=["1", ""], user_features=[common_pb2.UserFeatures(), common_pb2.UserFeatures(age=-1)],
        ))
        assert set(_violations(error)) == {"user_ids[1]", "user_features[1].age"}


def test_a_dead_tier_is_error_info_naming_tier_and_shard(live_stack):
    dead = f"127.0.0.1:{free_port()}"
    gateway = Service("gateway", [
        "--query-target", live_stack.query.address, "--index-targets", f"{live_stack.index.address};{dead}",
        "--peer-restart-wait", "1",
    ])
    try:
        # Never SERVING without every index shard (the start-up gate), but it answers.
        assert gateway.start().wait_answering() == "NOT_SERVING"
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            error = _fail(stub.Recommend, pb.RecommendRequest(user_id=live_stack.users.ids[0], k=5))
    finally:
        gateway.stop()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "index shard 1" in error.details()
    info = _error_info(error)
    assert info.reason == "TIER_UNAVAILABLE" and info.domain == errors.DOMAIN
    assert dict(info.metadata) == {"tier": "index", "shard": "1"}


def test_cli_prints_the_violations(live_stack, capsys):
    from gateway import cli

    code = cli.main(["--address", live_stack.gateway.address, "recommend", "7", "-k", "5000", "--age", "400"])
    assert code == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err
    assert "  k: k must be 1..1000" in err and "  user_features.age: age must be" in err
