"""The benchmark's Python parts at tiny scale (no h2load): index measurements, service start-up, echo, report."""

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench import index_bench, load, report
from bench.__main__ import sample_check, targets
from bench.procs import Service, running
from trainer.synthetic import clustered_table, queries_like
from google.protobuf import json_format
from recsys.v1 import gateway_pb2
from test_ann import write_bundle

REPO = Path(__file__).resolve().parents[1]
GHZ = REPO / "bench" / "ghz"
ML100K = REPO.parent / "shared" / "data" / "ml-100k"

pytestmark = pytest.mark.slow


def test_synthetic_table_is_clustered_with_uneven_norms():
    table = clustered_table(5000, dim=16, clusters=50)
    norms = np.linalg.norm(table, axis=1)
    assert table.dtype == np.float32 and table.shape == (5000, 16)
    assert 0.05 < norms.std() / norms.mean() < 0.5
    q = queries_like(table, 10)
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-4)


def test_the_synthetic_generator_imports_no_tensorflow():
    code = "import sys; from trainer.synthetic import clustered_table, queries_like; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _ghz_requests():
    """(config file, request message class, [request dicts]) for every config in bench/ghz."""
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    for path in sorted(GHZ.glob("*.json")):
        config = json.loads(path.read_text())
        package_service, method = config["call"].rsplit(".", 1)
        assert package_service == service.full_name, path
        input_type = service.methods_by_name[method].input_type
        yield path, getattr(gateway_pb2, input_type.name), config["data"]


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=f"MovieLens 100k not at {ML100K}")
def test_ghz_configs_parse_and_name_movielens_users_and_items():
    """Each bench/ghz config is valid JSON for its method, and names ids a trained bundle has.

    A bundle trained on MovieLens 100k holds its users (u.user) and items (u.item).
    """
    users = {line.split("|")[0] for line in (ML100K / "u.user").read_text(encoding="latin-1").splitlines() if line}
    items = {line.split("|")[0] for line in (ML100K / "u.item").read_text(encoding="latin-1").splitlines() if line}
    genres = {line.split("|")[0] for line in (ML100K / "u.genre").read_text(encoding="latin-1").splitlines() if line}
    occupations = {line.split("|")[0] for line in (ML100K / "u.occupation").read_text(encoding="latin-1").splitlines() if line}
    configs = list(_ghz_requests())
    assert {path.name for path, _, _ in configs} >= {"recommend.json", "recommend_batch.json", "similar_items.json",
                                                      "recommend_new_users.json"}
    for path, message, data in configs:
        assert data, path
        for entry in data:
            request = json_format.ParseDict(entry, message())  # unknown fields raise
            inner = list(request.requests) if message is gateway_pb2.RecommendBatchRequest else [request]
            for r in inner:
                fields = r.DESCRIPTOR.fields_by_name
                if "user_id" in fields:
                    # A user the model does not know must describe themselves.
                    assert r.user_id in users or r.HasField("user_features"), (path.name, r.user_id)
                    assert set(r.user_features.watched_item_ids) <= items, (path.name, r.user_id)
                    assert r.user_features.occupation in occupations | {""}, (path.name, r.user_id)
                if "item_id" in fields:
                    assert r.item_id in items, (path.name, r.item_id)
                assert set(r.exclude_item_ids) <= items, (path.name, set(r.exclude_item_ids) - items)
                named = set(r.genre_filter.include_genres) | set(r.genre_filter.exclude_genres)
                assert named <= genres, (path.name, named - genres)


def test_grpc_frame():
    assert load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_index_measurements_on_a_small_catalog(tmp_path):
    emb = clustered_table(25_000, dim=16, clusters=100)
    bundle_dir = write_bundle(tmp_path / "models", emb)
    result = index_bench.in_process(bundle_dir, queries=100)
    assert result["items"] == 25_000 and result["config"]["serialized"] == "scann"
    assert result["recall_at_10"] >= 0.8
    assert result["scann_single_qps"] > 0 and result["exact_numpy_batched_qps"] > 0
    startup = index_bench.service_startup(bundle_dir.parent)
    assert startup["seconds_to_serving"] > 0 and startup["rss_mb"] > 10
    rebuild_base = tmp_path / "rebuild"
    rebuild_base.mkdir()
    copy = index_bench.without_searcher(bundle_dir, rebuild_base)
    assert not (copy / "scann").exists() and "scann" not in json.loads((copy / "manifest.json").read_text())
    assert "scann" in json.loads((bundle_dir / "manifest.json").read_text())  # the original is untouched


def test_echo_server_and_the_python_status_check():
    request = gateway_pb2.RecommendRequest(user_id="1", k=10).SerializeToString()
    echo = Service("bench.servers", ["--kind", "echo"])
    with running(echo):
        with grpc.insecure_channel(echo.address) as channel:
            assert channel.unary_unary("/recsys.v1.Gateway/Recommend")(request, timeout=5) == request
        assert sample_check(echo.address, request, parse=False, count=20) == (0, "Python client sample: 20/20 OK")
        assert load.cpu_seconds(echo.proc.pid) > 0 and load.rss_bytes(echo.proc.pid) > 0


def test_report_writes_json_markdown_and_png(tmp_path):
    row = dict(target="stack (gateway)", concurrency=32, requests=100, http_failures=0, grpc_errors=0,
               grpc_check="server counters", seconds=1.0, rps=100.0, p50_ms=1.0, p99_ms=2.0,
               cpu_ms_per_request=1.0, cpu_ms_by_process={"gateway": 0.5, "query": 0.3, "index": 0.2})
    echo = {**row, "target": "echo (floor)", "rps": 200.0}
    # Three paired rounds: shares 50%, 30%, 45%; the middle stack run is 90 req/s.
    results = {"started_at": "now", "machine": "test", "user_id": "1", "load": [
        {**echo, "round": 1}, {**row, "round": 1},
        {**echo, "round": 2, "rps": 300.0}, {**row, "round": 2, "rps": 90.0, "p99_ms": 31.0},
        {**echo, "round": 3}, {**row, "round": 3, "rps": 90.0}]}
    results["targets"] = targets(results)
    by_target = {t["target"]: t for t in results["targets"]}
    share = by_target["stack c=32 req/s >= 40% of echo"]
    assert share["met"] and share["figure"].startswith("45% (median of 3 paired rounds: 30%, 45%, 50%)")
    assert not by_target["stack c=32 p99 <= 30 ms"]["met"]  # the worst round counts
    paths = report.write(results, tmp_path)
    assert json.loads(paths["json"].read_text())["load"][1]["rps"] == 100.0
    text = paths["markdown"].read_text()
    assert "| stack (gateway) | 32 | 90 |" in text and "| 2 | 32 | 300 | 90 | 30% | 31.00 |" in text
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
