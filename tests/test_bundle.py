"""The bundle format: publishing is atomic and numbered; validation rejects every kind of damage."""

import json
import os

import numpy as np
import pytest

from bundles import write_item_bundle
from serving import bundle


def load_all(bundle_dir):
    manifest = bundle.read_manifest(bundle_dir)
    bundle.verify_files(bundle_dir, manifest)
    return bundle.load_items(bundle_dir, manifest), bundle.load_users(bundle_dir, manifest)


def test_publish_numbers_versions_and_round_trips(tmp_path):
    first = write_item_bundle(tmp_path, n_items=50)
    second = write_item_bundle(tmp_path, n_items=60, seed=1)
    assert (first.name, second.name) == ("1", "2")
    assert sorted(bundle.version_dirs(tmp_path)) == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]
    items, users = load_all(second)
    assert len(items) == 60 and items.embeddings.dtype == np.float32 and items.embeddings.shape == (60, 32)
    assert items.row_of[items.ids[7]] == 7
    seen = users.seen_item_ids(users.ids[0])
    assert len(seen) == 5 and all(s in items.row_of for s in seen)
    manifest = bundle.read_manifest(second)
    assert manifest.version == 2 and set(manifest.files) >= {f"{n}.npy" for n in bundle.ARRAYS}


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with bundle.BundleStaging(tmp_path) as staging:
            staging.save_array("item_ids", np.array(["1"]))
            raise RuntimeError("trainer crashed")
    assert list(tmp_path.iterdir()) == []
    assert bundle.version_dirs(tmp_path) == {}


def test_save_array_rejects_wrong_dtype(tmp_path):
    with bundle.BundleStaging(tmp_path) as staging, pytest.raises(ValueError, match="item_embeddings"):
        staging.save_array("item_embeddings", np.zeros((3, 2), dtype=np.int64))


def test_incomplete_and_foreign_folders_are_not_versions(tmp_path):
    write_item_bundle(tmp_path)
    (tmp_path / "7").mkdir()  # no manifest: still being copied by hand
    (tmp_path / "notes").mkdir()
    (tmp_path / ".staging-abc").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    write_item_bundle(outside)
    os.symlink(outside / "1", tmp_path / "9")  # symlinks out of the model base are never served
    assert sorted(bundle.version_dirs(tmp_path)) == [1]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "item_embeddings.npy").write_bytes((d / "item_embeddings.npy").read_bytes()[:-100]), "sha256"),
        (lambda d: (d / "manifest.json").unlink(), "missing"),
        (lambda d: (d / "item_titles.npy").unlink(), "missing"),
    ],
    ids=["truncated-npy", "no-manifest", "missing-file"],
)
def test_damaged_files_are_rejected(tmp_path, damage, reason):
    bundle_dir = write_item_bundle(tmp_path)
    damage(bundle_dir)
    with pytest.raises(bundle.BundleError, match=reason):
        load_all(bundle_dir)


def _republish_with(tmp_path, name, array):
    """A bundle whose ``name`` array is replaced and re-hashed: passes checksums, fails semantics."""
    bundle_dir = write_item_bundle(tmp_path)
    np.save(bundle_dir / f"{name}.npy", array, allow_pickle=False)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"][f"{name}.npy"] = bundle.sha256_file(bundle_dir / f"{name}.npy")
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    return bundle_dir


def test_nan_row_is_rejected(tmp_path):
    emb = np.ones((200, 32), dtype=np.float32)
    emb[17, 3] = np.nan
    with pytest.raises(bundle.BundleError, match="NaN or Inf.*row 17"):
        load_all(_republish_with(tmp_path, "item_embeddings", emb))


def test_wrong_dimension_is_rejected(tmp_path):
    with pytest.raises(bundle.BundleError, match=r"shape \(200, 16\)"):
        load_all(_republish_with(tmp_path, "item_embeddings", np.ones((200, 16), dtype=np.float32)))


def test_duplicate_item_ids_are_rejected(tmp_path):
    ids = np.array([str(i) for i in range(1, 201)])
    ids[5] = ids[6]
    with pytest.raises(bundle.BundleError, match="duplicate ids"):
        load_all(_republish_with(tmp_path, "item_ids", ids))


def test_pickled_arrays_are_never_loaded(tmp_path):
    objects = np.array([{"evil": 1}] * 200, dtype=object)
    bundle_dir = write_item_bundle(tmp_path)
    np.save(bundle_dir / "item_titles.npy", objects, allow_pickle=True)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["item_titles.npy"] = bundle.sha256_file(bundle_dir / "item_titles.npy")
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match="item_titles"):
        load_all(bundle_dir)


def test_manifest_paths_cannot_escape_the_bundle(tmp_path):
    bundle_dir = write_item_bundle(tmp_path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match="outside the bundle"):
        bundle.verify_files(bundle_dir, bundle.read_manifest(bundle_dir))


def test_shard_assignment_is_stable_and_covers_every_item():
    ids = [str(i) for i in range(1, 2001)]
    shards = [bundle.shard_of(i, 3) for i in ids]
    assert shards == [bundle.shard_of(i, 3) for i in ids]
    counts = np.bincount(shards, minlength=3)
    assert counts.sum() == 2000 and counts.min() > 500  # roughly balanced
