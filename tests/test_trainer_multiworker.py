"""Multi-worker training: two ``python -m trainer train`` processes on 127.0.0.1 form a
``MultiWorkerMirroredStrategy`` cluster through TF_CONFIG; the chief (worker 0)
publishes one bundle, which validates and which the index and query services serve.
"""

from __future__ import annotations

import json

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from movielens_fixture import write_small_movielens
from procs import REPO, Service, free_port, running, service_env
from recsys.internal.v1 import index_service_pb2, index_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc
from serving import bundle

pytestmark = pytest.mark.slow


def test_two_workers_publish_one_servable_bundle(tmp_path: Path) -> None:
    data = write_small_movielens(tmp_path / "data", users=80, items=60, ratings=2400, seed=3)
    model_base = tmp_path / "models"
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = service_env(TF_CONFIG=json.dumps(config), RECSYS_CACHE_DIR=str(tmp_path / "no-download"))
        log = open(tmp_path / f"worker{index}.log", "wb")
        command = [sys.executable, "-m", "trainer", "train", "--data-dir", str(data), "--model-base", str(model_base),
                   "--epochs", "2", "--batch-size", "256", "--validation-fraction", "0"]  # fmt: skip
        procs.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=240) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)

    versions = bundle.version_dirs(model_base)
    assert list(versions) == [1], "only the chief publishes"
    assert "published" in logs[0] and "published" not in logs[1]
    manifest = bundle.read_manifest(versions[1])
    items, users = bundle.validate(versions[1], manifest)
    assert manifest.raw["training"]["workers"] == 2
    assert not [p for p in model_base.iterdir() if p.name != "1"], "no staging folder is left behind"

    common = ["--model-base", str(model_base), "--poll-interval", "0.5"]
    query, index = Service("query_service", common), Service("index_service", common)
    with running(query, index):
        user = users.ids[0]
        with grpc.insecure_channel(query.address) as channel:
            embedded = query_service_pb2_grpc.QueryServiceStub(channel).EmbedUsers(
                query_service_pb2.EmbedUsersRequest(user_ids=[user]), timeout=30
            )
        vector = np.array(embedded.embeddings[0].values, dtype=np.float32)
        assert vector.shape == (manifest.embedding_dim,) and embedded.embeddings[0].known
        with grpc.insecure_channel(index.address) as channel:
            found = index_service_pb2_grpc.IndexServiceStub(channel).Search(
                index_service_pb2.SearchRequest(queries=[index_service_pb2.Query(vector=vector.tolist())], k=5, exact=True),
                timeout=30,
            )
        top = list(found.results[0].item_ids)
        expected = np.argsort(-(items.embeddings @ vector), kind="stable")[:5]
        assert top == [items.ids[i] for i in expected]

