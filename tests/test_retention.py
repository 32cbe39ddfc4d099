"""Issue 20: `python -m trainer prune` removes the oldest versions, never a loaded one or a staging folder."""

import subprocess
import sys

import grpc
import pytest

from bundles import write_item_bundle
from procs import REPO, Service, free_port, running, service_env
from recsys.internal.v1 import admin_pb2, admin_pb2_grpc
from recsys.v1 import common_pb2
from serving import bundle, retention


def prune(model_base, *flags):
    return subprocess.run([sys.executable, "-m", "trainer", "prune", "--model-base", str(model_base), *flags],
                          capture_output=True, text=True, timeout=120, env=service_env(), cwd=REPO)


def publish(model_base, count):
    for seed in range(count):
        write_item_bundle(model_base, n_items=50, seed=seed)


def test_plan_keeps_the_newest_and_every_loaded_version(tmp_path):
    publish(tmp_path, 5)
    plan = retention.plan(tmp_path, keep=2, loaded={1: ["index at a"]})
    assert plan.kept == [5, 4, 1] and plan.removed == [2, 3]
    with pytest.raises(retention.RetentionError, match="at least 1"):
        retention.plan(tmp_path, keep=0, loaded={})


def test_replica_addresses_expand_static_lists_and_dns():
    assert retention.replica_addresses("ipv4:127.0.0.1:1,127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert "127.0.0.1:50053" in retention.replica_addresses("dns:///localhost:50053")
    assert retention.replica_addresses("127.0.0.1:7") == ["127.0.0.1:7"]


@pytest.mark.slow
def test_prune_never_removes_a_loaded_version_or_a_staging_folder(tmp_path):
    model_base = tmp_path / "models"
    publish(model_base, 2)
    # Loads versions 1 and 2 and, without polling, keeps them while newer ones appear.
    index = Service("index_service", ["--model-base", str(model_base), "--poll-interval", "0", "--keep-versions", "2"])
    with running(index):
        publish(model_base, 3)  # versions 3, 4, 5
        with bundle.BundleStaging(model_base) as in_progress:  # a training run still writing
            (in_progress.path / "item_ids.npy").write_bytes(b"half written")
            result = prune(model_base, "--keep", "1", "--index-targets", f"ipv4:{index.address}")
            assert in_progress.path.is_dir()
        with grpc.insecure_channel(index.address) as channel:
            status = admin_pb2_grpc.ModelAdminStub(channel).GetModelStatus(
                admin_pb2.GetModelStatusRequest(), timeout=10)
    assert result.returncode == 0, result.stderr
    assert sorted(bundle.version_dirs(model_base)) == [1, 2, 5]
    assert "removed [3, 4]" in result.stdout and "version 1 is loaded by recsys.internal.v1.IndexService" in result.stdout
    loaded = {v.version for v in status.services[0].versions if v.state == common_pb2.MODEL_VERSION_STATE_AVAILABLE}
    assert loaded == {"1", "2"}
    assert not list(model_base.glob(".pruning-*"))


@pytest.mark.slow
def test_prune_removes_nothing_if_a_service_does_not_answer(tmp_path):
    publish(tmp_path, 3)
    result = prune(tmp_path, "--keep", "1", "--query-target", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "did not report its model versions" in result.stderr and "nothing removed" in result.stderr
    assert sorted(bundle.version_dirs(tmp_path)) == [1, 2, 3]


@pytest.mark.slow
def test_prune_asks_for_the_services_or_an_explicit_no_services(tmp_path):
    publish(tmp_path, 3)
    result = prune(tmp_path, "--keep", "1")
    assert result.returncode == 2 and "--no-services" in result.stderr
    assert sorted(bundle.version_dirs(tmp_path)) == [1, 2, 3]
    result = prune(tmp_path, "--keep", "2", "--no-services")
    assert result.returncode == 0, result.stderr
    assert sorted(bundle.version_dirs(tmp_path)) == [2, 3]
