"""ScaNN parameters by catalog size, and serialized searchers in bundles (no TensorFlow, no servers)."""

import json

import numpy as np
import pytest

from bundles import write_item_bundle
from index_service import index as index_module
from index_service.index import make_loader
from serving import ann, bundle

N_ITEMS = 24_000  # just above ann.EXACT_BELOW, so the tree + AH path is taken
DIM = 16


def test_scann_config_by_catalog_size():
    assert ann.scann_config(1682)["mode"] == "brute_force"
    assert ann.scann_config(ann.EXACT_BELOW - 1)["mode"] == "brute_force"
    small, million, huge = ann.scann_config(ann.EXACT_BELOW), ann.scann_config(1_000_000), ann.scann_config(10**8)
    for config in (small, million, huge):
        assert config["mode"] == "tree_ah"
        assert config["dims_per_block"] == 2
        assert config["num_leaves_to_search"] < config["num_leaves"]
        assert config["reorder"] >= 100
        assert config["training_sample_size"] <= 250_000
    assert small["num_leaves"] == 283 and small["training_sample_size"] == ann.EXACT_BELOW
    # The figures tuned at 1M x 32 (bench/README.md).
    assert (million["num_leaves"], million["num_leaves_to_search"], million["reorder"]) == (2000, 40, 200)
    assert huge["num_leaves"] == 4000
    assert json.loads(json.dumps(million)) == million  # goes into the manifest as is


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(50, DIM))
    return (centers[rng.integers(0, 50, N_ITEMS)] + 0.3 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)


def test_serialize_round_trip_gives_identical_results(embeddings, tmp_path):
    config = ann.scann_config(len(embeddings))
    built = ann.build_searcher(embeddings, config)
    ann.serialize(built, tmp_path / "scann")
    loaded = ann.load_serialized(tmp_path / "scann")
    queries = np.random.default_rng(1).normal(size=(64, DIM)).astype(np.float32)
    rows_a, scores_a = built.search_batched(queries, final_num_neighbors=10, pre_reorder_num_neighbors=config["reorder"])
    rows_b, scores_b = loaded.search_batched(queries, final_num_neighbors=10, pre_reorder_num_neighbors=config["reorder"])
    np.testing.assert_array_equal(rows_a, rows_b)
    np.testing.assert_array_equal(scores_a, scores_b)
    ann.check_matches(loaded, embeddings)


def test_load_serialized_never_unpickles_and_stays_in_its_folder(embeddings, tmp_path):
    folder = tmp_path / "scann"
    ann.serialize(ann.build_searcher(embeddings, ann.scann_config(len(embeddings))), folder)
    # scann_ops_pybind.load_searcher would unpickle this file; ours ignores it.
    (folder / "scann_docids.pkl").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert ann.load_serialized(folder).size() == len(embeddings)
    assets = folder / "scann_assets.pbtxt"
    assets.write_text(assets.read_text().replace('"dataset.npy"', '"../../etc/passwd"'))
    with pytest.raises(bundle.BundleError, match="outside"):
        ann.load_serialized(folder)


def write_bundle(model_base, embeddings, *, with_searcher=True):
    return write_item_bundle(model_base, embeddings=embeddings, with_searcher=with_searcher)


@pytest.fixture(scope="module")
def searcher_bundle(embeddings, tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("ann-models"), embeddings)


def load(path, **kwargs):
    return make_loader(**kwargs)(path, bundle.read_manifest(path))


def forbid_builds(monkeypatch):
    def no_build(*_):
        raise AssertionError("the loader rebuilt the searcher instead of loading the serialized one")

    monkeypatch.setattr(index_module.ann, "build_searcher", no_build)


def test_bundle_records_config_and_hashes_the_searcher(searcher_bundle):
    manifest = bundle.read_manifest(searcher_bundle)
    assert manifest.raw["scann"] == {**ann.scann_config(N_ITEMS), "serialized": "scann"}
    listed = [name for name in manifest.files if name.startswith("scann/")]
    assert "scann/scann_assets.pbtxt" in listed and "scann/hashed_dataset.npy" in listed


def test_loader_uses_the_serialized_searcher(searcher_bundle, embeddings, monkeypatch):
    forbid_builds(monkeypatch)
    index = load(searcher_bundle)
    assert len(index) == N_ITEMS and index.config["mode"] == "tree_ah"
    exact_rows, _ = index.search(embeddings[:20], 10, exact=True)
    rows, _ = index.search(embeddings[:20], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows)])
    assert recall >= 0.9


def test_a_shard_builds_its_own_searcher(searcher_bundle):
    index = load(searcher_bundle, shard_index=0, num_shards=2)
    assert 0 < len(index) < N_ITEMS
    assert index.config == ann.scann_config(len(index))


def test_loader_rejects_a_tampered_searcher(embeddings, tmp_path, monkeypatch):
    path = write_bundle(tmp_path, embeddings)
    hashed = path / "scann" / "hashed_dataset.npy"
    data = bytearray(hashed.read_bytes())
    data[-1] ^= 0xFF
    hashed.write_bytes(bytes(data))
    forbid_builds(monkeypatch)
    with pytest.raises(bundle.BundleError, match="sha256"):
        load(path)


def test_loader_rejects_a_searcher_of_other_embeddings(embeddings, tmp_path):
    # Checksums agree (the manifest was rewritten), but the searcher indexes other vectors.
    path = write_bundle(tmp_path, embeddings)
    other = tmp_path / "other"
    ann.serialize(ann.build_searcher(embeddings[::-1].copy(), ann.scann_config(N_ITEMS)), other)
    manifest = json.loads((path / bundle.MANIFEST).read_text())
    for f in other.iterdir():
        (path / "scann" / f.name).write_bytes(f.read_bytes())
        manifest["files"][f"scann/{f.name}"] = bundle.sha256_file(f)
    (path / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match="does not match"):
        load(path)


def test_small_catalogs_are_exact_and_write_nothing(tmp_path):
    emb = np.random.default_rng(0).normal(size=(500, DIM)).astype(np.float32)
    path = write_bundle(tmp_path, emb)
    assert bundle.read_manifest(path).raw["scann"] == {"mode": "brute_force", "item_count": 500, "serialized": None}
    assert not (path / "scann").exists()
    assert load(path).config["mode"] == "brute_force"


def test_bundle_without_searcher_still_builds(embeddings, tmp_path):
    assert load(write_bundle(tmp_path, embeddings, with_searcher=False)).config["mode"] == "tree_ah"
