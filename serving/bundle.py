"""The serving bundle: one definition of the on-disk format, for writer and readers.

A bundle is one model version, a folder ``<model_base>/<version>/`` where
``version`` is a positive integer. The trainer writes it into a hidden staging
folder beside the versions and renames it into place only when complete, so a
reader never sees a half-written version. Layout::

    manifest.json             format, version, dims, counts, metrics, sha256 of every file
    user_tower/               SavedModel; signature "serving_default":
                              user_id: tf.string [batch] -> embedding: tf.float32 [batch, dim]
                              and, for towers with user features, "embed_features"
                              (a new user's raw features; see trainer/export.py)
    item_tower/               SavedModel; "serving_default": item_id -> the catalog vector, and
                              "embed_items": item_id + raw item features -> embedding (the
                              metadata path for ids outside the catalog; manifest "item_tower"
                              lists its inputs; see trainer/export.py)
    item_embeddings.npy       float32 [items, dim], the candidate tower's output
    item_ids.npy              str [items], MovieLens movie ids ("50"), unique
    item_titles.npy           str [items]
    item_genres.npy           uint32 [items], bit g set <=> genre manifest.genres[g]
    item_popularity.npy       float32 [items], share of training interactions
    user_ids.npy              str [users], the users the model was trained on
    seen_indptr.npy           int64 [users + 1] } CSR of each user's training
    seen_items.npy            int32 [nnz]       } interactions (item row numbers)
    user_embeddings.npy       float32 [users, dim]: serving_default's vector of each
                              of user_ids (row-aligned), so that a service without
                              TensorFlow (the index) can look a known user's vector
                              up; optional (bundles written before it lack it)
    evaluation/...            reports and the held-out split (not needed to serve)

Arrays are plain ``.npy`` files of fixed-width dtypes; they are always read with
``allow_pickle=False``. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "recsys-bundle/1"
MANIFEST = "manifest.json"
USER_TOWER = "user_tower"
USER_TOWER_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "embed_features"
ITEM_TOWER = "item_tower"
ITEMS_SIGNATURE = "embed_items"
EVALUATION = "evaluation"

# name -> (dtype kind, ndim). Kind "U" is a fixed-width unicode string.
ARRAYS: dict[str, tuple[str, int]] = {
    "item_embeddings": ("f", 2),
    "item_ids": ("U", 1),
    "item_titles": ("U", 1),
    "item_genres": ("u", 1),
    "item_popularity": ("f", 1),
    "user_ids": ("U", 1),
    "seen_indptr": ("i", 1),
    "seen_items": ("i", 1),
    "user_embeddings": ("f", 2),
}
ITEM_ARRAYS = ("item_embeddings", "item_ids", "item_titles", "item_genres", "item_popularity")
USER_ARRAYS = ("user_ids", "seen_indptr", "seen_items")
# Optional: a bundle without it is served, its known users' vectors come from the query tier only.
USER_VECTORS = "user_embeddings"

_VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")
_STAGING_PREFIX = ".staging-"


class BundleError(Exception):
    """A bundle is missing, incomplete or fails validation. The message says why."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    version: int
    embedding_dim: int
    item_count: int
    user_count: int
    genres: tuple[str, ...]
    files: Mapping[str, str]
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path) -> Manifest:
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            return cls(
                version=int(data["version"]),
                embedding_dim=int(data["embedding_dim"]),
                item_count=int(data["item_count"]),
                user_count=int(data["user_count"]),
                genres=tuple(str(g) for g in data["genres"]),
                files=dict(data["files"]),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: manifest field missing or malformed: {exc!r}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


class BundleStaging:
    """A bundle being written. Fill ``path``, then ``publish()`` renames it into place.

    Usage::

        with BundleStaging(model_base) as staging:
            staging.save_array("item_embeddings", embeddings)
            ...  # tf.saved_model.save(tower, staging.path / USER_TOWER)
            version_dir = staging.publish({"embedding_dim": 32, ...})

    Leaving the block without publishing (e.g. on an exception) deletes the staging folder.
    """

    def __init__(self, model_base: str | os.PathLike[str]):
        self.model_base = Path(model_base)
        self.model_base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.model_base))
        self._published = False

    def __enter__(self) -> BundleStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._published:
            shutil.rmtree(self.path, ignore_errors=True)

    def save_array(self, name: str, array: np.ndarray) -> None:
        kind, ndim = ARRAYS[name]
        array = np.asarray(array)
        if array.dtype.kind != kind or array.ndim != ndim:
            raise ValueError(f"{name}: expected dtype kind {kind!r} with {ndim} dims, got {array.dtype} {array.shape}")
        np.save(self.path / f"{name}.npy", array, allow_pickle=False)

    def publish(self, manifest_fields: Mapping[str, Any]) -> Path:
        """Hashes every file, writes manifest.json and renames into the next version.

        ``manifest_fields`` must hold embedding_dim, item_count, user_count and
        genres; anything else (metrics, training parameters) is kept as given.
        Returns the published version folder.
        """
        files = {
            str(p.relative_to(self.path)): sha256_file(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        for attempt in range(100):
            version = (latest_version_number(self.model_base) or 0) + 1 + attempt
            manifest = {
                "format": FORMAT,
                **manifest_fields,
                "version": version,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files,
            }
            (self.path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_tree(self.path)
            target = self.model_base / str(version)
            try:
                # rename() of a directory onto a missing name is atomic on POSIX;
                # onto an existing one it fails, and we take the next number.
                os.rename(self.path, target)
            except OSError:
                if target.exists():
                    continue
                raise
            self._published = True
            self.path = target
            return target
        raise BundleError(f"could not allocate a version number under {self.model_base}")


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


# --------------------------------------------------------------------------- reading


def version_dirs(model_base: str | os.PathLike[str]) -> dict[int, Path]:
    """Complete-looking version folders (numeric name, manifest present), by number.

    Staging folders and anything else are ignored. A version folder that is a
    symlink, or resolves outside ``model_base``, is ignored too.
    """
    base = Path(model_base)
    if not base.is_dir():
        return {}
    real_base = base.resolve()
    found = {}
    for entry in base.iterdir():
        if not _VERSION_RE.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        if not entry.resolve().is_relative_to(real_base):
            continue
        if (entry / MANIFEST).is_file():
            found[int(entry.name)] = entry
    return found


def latest_version_number(model_base: str | os.PathLike[str]) -> int | None:
    """The highest version number in use, including incomplete folders."""
    base = Path(model_base)
    if not base.is_dir():
        return None
    numbers = [int(p.name) for p in base.iterdir() if _VERSION_RE.match(p.name)]
    return max(numbers, default=None)


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing; the bundle is incomplete") from exc
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    manifest = Manifest.from_json(data, path)
    if str(manifest.version) != bundle_dir.name:
        raise BundleError(f"{path}: says version {manifest.version} but the folder is {bundle_dir.name!r}")
    return manifest


def verify_files(bundle_dir: Path, manifest: Manifest, only: tuple[str, ...] | None = None) -> None:
    """Checks that the files the manifest lists exist inside the bundle with the listed sha256.

    ``only`` restricts the check to files whose path starts with one of the
    given prefixes (a service verifies what it loads).
    """
    real_root = bundle_dir.resolve()
    for rel, expected in manifest.files.items():
        if only is not None and not rel.startswith(only):
            continue
        path = bundle_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.resolve().is_relative_to(real_root):
            raise BundleError(f"{bundle_dir}: manifest lists {rel!r}, which is outside the bundle")
        if path.is_symlink():
            raise BundleError(f"{path}: is a symlink; bundles hold regular files only")
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {str(expected)[:12]}…")


# Read-only string arrays are memory-mapped: a request touches only the rows it
# returns, so a million titles need not be resident.
_MAPPED = ("item_ids", "item_titles", "user_ids")


def load_array(bundle_dir: Path, manifest: Manifest, name: str) -> np.ndarray:
    """Loads one array with its dtype and rank checked. Never unpickles."""
    kind, ndim = ARRAYS[name]
    path = bundle_dir / f"{name}.npy"
    if f"{name}.npy" not in manifest.files:
        raise BundleError(f"{path}: not listed in the manifest")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if name in _MAPPED else None)
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from exc
    if array.dtype.kind != kind or array.ndim != ndim:
        raise BundleError(f"{path}: expected dtype kind {kind!r} with {ndim} dims, got {array.dtype} {array.shape}")
    return array


class IdIndex(Mapping[str, int]):
    """Id -> row over a string array, by binary search of a sorted copy.

    A dict of a million Python strings costs ~160 MB; this costs the sorted
    ids and an int64 permutation. ``rows(ids)`` looks many ids up at once.
    """

    def __init__(self, ids: np.ndarray):
        self._order = np.argsort(ids, kind="stable")
        self._sorted = np.asarray(ids)[self._order]

    def duplicates(self) -> list[str]:
        same = self._sorted[1:] == self._sorted[:-1]
        return self._sorted[1:][same][:3].tolist()

    def rows(self, ids) -> np.ndarray:
        """int64 rows for ``ids`` (a sequence of str), -1 where an id is unknown."""
        if len(ids) == 0 or len(self._sorted) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        wanted = np.asarray(ids, dtype=self._sorted.dtype)
        pos = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        found = self._sorted[pos] == wanted
        # Ids longer than the array's fixed width were truncated by the cast: never a match.
        found &= np.fromiter((len(i) <= self._sorted.dtype.itemsize // 4 for i in ids), dtype=bool, count=len(ids))
        return np.where(found, self._order[pos], -1)

    def __getitem__(self, item_id: str) -> int:
        row = int(self.rows([item_id])[0])
        if row < 0:
            raise KeyError(item_id)
        return row

    def __iter__(self):
        return iter(self._sorted.tolist())

    def __len__(self) -> int:
        return len(self._sorted)


@dataclasses.dataclass(frozen=True)
class ItemTable:
    """The catalog and its candidate-tower embeddings, row-aligned."""

    ids: np.ndarray  # str [n]
    titles: np.ndarray  # str [n]
    genres: np.ndarray  # uint32 [n]
    popularity: np.ndarray  # float32 [n]
    embeddings: np.ndarray  # float32 [n, dim]
    row_of: IdIndex  # item id -> row

    def __len__(self) -> int:
        return len(self.ids)


def load_items(bundle_dir: Path, manifest: Manifest) -> ItemTable:
    """Loads and validates the item arrays: shapes agree, ids unique, embeddings finite."""
    arrays = {name: load_array(bundle_dir, manifest, name) for name in ITEM_ARRAYS}
    n, dim = manifest.item_count, manifest.embedding_dim
    emb = arrays["item_embeddings"]
    if emb.shape != (n, dim):
        raise BundleError(f"{bundle_dir}/item_embeddings.npy: shape {emb.shape}, manifest says ({n}, {dim})")
    if emb.dtype != np.float32:
        raise BundleError(f"{bundle_dir}/item_embeddings.npy: dtype {emb.dtype}, expected float32")
    for name in ITEM_ARRAYS[1:]:
        if arrays[name].shape != (n,):
            raise BundleError(f"{bundle_dir}/{name}.npy: shape {arrays[name].shape}, expected ({n},)")
    bad_rows = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad_rows.size:
        raise BundleError(
            f"{bundle_dir}/item_embeddings.npy: {bad_rows.size} rows hold NaN or Inf (first: row {bad_rows[0]})"
        )
    ids = arrays["item_ids"]
    row_of = IdIndex(ids)
    if duplicates := row_of.duplicates():
        raise BundleError(f"{bundle_dir}/item_ids.npy: duplicate ids, e.g. {duplicates}")
    return ItemTable(
        ids=ids,
        titles=arrays["item_titles"],
        genres=arrays["item_genres"].astype(np.uint32, copy=False),
        popularity=arrays["item_popularity"].astype(np.float32, copy=False),
        embeddings=np.ascontiguousarray(emb),
        row_of=row_of,
    )


@dataclasses.dataclass(frozen=True)
class UserTable:
    """The users the model was trained on and what each one rated in training."""

    ids: np.ndarray  # str [u]
    seen_indptr: np.ndarray  # int64 [u + 1]
    seen_items: np.ndarray  # int32 [nnz], item rows
    item_ids: np.ndarray  # str [n], to turn item rows into ids
    row_of: IdIndex
    vectors: np.ndarray | None = None  # float32 [u, dim], the user tower's vector of each user (None: not in the bundle)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self.row_of

    def seen_item_ids(self, user_id: str) -> list[str]:
        row = self.row_of.get(user_id)
        if row is None:
            return []
        rows = self.seen_items[self.seen_indptr[row] : self.seen_indptr[row + 1]]
        return self.item_ids[rows].tolist()


def load_users(bundle_dir: Path, manifest: Manifest) -> UserTable:
    arrays = {name: load_array(bundle_dir, manifest, name) for name in (*USER_ARRAYS, "item_ids")}
    ids, indptr, seen = arrays["user_ids"], arrays["seen_indptr"], arrays["seen_items"]
    if ids.shape != (manifest.user_count,):
        raise BundleError(f"{bundle_dir}/user_ids.npy: shape {ids.shape}, manifest says ({manifest.user_count},)")
    if indptr.shape != (len(ids) + 1,) or indptr[0] != 0 or indptr[-1] != len(seen) or np.any(np.diff(indptr) < 0):
        raise BundleError(f"{bundle_dir}/seen_indptr.npy: not a valid CSR index for {len(ids)} users")
    if seen.size and (seen.min() < 0 or seen.max() >= manifest.item_count):
        raise BundleError(f"{bundle_dir}/seen_items.npy: item rows out of range 0..{manifest.item_count - 1}")
    row_of = IdIndex(ids)
    if duplicates := row_of.duplicates():
        raise BundleError(f"{bundle_dir}/user_ids.npy: duplicate user ids, e.g. {duplicates}")
    vectors = None
    if f"{USER_VECTORS}.npy" in manifest.files:
        vectors = load_array(bundle_dir, manifest, USER_VECTORS)
        if vectors.shape != (len(ids), manifest.embedding_dim) or vectors.dtype != np.float32:
            raise BundleError(f"{bundle_dir}/{USER_VECTORS}.npy: {vectors.dtype} {vectors.shape}, expected float32 "
                              f"({len(ids)}, {manifest.embedding_dim}): one vector of dimension "
                              f"{manifest.embedding_dim} per user id")
        if not np.isfinite(vectors).all():
            raise BundleError(f"{bundle_dir}/{USER_VECTORS}.npy: holds NaN or Inf")
    return UserTable(ids=ids, seen_indptr=indptr.astype(np.int64), seen_items=seen, item_ids=arrays["item_ids"],
                     row_of=row_of, vectors=vectors)


def validate(bundle_dir: Path, manifest: Manifest) -> tuple[ItemTable, UserTable]:
    """Everything a version must pass before any service serves it: every file's
    checksum, and the item and user arrays' shapes and values.

    Both the query and the index service run this whole check, not only on the
    files each one reads, so the two tiers agree on which versions are valid
    (a version one tier accepted and the other refused could never be served).
    """
    verify_files(bundle_dir, manifest)
    return load_items(bundle_dir, manifest), load_users(bundle_dir, manifest)


def popularity_order(items: ItemTable) -> np.ndarray:
    """Rows most popular first; ties by item id, so every shard split merges to the same order."""
    return np.lexsort((items.ids, -items.popularity))


def shard_of(item_id: str, num_shards: int) -> int:
    """The shard (0-based) that holds ``item_id``: a stable hash, the same in every process."""
    return zlib.crc32(item_id.encode()) % num_shards
