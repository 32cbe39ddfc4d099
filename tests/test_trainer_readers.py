"""trainer.readers: every MovieLens release layout and the generic layout, read from small
files written here; bad input; parity with trainer.data on MovieLens 100k. No TensorFlow, no network."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer import data
from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT, Dataset
from trainer.readers import DataError, ReadOptions, add_reader_flags, detect_format, read_dataset, read_folder

SHARED_ML100K = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "ml-100k"


def user_item_sets(users: np.ndarray, items: np.ndarray) -> dict[str, set[str]]:
    sets: dict[str, set[str]] = {}
    for user, item in zip(users.tolist(), items.tolist()):
        sets.setdefault(user, set()).add(item)
    return sets


def dataset_sets(dataset: Dataset) -> dict[str, set[str]]:
    return user_item_sets(
        dataset.users.ids[dataset.interactions.users], dataset.items.ids[dataset.interactions.items]
    )


def lists_of(dataset_table, name: str) -> list[list[str]]:
    """A multi/text feature as lists of values, row by row."""
    feature = dataset_table.feature(name)
    splits, values = feature.lists.splits, feature.lists.values
    return [feature.vocab[values[splits[r] : splits[r + 1]] - 1].tolist() for r in range(feature.lists.rows)]


def value_of(table, name: str, row: int):
    feature = table.feature(name)
    if feature.kind == CATEGORICAL:
        code = int(feature.codes[row])
        return feature.vocab[code - 1] if code else None
    if feature.kind == NUMERIC:
        return None if np.isnan(feature.values[row]) else float(feature.values[row])
    splits = feature.lists.splits
    return feature.vocab[feature.lists.values[splits[row] : splits[row + 1]] - 1].tolist()


@pytest.fixture
def ml100k_copy(small_movielens_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ml-100k"
    shutil.copytree(small_movielens_dir, target)
    return target


# --------------------------------------------------------------------------- ml-100k


def assert_same_as_trainer_data(directory: Path) -> Dataset:
    dataset = read_folder(directory)
    movielens = data.load_movielens(directory)
    assert dataset.layout == "ml-100k" and detect_format(directory) == "ml-100k"
    assert len(dataset.interactions) == len(movielens.ratings)
    assert dataset.users.ids.tolist() == movielens.users.ids.tolist()
    assert dataset.items.ids.tolist() == movielens.items.ids.tolist()
    assert dataset_sets(dataset) == user_item_sets(movielens.ratings.users, movielens.ratings.items)
    np.testing.assert_array_equal(dataset.interactions.timestamps, movielens.ratings.timestamps)
    np.testing.assert_array_equal(dataset.genre_masks(), movielens.items.genres)
    assert dataset.genres == movielens.genres
    assert dataset.item_titles.tolist() == movielens.items.titles.tolist()
    years = np.nan_to_num(dataset.items.feature("year").values, nan=0).astype(np.int32)
    np.testing.assert_array_equal(years, movielens.items.years)
    assert (dataset.interactions.weights == 1).all()
    return dataset


def test_small_ml100k_reads_as_trainer_data_does(small_movielens_dir: Path) -> None:
    dataset = assert_same_as_trainer_data(small_movielens_dir)
    assert {f.name: f.kind for f in dataset.items.features} == {"genres": MULTI, "year": NUMERIC, "title": TEXT}
    assert {f.name: f.kind for f in dataset.users.features} == {
        "age": NUMERIC, "gender": CATEGORICAL, "occupation": CATEGORICAL, "zip": CATEGORICAL,
    }  # fmt: skip
    assert set(dataset.users.feature("gender").vocab.tolist()) == {"F", "M"}
    assert all(len(z) == 2 for z in dataset.users.feature("zip").vocab.tolist())
    # the title words without the year: "Night Love 1 (1950)" -> night, love, 1
    assert "(" not in " ".join(dataset.items.feature("title").vocab.tolist())
    assert len(dataset.sha256) == 64 and dataset.bad_rows == 0


@pytest.mark.skipif(not (SHARED_ML100K / "u.data").is_file(), reason=f"the shared MovieLens 100k is not at {SHARED_ML100K}")
def test_shared_ml100k_gives_the_same_interactions_as_trainer_data() -> None:
    dataset = assert_same_as_trainer_data(SHARED_ML100K)
    assert (len(dataset.interactions), len(dataset.users), len(dataset.items)) == (100_000, 943, 1682)


def test_ml100k_latin1_titles_and_years_from_the_title(ml100k_copy: Path) -> None:
    flags = "|".join(["1"] + ["0"] * 18)
    with open(ml100k_copy / "u.item", "a", encoding="latin-1") as f:
        f.write(f"999|Café Society (1995)|||http://x|{flags}\n")
        f.write(f"1000|unknown||||{flags}\n")
    items = read_folder(ml100k_copy).items
    assert items.ids[-2] == "999" and value_of(items, "year", len(items) - 2) == 1995.0
    assert value_of(items, "title", len(items) - 2) == ["caf", "society"]  # 'é' separates, as before
    assert value_of(items, "year", len(items) - 1) is None
    assert value_of(items, "genres", len(items) - 1) == ["unknown"]


def test_catalog_items_without_interactions_stay_rows(ml100k_copy: Path) -> None:
    flags = "|".join(["0", "1"] + ["0"] * 17)
    with open(ml100k_copy / "u.item", "a", encoding="latin-1") as f:
        f.write(f"5000|Never Rated (1990)|01-Jan-1990||http://x|{flags}\n")
    dataset = read_folder(ml100k_copy)
    row = dataset.items.ids.tolist().index("5000")
    assert row not in set(dataset.interactions.items.tolist())
    assert value_of(dataset.items, "genres", row) == ["Action"] and dataset.item_titles[row] == "Never Rated (1990)"


def test_duplicate_pairs_are_each_an_interaction(ml100k_copy: Path) -> None:
    before = read_folder(ml100k_copy)
    first = (ml100k_copy / "u.data").read_text().splitlines()[0]
    with open(ml100k_copy / "u.data", "a") as f:
        f.write(first + "\n" + first + "\n")
    after = read_folder(ml100k_copy)
    assert len(after.interactions) == len(before.interactions) + 2
    assert dataset_sets(after) == dataset_sets(before)


@pytest.mark.parametrize(
    ("file", "line", "expected"),
    [
        ("u.data", "1\t2\t3\n", "expected 4 fields, got 3"),
        ("u.data", "1\t2\tfive\t881250949\n", "rating 'five' is not an integer"),
        ("u.data", "1\t2\t3\t\n", "no timestamp"),
        ("u.user", "61|x|M|writer|12345\n", "age 'x' is not an integer"),
        ("u.item", "81|A (1990)|01-Jan-1990|\n", "expected 24 fields, got 4"),
    ],
)
def test_a_malformed_row_names_file_line_and_reason(ml100k_copy: Path, file: str, line: str, expected: str) -> None:
    path = ml100k_copy / file
    lines = path.read_text(encoding="latin-1").splitlines(keepends=True)
    lines.insert(2, line)  # becomes line 3
    path.write_text("".join(lines), encoding="latin-1")
    with pytest.raises(DataError, match="--max-bad-rows") as error:
        read_folder(ml100k_copy)
    assert f"{path}:3: {expected}" in str(error.value)


def test_max_bad_rows_skips_and_counts_them(ml100k_copy: Path) -> None:
    before = read_folder(ml100k_copy)
    path = ml100k_copy / "u.data"
    lines = path.read_text().splitlines(keepends=True)
    lines[5:5] = ["1\t2\n", "x\t2\t3\t4\n", "\n"]  # two bad rows and a blank line (not a row)
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=f"{path}:6: expected 4 fields, got 2 \\(1 more malformed rows"):
        read_folder(ml100k_copy, ReadOptions(max_bad_rows=1))
    dataset = read_folder(ml100k_copy, ReadOptions(max_bad_rows=2))
    assert dataset.bad_rows == 2
    assert dataset_sets(dataset) == dataset_sets(before)


def test_an_unknown_item_is_an_error_or_with_the_flag_an_item_without_features(ml100k_copy: Path) -> None:
    with open(ml100k_copy / "u.data", "a") as f:
        f.write("1\t99999\t3\t881250949\n")
    with pytest.raises(DataError, match=r"1 item ids are not in .*u\.item: '99999'.*--allow-unknown-items"):
        read_folder(ml100k_copy)
    dataset = read_folder(ml100k_copy, ReadOptions(allow_unknown_items=True))
    row = dataset.items.ids.tolist().index("99999")
    assert row == len(dataset.items) - 1 and dataset.item_titles[row] == "99999"
    assert value_of(dataset.items, "genres", row) == [] and value_of(dataset.items, "year", row) is None
    assert row in set(dataset.interactions.items.tolist())


def test_an_unknown_user_is_an_error_or_with_the_flag_a_user_without_features(ml100k_copy: Path) -> None:
    with open(ml100k_copy / "u.data", "a") as f:
        f.write("777\t1\t3\t881250949\n")
    with pytest.raises(DataError, match=r"user ids are not in .*u\.user: '777'.*--allow-unknown-users"):
        read_folder(ml100k_copy)
    users = read_folder(ml100k_copy, ReadOptions(allow_unknown_users=True)).users
    assert users.ids[-1] == "777" and value_of(users, "gender", len(users) - 1) is None


def test_a_movie_defined_twice_is_an_error(ml100k_copy: Path) -> None:
    first = (ml100k_copy / "u.item").read_text(encoding="latin-1").splitlines()[0]
    with open(ml100k_copy / "u.item", "a", encoding="latin-1") as f:
        f.write(first + "\n")
    with pytest.raises(DataError, match="movie id '1' is defined twice"):
        read_folder(ml100k_copy)


def test_missing_folder_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        read_folder(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DataError, match="no known data layout .*notes.txt"):
        read_folder(tmp_path)


def test_flags_and_environment(small_movielens_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_reader_flags(parser)
    lines: list[str] = []
    monkeypatch.setenv("DATA_DIR", str(small_movielens_dir))
    dataset = read_dataset(parser.parse_args([]), log=lines.append)
    assert dataset.layout == "ml-100k" and lines[0] == f"data: {small_movielens_dir}"
    assert "ml-100k: " in lines[1] and "interactions" in lines[1]
    monkeypatch.delenv("DATA_DIR")
    monkeypatch.setenv("ML100K_DIR", str(small_movielens_dir))
    assert len(read_dataset(parser.parse_args([]), log=lines.append).interactions) == len(dataset.interactions)
