"""Round trip: a bundle trained by ``python -m trainer train`` read back with serving.bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving import bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(trained_model_base: Path) -> tuple[Path, bundle.Manifest]:
    versions = bundle.version_dirs(trained_model_base)
    assert list(versions) == [1]
    manifest = bundle.read_manifest(versions[1])
    return versions[1], manifest


def test_manifest_hashes_verify_and_fields_are_complete(published, small_movielens_dir: Path) -> None:
    bundle_dir, manifest = published
    bundle.verify_files(bundle_dir, manifest)
    assert manifest.embedding_dim == 32 and manifest.item_count == 80
    assert manifest.genres[0] == "unknown" and len(manifest.genres) == 19
    training = manifest.raw["training"]
    assert training["seed"] == 42 and training["test_fraction"] == 0.2 and training["epochs"] == 3
    assert training["data_files"]["interactions"] == str(small_movielens_dir / "u.data")
    assert len(training["data_sha256"]) == 64 and training["train_seconds"] > 0
    phases = training["phase_seconds"]  # where the fit's time went: its three phases, adding up
    assert sorted(phases) == ["known_paths", "new_item_path", "new_user_path"] and min(phases.values()) > 0
    assert abs(sum(phases.values()) - training["train_seconds"]) <= 0.2  # each rounded to 0.1 s
    metrics = manifest.raw["metrics"]
    for protocol in ("all", "seen_excluded"):
        assert 0 <= metrics[f"model/{protocol}/hr@10"] <= 1
        assert 0 <= metrics[f"popularity/{protocol}/hr@10"] <= 1
    for protocol in ("all", "seen_excluded"):  # early-stopping slice, at the kept epoch
        assert 0 <= metrics[f"validation/{protocol}/hr@10"] <= metrics[f"validation/{protocol}/hr@100"] <= 1
    # An 80-item catalog: the exact catalog softmax and the EASE warm start, chosen automatically.
    assert training["negatives"] == "catalog" and training["init"] == "ease" and training["model"]["mask_seen"] is True
    assert training["interactions_per_second"] > 0 and training["peak_rss_bytes"] > 0
    # The kept warm start (best epoch 0) is refitted on all training ratings, a trained epoch is not.
    assert training["refit"] is (training["best_epoch"] == 0 and training["model"]["init"] == "ease")
    assert any(name.startswith("user_tower/") for name in manifest.files)
    assert any(name.startswith("item_tower/") for name in manifest.files)
    assert "evaluation/report.json" in manifest.files
    # An 80-movie catalog is searched exactly; the choice is recorded for the index service.
    assert manifest.raw["scann"]["mode"] == "brute_force" and not manifest.raw["scann"]["serialized"]


def test_arrays_load_with_the_serving_readers(published, small_movielens_dir: Path) -> None:
    bundle_dir, manifest = published
    items = bundle.load_items(bundle_dir, manifest)
    users = bundle.load_users(bundle_dir, manifest)
    assert items.ids.tolist() == [str(i) for i in range(1, 81)]
    assert items.embeddings.shape == (80, 32) and items.embeddings.dtype == np.float32
    assert items.popularity.sum() == pytest.approx(1.0, abs=1e-4)
    assert items.genres.dtype == np.uint32 and (items.genres > 0).all()
    assert users.ids.tolist() == sorted(users.ids.tolist()) and len(users.ids) == manifest.user_count
    # The seen lists are exactly the training split: test pairs never appear in them.
    test_lines = (bundle_dir / "evaluation" / "test_interactions.tsv").read_text().splitlines()
    assert test_lines[0] == "user_id\titem_id" and len(test_lines) > 300
    seen_pairs = {(u, i) for u in users.ids.tolist() for i in users.seen_item_ids(u)}
    test_pairs = {tuple(line.split("\t")) for line in test_lines[1:]}
    total = len((small_movielens_dir / "u.data").read_text().splitlines())
    assert len(seen_pairs) + len(test_pairs) == total
    assert not seen_pairs & test_pairs


def test_user_tower_signature_matches_the_table(published) -> None:
    import tensorflow as tf

    bundle_dir, manifest = published
    users = bundle.load_users(bundle_dir, manifest)
    signature = tf.saved_model.load(str(bundle_dir / bundle.USER_TOWER)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["user_id"]
    ids = tf.constant([users.ids[0], "no-such-user"])
    embedding = signature(user_id=ids)["embedding"]
    assert embedding.dtype == tf.float32 and embedding.shape == (2, manifest.embedding_dim)
    assert np.isfinite(embedding.numpy()).all()
    assert not np.allclose(embedding.numpy()[0], embedding.numpy()[1])  # a known user is not the OOV vector


def test_report_matches_the_manifest(published) -> None:
    bundle_dir, manifest = published
    report = json.loads((bundle_dir / "evaluation" / "report.json").read_text())
    assert report["model"]["seen_excluded"][9] == pytest.approx(manifest.raw["metrics"]["model/seen_excluded/hr@10"])
    assert report["model"]["all"][99] == pytest.approx(manifest.raw["metrics"]["model/all/hr@100"])
    assert (bundle_dir / "evaluation" / "hr_at_k.png").stat().st_size > 1000


def test_item_tower_signature_gives_the_item_embeddings(published) -> None:
    import tensorflow as tf

    bundle_dir, manifest = published
    items = bundle.load_items(bundle_dir, manifest)
    signature = tf.saved_model.load(str(bundle_dir / "item_tower")).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["item_id"]
    out = signature(item_id=tf.constant([*items.ids[:5].tolist(), "no-such-item"]))["embedding"].numpy()
    np.testing.assert_allclose(out[:5], items.embeddings[:5], rtol=1e-6)
    assert np.isfinite(out[5]).all() and not np.allclose(out[5], out[0])
