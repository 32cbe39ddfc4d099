"""trainer.data: parsing, error reporting, download cache, splitting. No TensorFlow, no network."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer import data
from trainer.data import DataError
from trainer.readers import download


@pytest.fixture
def dataset_copy(small_movielens_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ml"
    shutil.copytree(small_movielens_dir, target)
    return target


def test_loads_the_small_dataset(small_movielens_dir: Path) -> None:
    ml = data.load_movielens(small_movielens_dir)
    assert len(ml.items) == 80 and len(ml.users) == 60
    assert 1500 <= len(ml.ratings) <= 2100
    assert ml.genres[0] == "unknown" and len(ml.genres) == 19
    assert ml.items.ids[0] == "1" and ml.items.titles.dtype.kind == "U"
    assert ml.items.genres.dtype == np.uint32 and (ml.items.genres > 0).all()
    assert (ml.items.years >= 1930).all()
    assert set(ml.ratings.users.tolist()) <= set(ml.users.ids.tolist())
    assert len(ml.sha256) == 64


def test_reads_latin1_titles_and_missing_release_dates(dataset_copy: Path) -> None:
    flags = "|".join(["1"] + ["0"] * 18)
    with open(dataset_copy / "u.item", "a", encoding="latin-1") as f:
        f.write(f"999|Café Society (1995)|||http://x|{flags}\n")
        f.write(f"1000|unknown||||{flags}\n")
    items = data.load_movielens(dataset_copy).items
    assert items.titles[-2] == "Café Society (1995)"
    assert items.years[-2] == 1995  # from the title when the release date is empty
    assert items.years[-1] == 0
    assert items.genres[-1] == 1


def test_sha256_changes_with_the_ratings(dataset_copy: Path) -> None:
    before = data.load_movielens(dataset_copy).sha256
    with open(dataset_copy / "u.data", "a") as f:
        f.write("1\t1\t5\t881250949\n")
    assert data.load_movielens(dataset_copy).sha256 != before


@pytest.mark.parametrize(
    ("file", "line", "expected"),
    [
        ("u.data", "1\t2\t3\n", "expected 4 fields"),
        ("u.data", "1\t2\tfive\t881250949\n", "must be integers"),
        ("u.data", "1\t99999\t3\t881250949\n", "movie '99999' is not in u.item"),
        ("u.data", "777\t1\t3\t881250949\n", "user '777' is not in u.user"),
        ("u.user", "61|abc|M|writer|12345\n", "age 'abc'"),
        ("u.user", "61|30|M|writer\n", "expected 5"),
        ("u.item", "81|Too short|01-Jan-1995\n", "expected 24"),
        ("u.item", "1|Duplicate (1995)|01-Jan-1995||url|" + "|".join(["0"] * 19) + "\n", "already defined on line 1"),
    ],
)
def test_malformed_line_is_reported_with_file_and_line(dataset_copy: Path, file: str, line: str, expected: str) -> None:
    path = dataset_copy / file
    line_count = len(path.read_text(encoding="latin-1").splitlines())
    with open(path, "a", encoding="latin-1") as f:
        f.write(line)
    with pytest.raises(DataError) as info:
        data.load_movielens(dataset_copy)
    assert f"{path}:{line_count + 1}:" in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_named(dataset_copy: Path) -> None:
    (dataset_copy / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file not found"):
        data.load_movielens(dataset_copy)


def test_missing_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        data.load_movielens(tmp_path / "nowhere")


def test_custom_ratings_file_replaces_u_data(small_movielens_dir: Path, tmp_path: Path) -> None:
    ratings = tmp_path / "mine.tsv"
    ratings.write_text("1\t1\t5\t100\n2\t3\t4\t200\n")
    ml = data.load_movielens(small_movielens_dir, ratings)
    assert ml.ratings.users.tolist() == ["1", "2"] and ml.ratings.items.tolist() == ["1", "3"]
    assert ml.files["ratings"] == ratings


def test_split_is_seeded_and_disjoint() -> None:
    kept, held = data.split_rows(1000, 0.2, seed=42)
    assert len(kept) == 800 and len(held) == 200
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(1000))
    again_kept, again_held = data.split_rows(1000, 0.2, seed=42)
    assert (kept == again_kept).all() and (held == again_held).all()
    assert not (data.split_rows(1000, 0.2, seed=7)[1] == held).all()
    assert len(data.split_rows(10, 0.0, seed=1)[1]) == 0


# --------------------------------------------------------------------------- download cache


def _make_archive(path: Path, files: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"ml-100k/{name}", text)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(small_movielens_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "upstream" / "ml-100k.zip"
    path.parent.mkdir()
    files = {n: (small_movielens_dir / n).read_text(encoding="latin-1") for n in data.REQUIRED_FILES}
    return path, _make_archive(path, files)


def test_fetch_downloads_verifies_extracts_and_reuses(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, md5 = archive
    cache = tmp_path / "cache"
    folder = data.fetch_ml100k(cache, url=path.as_uri(), md5=md5)
    assert folder == cache / "ml-100k"
    assert len(data.load_movielens(folder).items) == 80
    # A second call must not download: the URL is now unreachable.
    assert data.fetch_ml100k(cache, url="file:///nonexistent/ml-100k.zip", md5=md5) == folder


def test_fetch_rejects_a_checksum_mismatch(archive: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = archive
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5"):
        data.fetch_ml100k(cache, url=path.as_uri(), md5="0" * 32)
    assert not (cache / "ml-100k.zip").exists() and not (cache / "ml-100k").exists()


def test_fetch_rejects_an_archive_without_movielens_files(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    md5 = _make_archive(path, {"u.data": "1\t1\t1\t1\n"})
    with pytest.raises(DataError, match="missing u.item"):
        data.fetch_ml100k(tmp_path / "cache", url=path.as_uri(), md5=md5)


def test_fetch_reports_an_unreachable_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed.*--data-dir"):
        data.fetch_ml100k(tmp_path / "cache", url=(tmp_path / "missing.zip").as_uri())


def test_official_archive_checksum_is_pinned() -> None:
    assert data.ML100K_MD5 == "0e33842e24a9c977be4e0107933c0723"
    assert data.ML100K_URL == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


def test_data_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archive: tuple[Path, str]) -> None:
    monkeypatch.setenv("ML100K_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "from-data-dir"))
    assert data.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert data.resolve_data_dir(None) == tmp_path / "from-data-dir"
    monkeypatch.delenv("DATA_DIR")
    assert data.resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("ML100K_DIR")
    path, md5 = archive
    monkeypatch.setattr(download, "ML100K_URL", path.as_uri())
    monkeypatch.setattr(download, "ML100K_MD5", md5)
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(tmp_path / "cache"))
    assert data.resolve_data_dir(None) == tmp_path / "cache" / "ml-100k"
