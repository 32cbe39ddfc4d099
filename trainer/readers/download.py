"""Locating MovieLens 100k: a folder named by flag or environment, else the official archive, downloaded once.

The archive is checked against the md5 GroupLens publishes and extracted
atomically into a cache folder; a complete extraction is reused without any
network access. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from trainer.readers.tables import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# The md5 GroupLens publishes beside the archive (ml-100k.zip.md5).
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML100K_FOLDER = "ml-100k"
REQUIRED_FILES = ("u.data", "u.item", "u.user", "u.genre")


def default_cache_dir() -> Path:
    """``$RECSYS_CACHE_DIR``, else ``~/.cache/recsys``."""
    return Path(os.environ.get("RECSYS_CACHE_DIR") or Path.home() / ".cache" / "recsys")


# Environment variables naming the data folder, in order of precedence (after --data-dir).
# ML100K_DIR predates the other layouts and keeps working.
DATA_DIR_VARIABLES = ("DATA_DIR", "ML100K_DIR")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
    """The directory to read: ``data_dir``, else ``$DATA_DIR``, else ``$ML100K_DIR``, else the
    download cache of MovieLens 100k.

    Only the last case touches the network, and only when the cache is empty.
    """
    if data_dir:
        return Path(data_dir)
    for variable in DATA_DIR_VARIABLES:
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return fetch_ml100k(cache_dir or default_cache_dir())


def fetch_ml100k(cache_dir: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Downloads and extracts the archive once; returns the extracted folder.

    ``url`` and ``md5`` default to the official archive (ML100K_URL, ML100K_MD5).
    The archive is checked against ``md5`` before extraction and the extracted
    folder must hold every file in REQUIRED_FILES. A previous complete
    extraction is reused without any network access.
    """
    url, md5 = url or ML100K_URL, md5 or ML100K_MD5
    target = cache_dir / ML100K_FOLDER
    if all((target / name).is_file() for name in REQUIRED_FILES):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / "ml-100k.zip"
    if not archive.is_file() or _md5(archive) != md5:
        _download(url, archive)
    actual = _md5(archive)
    if actual != md5:
        archive.unlink()
        raise DataError(
            f"{url}: downloaded archive has md5 {actual}, expected {md5}; "
            "the download was corrupted or the file changed upstream. Retry, or pass --data-dir"
        )
    _extract(archive, target)
    return target


def _download(url: str, dest: Path) -> None:
    partial = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"{url}: download failed ({exc}); pass --data-dir or set ML100K_DIR to a local copy of ml-100k"
        ) from exc
    partial.replace(dest)


def _extract(archive: Path, target: Path) -> None:
    """Extracts the ml-100k/ folder of ``archive`` into ``target`` atomically."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{archive}: member {bad} fails its CRC check; delete the file and retry")
            names = set(zf.namelist())
            missing = [n for n in REQUIRED_FILES if f"{ML100K_FOLDER}/{n}" not in names]
            if missing:
                raise DataError(f"{archive}: not a MovieLens 100k archive, missing {', '.join(missing)}")
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                zf.extractall(tmp, members=[n for n in names if n.startswith(f"{ML100K_FOLDER}/")])
                shutil.rmtree(target, ignore_errors=True)
                os.rename(Path(tmp) / ML100K_FOLDER, target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a valid zip file ({exc}); delete it and retry") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
