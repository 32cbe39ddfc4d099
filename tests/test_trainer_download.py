"""trainer.readers.download: which folder is read, and the MovieLens 100k download cache. No network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from trainer.readers import DataError, download, read_folder


def _make_archive(path: Path, files: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"ml-100k/{name}", text)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(small_movielens_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "upstream" / "ml-100k.zip"
    path.parent.mkdir()
    files = {n: (small_movielens_dir / n).read_text(encoding="latin-1") for n in download.REQUIRED_FILES}
    return path, _make_archive(path, files)


def test_fetch_downloads_verifies_extracts_and_reuses(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, md5 = archive
    cache = tmp_path / "cache"
    folder = download.fetch_ml100k(cache, url=path.as_uri(), md5=md5)
    assert folder == cache / "ml-100k"
    assert len(read_folder(folder).items) == 80
    # A second call must not download: the URL is now unreachable.
    assert download.fetch_ml100k(cache, url="file:///nonexistent/ml-100k.zip", md5=md5) == folder


def test_fetch_rejects_a_checksum_mismatch(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = archive
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5"):
        download.fetch_ml100k(cache, url=path.as_uri(), md5="0" * 32)
    assert not (cache / "ml-100k.zip").exists() and not (cache / "ml-100k").exists()


def test_fetch_rejects_an_archive_without_movielens_files(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    md5 = _make_archive(path, {"u.data": "1\t1\t1\t1\n"})
    with pytest.raises(DataError, match="missing u.item"):
        download.fetch_ml100k(tmp_path / "cache", url=path.as_uri(), md5=md5)


def test_fetch_reports_an_unreachable_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed.*--data-dir"):
        download.fetch_ml100k(tmp_path / "cache", url=(tmp_path / "missing.zip").as_uri())


def test_official_archive_checksum_is_pinned() -> None:
    assert download.ML100K_MD5 == "0e33842e24a9c977be4e0107933c0723"
    assert download.ML100K_URL == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


def test_data_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archive: tuple[Path, str]) -> None:
    monkeypatch.setenv("ML100K_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "from-data-dir"))
    assert download.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert download.resolve_data_dir(None) == tmp_path / "from-data-dir"
    monkeypatch.delenv("DATA_DIR")
    assert download.resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("ML100K_DIR")
    path, md5 = archive
    monkeypatch.setattr(download, "ML100K_URL", path.as_uri())
    monkeypatch.setattr(download, "ML100K_MD5", md5)
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(tmp_path / "cache"))
    assert download.resolve_data_dir(None) == tmp_path / "cache" / "ml-100k"
