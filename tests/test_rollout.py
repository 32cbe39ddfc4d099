"""Issue 4: versions roll out under load with no failed request and no mixed-version answer."""

import json
import shutil
import time

import grpc
import numpy as np
import pytest

from bundles import clone_version
from load import LoadInBackground, make_recommend
from procs import Service, running, stack
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc
from serving import bundle

pytestmark = pytest.mark.slow

AVAILABLE = common_pb2.MODEL_VERSION_STATE_AVAILABLE
FAILED = common_pb2.MODEL_VERSION_STATE_FAILED
LOADING = common_pb2.ModelVersionStatus(state=common_pb2.MODEL_VERSION_STATE_LOADING)


@pytest.fixture
def model_base(trained_model_base, tmp_path):
    base = tmp_path / "models"
    shutil.copytree(trained_model_base, base)
    return base


def source_bundle(model_base):
    return min(bundle.version_dirs(model_base).items())[1]


def user_ids(model_base):
    path = source_bundle(model_base)
    return bundle.load_users(path, bundle.read_manifest(path)).ids.tolist()


def status_by_service(stub):
    response = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
    return {s.service: {v.version: v for v in s.versions} for s in response.services}


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def both_hold(stub, version):
    status = status_by_service(stub)
    return all(
        version in status[s] and status[s][version].state == AVAILABLE
        for s in ("recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService")
    )


def test_publish_under_load_drops_nothing(model_base):
    users = user_ids(model_base)
    query, index, gateway = stack(model_base, poll="0.2")
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            load = LoadInBackground(gateway.address, total=4000, concurrency=8, make_request=make_recommend(users))
            load.start()
            publish_at = load.wait_for_calls(1000)
            clone_version(source_bundle(model_base), model_base, 2)
            wait_until(lambda: both_hold(stub, "2"), what="version 2 on both tiers")
            swapped_at = time.monotonic()
            result = load.join()
    versions = {c.response.model_version for c in result.calls if c.code == "OK"}
    figures = {
        "sent": len(result.calls),
        "failed": len(result.failed()),
        "p99_ms_before": round(result.p99_ms(end=publish_at), 2),
        "p99_ms_during": round(result.p99_ms(publish_at, swapped_at), 2),
        "p99_ms_after": round(result.p99_ms(start=swapped_at), 2),
        "swap_seconds": round(swapped_at - publish_at, 2),
        "versions": sorted(versions),
    }
    print("roll-out figures:", json.dumps(figures))
    assert result.failed() == [], result.failed()[:3]
    assert versions == {"1", "2"}, "both versions should have answered during the roll-out"
    assert result.count(start=swapped_at) > 0


def _republish(src, model_base, version, edit):
    """Clone ``src`` as ``version`` after ``edit(staging_dir, manifest)``; re-hashes unless edit says not to."""
    staging = model_base / f".staging-test-{version}"
    shutil.copytree(src, staging)
    manifest = json.loads((staging / bundle.MANIFEST).read_text())
    rehash = edit(staging, manifest)
    manifest["version"] = version
    if rehash is not False:
        manifest["files"] = {
            rel: bundle.sha256_file(staging / rel) for rel in manifest["files"] if (staging / rel).exists()
        }
    (staging / bundle.MANIFEST).write_text(json.dumps(manifest))
    staging.rename(model_base / str(version))


def truncate_npy(d, m):
    data = (d / "item_embeddings.npy").read_bytes()
    (d / "item_embeddings.npy").write_bytes(data[: len(data) // 2])


def flip_a_byte(d, m):
    data = bytearray((d / "item_titles.npy").read_bytes())
    data[-1] ^= 0xFF
    (d / "item_titles.npy").write_bytes(bytes(data))
    return False  # keep the old checksum: this is the corruption


def wrong_dimension(d, m):
    emb = np.load(d / "item_embeddings.npy")
    np.save(d / "item_embeddings.npy", np.ascontiguousarray(emb[:, :16]), allow_pickle=False)
    m["embedding_dim"] = 16  # consistent for the index; the user tower still outputs 32


def nan_row(d, m):
    emb = np.load(d / "item_embeddings.npy")
    emb[3, 5] = np.nan
    np.save(d / "item_embeddings.npy", emb, allow_pickle=False)


CORRUPTIONS = [
    (truncate_npy, "recsys.internal.v1.IndexService", "unreadable"),
    (flip_a_byte, "recsys.internal.v1.IndexService", "sha256"),
    (wrong_dimension, "recsys.internal.v1.QueryService", "dimension 16"),
    (nan_row, "recsys.internal.v1.IndexService", "NaN or Inf"),
]


def test_corrupt_versions_are_rejected_and_v1_keeps_serving(model_base):
    users = user_ids(model_base)
    query, index, gateway = stack(model_base, poll="0.2")
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for version, (edit, rejecting_service, reason) in enumerate(CORRUPTIONS, start=2):
                _republish(source_bundle(model_base), model_base, version, edit)
                wait_until(
                    lambda: status_by_service(stub)[rejecting_service].get(str(version), LOADING).state
                    not in (LOADING.state, common_pb2.MODEL_VERSION_STATE_LOADING),
                    what=f"v{version} validated",
                )
                status = status_by_service(stub)[rejecting_service][str(version)]
                assert status.state == FAILED and reason in status.error, status
                for user in users[:20]:
                    response = stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10)
                    assert response.model_version == "1" and len(response.items) == 5
    logs = index.log_path.read_text() + query.log_path.read_text()
    assert logs.count("model version rejected") >= len(CORRUPTIONS)


def test_tiers_on_different_versions_never_mix(model_base, tmp_path):
    """Query holds 1 and 2, index holds only 1: answers come from version 1 end to end."""
    users = user_ids(model_base)
    query_base = tmp_path / "query-models"
    shutil.copytree(model_base, query_base)
    clone_version(source_bundle(model_base), query_base, 2)
    query = Service("query_service", ["--model-base", str(query_base), "--poll-interval", "0"])
    index = Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0"])
    gateway = Service("gateway", ["--query-target", query.address, "--index-targets", index.address])
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for user in users[:30]:
                response = stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10)
                assert response.model_version == "1"


def test_no_common_version_fails_clearly(model_base, tmp_path):
    query_base = tmp_path / "query-models"
    query_base.mkdir()
    clone_version(source_bundle(model_base), query_base, 2)
    query = Service("query_service", ["--model-base", str(query_base), "--poll-interval", "0"])
    index = Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0"])
    gateway = Service("gateway", ["--query-target", query.address, "--index-targets", index.address])
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            # A known user needs the index alone, which searches with its own version's user vectors.
            answer = stub.Recommend(pb.RecommendRequest(user_id=user_ids(model_base)[0]), timeout=10)
            assert answer.model_version == "1" and not answer.fallback
            # A user described by features needs both tiers, which hold no version in common.
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(pb.RecommendRequest(user_id="new", user_features=common_pb2.UserFeatures(age=30)),
                               timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no model version is loaded on both tiers" in err.value.details()


def test_restart_comes_back_on_newest_valid_version(model_base):
    clone_version(source_bundle(model_base), model_base, 2)
    _republish(source_bundle(model_base), model_base, 3, nan_row)
    query, index, gateway = stack(model_base, poll="0")
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for service in (index, query):
                service.stop()
                service.start().wait_serving(60)

                def defaults():
                    status = status_by_service(stub)
                    return {name: [v for v, s in status[name].items() if s.is_default]
                            for name in ("recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService")}

                # The gateway's channel reconnects within its backoff (at most 2 s).
                wait_until(lambda: all(defaults().values()), timeout=10, what="gateway reconnected")
                assert defaults() == {"recsys.internal.v1.QueryService": ["2"], "recsys.internal.v1.IndexService": ["2"]}
                response = stub.Recommend(pb.RecommendRequest(user_id=user_ids(model_base)[0]), timeout=10)
                assert response.model_version == "2"
