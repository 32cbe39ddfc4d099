"""trainer.readers: every MovieLens release layout and the generic layout, read from small
files written here; bad input; MovieLens 100k checked against its files split by hand. No TensorFlow, no network."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT, Dataset
from trainer.readers import DataError, ReadOptions, add_reader_flags, detect_format, read_dataset, read_folder

SHARED_ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


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


def assert_reads_as_written(directory: Path) -> Dataset:
    """The reader's Dataset against the ml-100k files split by hand, as GroupLens documents them."""

    def rows(name: str, separator: str) -> list[list[str]]:
        lines = (directory / name).read_text(encoding="latin-1").splitlines()
        return [[field.strip() for field in line.split(separator)] for line in lines if line.strip()]

    ratings, items, users = rows("u.data", "\t"), rows("u.item", "|"), rows("u.user", "|")
    dataset = read_folder(directory)
    inter = dataset.interactions
    assert dataset.layout == "ml-100k" and detect_format(directory) == "ml-100k"
    # every rating line is one interaction of weight 1, in file order
    read = zip(dataset.users.ids[inter.users].tolist(), dataset.items.ids[inter.items].tolist(), inter.timestamps.tolist())
    assert list(read) == [(user, item, int(stamp)) for user, item, _, stamp in ratings]
    assert (inter.weights == 1).all()
    assert dataset.users.ids.tolist() == [row[0] for row in users]
    assert dataset.items.ids.tolist() == [row[0] for row in items]
    assert dataset.item_titles.tolist() == [row[1] for row in items]
    assert dataset.genres == tuple(name for name, _ in sorted(rows("u.genre", "|"), key=lambda row: int(row[1])))
    masks = [sum(1 << g for g, flag in enumerate(row[5:]) if flag == "1") for row in items]
    assert dataset.genre_masks().tolist() == masks
    # the year of the release date ("01-Jan-1995"), else of the title ("Toy Story (1995)"), else none
    years = [re.search(r"(\d{4})$", row[2]) or re.search(r"\((\d{4})\)$", row[1]) for row in items]
    expected_years = [int(year.group(1)) if year else 0 for year in years]
    assert np.nan_to_num(dataset.items.feature("year").values, nan=0).astype(int).tolist() == expected_years
    return dataset


def test_small_ml100k_reads_as_written(small_movielens_dir: Path) -> None:
    dataset = assert_reads_as_written(small_movielens_dir)
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
def test_shared_ml100k_reads_as_written() -> None:
    dataset = assert_reads_as_written(SHARED_ML100K)
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
        ("u.user", "61|30|M|writer\n", "expected 5 fields, got 4"),
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
    with pytest.raises(DataError, match=r"1 item id is not in .*u\.item: '99999'.*--allow-unknown-items"):
        read_folder(ml100k_copy)
    dataset = read_folder(ml100k_copy, ReadOptions(allow_unknown_items=True))
    row = dataset.items.ids.tolist().index("99999")
    assert row == len(dataset.items) - 1 and dataset.item_titles[row] == "99999"
    assert value_of(dataset.items, "genres", row) == [] and value_of(dataset.items, "year", row) is None
    assert row in set(dataset.interactions.items.tolist())


def test_an_unknown_user_is_an_error_or_with_the_flag_a_user_without_features(ml100k_copy: Path) -> None:
    with open(ml100k_copy / "u.data", "a") as f:
        f.write("777\t1\t3\t881250949\n")
    with pytest.raises(DataError, match=r"user id is not in .*u\.user: '777'.*--allow-unknown-users"):
        read_folder(ml100k_copy)
    users = read_folder(ml100k_copy, ReadOptions(allow_unknown_users=True)).users
    assert users.ids[-1] == "777" and value_of(users, "gender", len(users) - 1) is None


def test_a_movie_defined_twice_is_an_error(ml100k_copy: Path) -> None:
    first = (ml100k_copy / "u.item").read_text(encoding="latin-1").splitlines()[0]
    with open(ml100k_copy / "u.item", "a", encoding="latin-1") as f:
        f.write(first + "\n")
    with pytest.raises(DataError, match="movie id '1' is defined twice"):
        read_folder(ml100k_copy)


def test_a_missing_file_is_named(ml100k_copy: Path) -> None:
    (ml100k_copy / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file not found"):
        read_folder(ml100k_copy)


def test_a_ratings_file_replaces_u_data(ml100k_copy: Path, tmp_path: Path) -> None:
    ratings = tmp_path / "mine.tsv"
    ratings.write_text("1\t1\t5\t100\n2\t3\t4\t200\n")
    dataset = read_folder(ml100k_copy, ReadOptions(interactions_file=ratings))
    assert dataset_sets(dataset) == {"1": {"1"}, "2": {"3"}} and dataset.interactions.timestamps.tolist() == [100, 200]
    assert dataset.files["interactions"] == ratings
    assert (len(dataset.users), len(dataset.items)) == (60, 80)  # the catalog and the users stay whole


def test_sha256_changes_with_the_ratings(ml100k_copy: Path) -> None:
    before = read_folder(ml100k_copy).sha256
    with open(ml100k_copy / "u.data", "a") as f:
        f.write("1\t1\t5\t881250949\n")
    assert read_folder(ml100k_copy).sha256 != before


def test_missing_folder_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found; pass --data-dir"):
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


# --------------------------------------------------------------------------- ml-1m, ml-10m, csv releases

# (id, title, genres) with the awkward cases: ':' and ',' and quotes in titles, a latin-1 letter,
# a series' year range, no genres, and a movie nobody rated (id 50).
MOVIES = [
    ("1", "Toy Story (1995)", "Animation|Children's|Comedy"),
    ("2", "Star Wars: Episode IV - A New Hope (1977)", "Action|Sci-Fi"),
    ("3", "American President, The (1995)", "Comedy|Drama|Romance"),
    ("4", 'Dr. "Strange" Love: Or How (1964)', "Comedy"),
    ("5", "Misérables, Les (1995)", "Drama"),
    ("6", "Some Series (2006-2007)", "(no genres listed)"),
    ("50", "Nobody Saw This (2001)", "Horror"),
]
# (user, movie, rating, timestamp); user 3 rates movie 2 twice.
RATINGS = [
    ("1", "1", "5", 978300760), ("1", "2", "3", 978302109), ("2", "3", "4", 978301968),
    ("2", "4", "2", 978300275), ("3", "5", "1", 978824291), ("3", "2", "5", 978302268),
    ("3", "2", "4", 978302269), ("4", "6", "3", 978300719),
]  # fmt: skip
# UserID::Gender::Age::Occupation::Zip-code (1M)
USERS_1M = [("1", "F", "1", "10", "48067"), ("2", "M", "56", "16", "70072"), ("3", "M", "25", "15", "55117"),
            ("4", "M", "45", "7", "02460-1234")]  # fmt: skip


def write_dat_release(directory: Path, with_users: bool, half_stars: bool = False) -> Path:
    directory.mkdir(parents=True)
    encoding = "latin-1" if with_users else "utf-8"  # as the 1M and 10M releases are encoded
    (directory / "movies.dat").write_text("".join(f"{m}::{t}::{g}\n" for m, t, g in MOVIES), encoding=encoding)
    rating = (lambda r: f"{int(r) - 0.5}") if half_stars else (lambda r: r)
    (directory / "ratings.dat").write_text("".join(f"{u}::{m}::{rating(r)}::{t}\n" for u, m, r, t in RATINGS))
    if with_users:
        (directory / "users.dat").write_text("".join("::".join(row) + "\n" for row in USERS_1M))
    else:
        (directory / "tags.dat").write_text("1::1::funny::978300760\n")
    return directory


def csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"') else value


def write_csv_release(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{m},{csv_quote(t)},{g}\n" for m, t, g in MOVIES), encoding="utf-8"
    )
    (directory / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{int(r) - 0.5},{t}\n" for u, m, r, t in RATINGS)
    )
    (directory / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")
    return directory


def expected_sets() -> dict[str, set[str]]:
    return user_item_sets(np.array([r[0] for r in RATINGS]), np.array([r[1] for r in RATINGS]))


def assert_movielens_catalog(dataset: Dataset) -> None:
    items = dataset.items
    assert items.ids.tolist() == [m for m, _, _ in MOVIES]
    assert dataset.item_titles.tolist() == [t for _, t, _ in MOVIES]
    assert len(dataset.interactions) == len(RATINGS) and dataset_sets(dataset) == expected_sets()
    assert value_of(items, "genres", 0) == ["Animation", "Children's", "Comedy"]
    assert value_of(items, "genres", 5) == []  # (no genres listed)
    assert value_of(items, "title", 1) == ["star", "wars", "episode", "iv", "a", "new", "hope"]
    assert value_of(items, "title", 4) == ["mis", "rables", "les"]
    assert [value_of(items, "year", r) for r in range(len(MOVIES))] == [1995, 1977, 1995, 1964, 1995, 2006, 2001]
    assert dataset.genres == tuple(sorted({g for _, _, gs in MOVIES for g in gs.split("|")} - {"(no genres listed)"}))
    assert dataset.genre_masks()[6] == 1 << dataset.genres.index("Horror")
    assert 6 not in set(dataset.interactions.items.tolist())  # catalog row without interactions
    np.testing.assert_array_equal(dataset.interactions.timestamps, [t for *_, t in RATINGS])


def test_ml1m_layout(tmp_path: Path) -> None:
    folder = write_dat_release(tmp_path / "ml-1m", with_users=True)
    assert detect_format(folder) == "ml-1m"
    dataset = read_folder(folder)
    assert dataset.layout == "ml-1m" and set(dataset.files) == {"interactions", "items", "users"}
    assert_movielens_catalog(dataset)
    users = dataset.users
    assert users.ids.tolist() == ["1", "2", "3", "4"]
    assert [value_of(users, "age", r) for r in range(4)] == [1.0, 56.0, 25.0, 45.0]
    assert [value_of(users, "occupation", r) for r in range(4)] == [
        "k-12 student", "self-employed", "scientist", "executive/managerial",
    ]  # fmt: skip
    assert [value_of(users, "zip", r) for r in range(4)] == ["48", "70", "55", "02"]
    assert value_of(users, "gender", 0) == "F"


def test_ml10m_layout(tmp_path: Path) -> None:
    folder = write_dat_release(tmp_path / "ml-10M100K", with_users=False, half_stars=True)
    assert detect_format(folder) == "ml-10m"
    dataset = read_folder(folder)
    assert dataset.layout == "ml-10m" and "users" not in dataset.files
    assert_movielens_catalog(dataset)
    assert dataset.users.ids.tolist() == ["1", "2", "3", "4"] and dataset.users.features == ()


@pytest.mark.parametrize("release", ["ml-20m", "ml-25m", "ml-32m", "ml-latest", "ml-latest-small", "my-copy"])
def test_csv_releases(tmp_path: Path, release: str) -> None:
    folder = write_csv_release(tmp_path / release)
    assert detect_format(folder) == "ml-csv"
    dataset = read_folder(folder)
    assert dataset.layout == (release if release.startswith("ml-") else "ml-csv")
    assert_movielens_catalog(dataset)
    assert dataset.users.features == () and (dataset.interactions.weights == 1).all()


def test_double_colon_errors_name_the_line(tmp_path: Path) -> None:
    folder = write_dat_release(tmp_path / "ml-1m", with_users=True)
    ratings = folder / "ratings.dat"
    lines = ratings.read_text().splitlines(keepends=True)
    lines[1:1] = ["1:3::5::978300760\n", "1::3:5:::978300760\n", "1::x::5::978300760\n"]  # lines 2, 3, 4
    ratings.write_text("".join(lines))
    with pytest.raises(DataError) as error:
        read_folder(folder)
    assert f"{ratings}:2: expected 4 fields separated by '::' (6 ':'), found 5 ':' (2 more malformed rows" in str(error.value)
    assert "pass --max-bad-rows 3 (or more) to skip them" in str(error.value)
    (folder / "one.dat").write_text("".join(lines[:1] + lines[2:4]))  # lines 2 and 3 of it are bad
    with pytest.raises(DataError, match=f"{folder / 'one.dat'}:2: a single ':' where '::' separates fields"):
        read_folder(folder, ReadOptions(interactions_file=folder / "one.dat"))
    (folder / "two.dat").write_text("".join(lines[:1] + lines[3:4]))
    with pytest.raises(DataError, match=f"{folder / 'two.dat'}:2: item 'x' is not an integer"):
        read_folder(folder, ReadOptions(interactions_file=folder / "two.dat"))
    dataset = read_folder(folder, ReadOptions(max_bad_rows=3))
    assert dataset.bad_rows == 3 and dataset_sets(dataset) == expected_sets()
    movies = folder / "movies.dat"
    movies.write_text(movies.read_text(encoding="latin-1") + "77::No Genres Field\n", encoding="latin-1")
    with pytest.raises(DataError, match=f"{movies}:8: expected MovieID::Title::Genres"):
        read_folder(folder)  # movies.dat is read first
    with pytest.raises(DataError, match=f"{ratings}:2: .* --max-bad-rows 4 \\(or more\\) to skip them \\(now 3\\)"):
        read_folder(folder, ReadOptions(max_bad_rows=3))
    assert read_folder(folder, ReadOptions(max_bad_rows=4)).bad_rows == 4


def test_csv_release_errors(tmp_path: Path) -> None:
    folder = write_csv_release(tmp_path / "ml-latest-small")
    ratings = folder / "ratings.csv"
    ratings.write_text(ratings.read_text() + "9,1,4.0,abc\n9,999,4.0,978300760\n")
    with pytest.raises(DataError, match=f"{ratings}:10: timestamp 'abc' is not an integer"):
        read_folder(folder)
    with pytest.raises(DataError, match="1 item id is not in .*movies.csv: '999'"):
        read_folder(folder, ReadOptions(max_bad_rows=1))
    dataset = read_folder(folder, ReadOptions(max_bad_rows=1, allow_unknown_items=True))
    assert dataset.items.ids[-1] == "999" and len(dataset.items) == len(MOVIES) + 1
    (folder / "movies.csv").write_text("movieId,name,genres\n1,x,Drama\n")
    with pytest.raises(DataError, match="no column 'title' \\(the file has: movieId, name, genres\\)"):
        read_folder(folder)


# --------------------------------------------------------------------------- generic layout

ITEMS = [  # item_id, title, tags (multi, ';'), brand (categorical), description (text), price (numeric)
    ("sku-001", "Trail Shoe, \"Pro\"", "outdoor;running", "Acme", "Light shoe for trails", "89.5"),
    ("sku-002", "Rain Jacket", "outdoor", "Zenith", "Keeps you dry", ""),
    ("sku-003", "Yoga Mat", "", "Acme", "", "20"),
    ("sku-900", "Never Bought", "indoor", "", "Nobody bought it", "5"),
]
EVENTS = [  # user_id, item_id, timestamp, weight
    ("alice@example.com", "sku-001", "2024-05-01T12:00:00Z", "1"),
    ("alice@example.com", "sku-002", "2024-05-02T08:30:00Z", "2.5"),
    ("bob", "sku-001", "2024-05-03T00:00:00Z", "1"),
    ("bob", "sku-001", "2024-05-04T00:00:00Z", "1"),  # again: a second interaction
    ("u 42", "sku-003", "2024-05-05T00:00:00Z", "0.5"),
]
USERS = [("alice@example.com", "FR", "34"), ("bob", "US", ""), ("u 42", "FR", "51")]
SCHEMA_YAML = """\
items:
  features:
    tags: {kind: multi, separator: ";"}
    brand: categorical
    description: text
    price: numeric
  genre_filter: tags
users:
  features:
    country: categorical
    age: numeric
"""


def write_generic(directory: Path, fmt: str, schema: str = "yaml") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    tables = {
        "interactions": (["user_id", "item_id", "timestamp", "weight", "session"], [(*e, "s1") for e in EVENTS]),
        "items": (["item_id", "title", "tags", "brand", "description", "price", "color"], [(*i, "red") for i in ITEMS]),
        "users": (["user_id", "country", "age"], USERS),
    }
    for stem, (header, rows) in tables.items():
        if fmt == "parquet":
            columns = {name: [row[c] for row in rows] for c, name in enumerate(header)}
            for numeric in ("weight", "price", "age"):
                if numeric in columns:
                    columns[numeric] = [float(v) if v else None for v in columns[numeric]]
            if "timestamp" in columns:
                columns["timestamp"] = pa.array(np.array([t[:-1] for t in columns["timestamp"]], dtype="datetime64[s]"))
            pq.write_table(pa.table(columns), directory / f"{stem}.parquet")
        elif fmt == "tsv":
            text = "\t".join(header) + "\n" + "".join("\t".join(row) + "\n" for row in rows)
            (directory / f"{stem}.tsv").write_text(text)
        else:
            text = ",".join(header) + "\n" + "".join(",".join(csv_quote(v) for v in row) + "\n" for row in rows)
            (directory / f"{stem}.csv").write_text(text)
    if schema == "yaml":
        (directory / "schema.yaml").write_text(SCHEMA_YAML)
    elif schema == "json":
        import yaml

        (directory / "schema.json").write_text(__import__("json").dumps(yaml.safe_load(SCHEMA_YAML)))
    return directory


@pytest.mark.parametrize(("fmt", "schema"), [("csv", "yaml"), ("tsv", "json"), ("parquet", "yaml")])
def test_generic_layout_with_every_feature_kind(tmp_path: Path, fmt: str, schema: str) -> None:
    folder = write_generic(tmp_path / "shop", fmt, schema)
    assert detect_format(folder) == "generic"
    lines: list[str] = []
    parser = argparse.ArgumentParser()
    add_reader_flags(parser)
    dataset = read_dataset(parser.parse_args(["--data-dir", str(folder)]), log=lines.append)
    assert dataset.layout == "generic"
    items, users = dataset.items, dataset.users
    assert items.ids.tolist() == [i[0] for i in ITEMS]  # the catalog's order, unbought items included
    assert dataset.item_titles.tolist() == [i[1] for i in ITEMS]
    assert {f.name: f.kind for f in items.features} == {"tags": MULTI, "brand": CATEGORICAL, "description": TEXT, "price": NUMERIC}
    assert [value_of(items, "tags", r) for r in range(4)] == [["outdoor", "running"], ["outdoor"], [], ["indoor"]]
    assert [value_of(items, "brand", r) for r in range(4)] == ["Acme", "Zenith", "Acme", None]
    assert value_of(items, "description", 0) == ["light", "shoe", "for", "trails"]
    assert [value_of(items, "price", r) for r in range(4)] == [89.5, None, 20.0, 5.0]
    assert dataset.genres == ("indoor", "outdoor", "running")
    assert dataset.genre_masks().tolist() == [0b110, 0b010, 0, 0b001]
    assert users.ids.tolist() == [u[0] for u in USERS]
    assert [value_of(users, "country", r) for r in range(3)] == ["FR", "US", "FR"]
    assert [value_of(users, "age", r) for r in range(3)] == [34.0, None, 51.0]
    assert dataset_sets(dataset) == user_item_sets(np.array([e[0] for e in EVENTS]), np.array([e[1] for e in EVENTS]))
    assert len(dataset.interactions) == len(EVENTS)  # the repeated (bob, sku-001) counts twice
    assert dataset.interactions.weights.tolist() == [1.0, 2.5, 1.0, 1.0, 0.5]
    assert dataset.interactions.timestamps.tolist() == [1714564800, 1714638600, 1714694400, 1714780800, 1714867200]
    assert any("color" in line and "not used" in line for line in lines), lines


def test_generic_log_alone_with_integer_timestamps(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / "interactions.csv").write_text("item_id,user_id,timestamp\nb,z,10\na,z,20\nc,y,5\n")
    dataset = read_folder(folder)
    assert dataset.items.ids.tolist() == ["a", "b", "c"] and dataset.users.ids.tolist() == ["y", "z"]  # sorted
    assert dataset.items.features == () and dataset.genre_feature is None and dataset.genres == ()
    assert dataset.item_titles.tolist() == ["a", "b", "c"]
    assert dataset.interactions.timestamps.tolist() == [10, 20, 5] and (dataset.interactions.weights == 1).all()
    assert dataset_sets(dataset) == {"z": {"a", "b"}, "y": {"c"}}


def test_generic_features_from_flags(tmp_path: Path) -> None:
    folder = write_generic(tmp_path / "shop", "csv", schema="none")
    options = ReadOptions(item_features=("tags=multi:;", "price=numeric"), genre_feature="tags", user_features=("age=numeric",))
    dataset = read_folder(folder, options)
    assert [f.name for f in dataset.items.features] == ["tags", "price"] and dataset.genres == ("indoor", "outdoor", "running")
    assert [f.name for f in dataset.users.features] == ["age"]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("items:\n  features:\n    brand: colour\n", "feature 'brand' has kind 'colour'; kinds are categorical, multi, text, numeric"),
        ("items:\n  features:\n    brand: categorical\n  genre_filter: brand\n", "genre filter 'brand' must be one of the items' multi features"),
        ("items:\n  features:\n    size: numeric\n", "no column 'size'"),
        ("itemz: {}\n", "top-level keys are interactions, items, users"),
        ("items: [\n", "not valid YAML"),
    ],
)
def test_generic_schema_errors(tmp_path: Path, schema: str, expected: str) -> None:
    folder = write_generic(tmp_path / "shop", "csv", schema="none")
    (folder / "schema.yaml").write_text(schema)
    with pytest.raises(DataError, match=re_escape(expected)):
        read_folder(folder)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_generic_bad_rows(tmp_path: Path, fmt: str) -> None:
    folder = write_generic(tmp_path / "shop", fmt)
    log = folder / f"interactions.{fmt}"
    sep = "," if fmt == "csv" else "\t"
    lines = log.read_text().splitlines(keepends=True)
    lines[2:2] = [sep.join(["carol", "sku-001", "yesterday", "1", "s"]) + "\n",  # line 3
                  sep.join(["", "sku-001", "2024-05-01", "1", "s"]) + "\n",  # line 4
                  sep.join(["dave", "sku-002", "2024-05-01", "lots", "s"]) + "\n"]  # line 5
    log.write_text("".join(lines))
    with pytest.raises(DataError, match=re_escape(f"{log}:3: timestamp 'yesterday' is not a time")):
        read_folder(folder)
    with pytest.raises(DataError, match=re_escape(f"{log}:3: ") + ".*--max-bad-rows 3"):
        read_folder(folder, ReadOptions(max_bad_rows=2))
    (folder / "interactions2.csv").write_text(lines[0].replace("\t", ",") + "x,sku-001,1,1,s\ny,sku-001\n")
    with pytest.raises(DataError, match=re_escape(f"{folder / 'interactions2.csv'}:3: expected 5 fields, got 2")):
        read_folder(folder, ReadOptions(interactions_file=folder / "interactions2.csv"))
    (folder / "interactions3.csv").write_text("user_id,item_id,weight\nx,sku-001,lots\n")
    with pytest.raises(DataError, match=re_escape(f"{folder / 'interactions3.csv'}:2: weight 'lots' is not a number")):
        read_folder(folder, ReadOptions(interactions_file=folder / "interactions3.csv"))
    dataset = read_folder(folder, ReadOptions(max_bad_rows=3))
    assert dataset.bad_rows == 3 and len(dataset.interactions) == len(EVENTS)
    assert "carol" not in dataset.users.ids.tolist() and "dave" not in dataset.users.ids.tolist()


def test_generic_unknown_items_and_users(tmp_path: Path) -> None:
    folder = write_generic(tmp_path / "shop", "parquet")
    import pyarrow.parquet as pq

    log = pq.read_table(folder / "interactions.parquet")
    extra = log.slice(0, 1).to_pydict()
    extra.update(item_id=["sku-404"], user_id=["zoe"])
    import pyarrow as pa

    pq.write_table(pa.concat_tables([log, pa.table(extra, schema=log.schema)]), folder / "interactions.parquet")
    with pytest.raises(DataError, match=re_escape("1 user id is not in") + ".*'zoe'.*--allow-unknown-users"):
        read_folder(folder)
    with pytest.raises(DataError, match=re_escape("1 item id is not in") + ".*'sku-404' \\(the first in data row 6\\)"):
        read_folder(folder, ReadOptions(allow_unknown_users=True))
    dataset = read_folder(folder, ReadOptions(allow_unknown_users=True, allow_unknown_items=True))
    assert dataset.items.ids[-1] == "sku-404" and value_of(dataset.items, "tags", len(dataset.items) - 1) == []
    assert dataset.users.ids[-1] == "zoe" and value_of(dataset.users, "country", len(dataset.users) - 1) is None


def test_generic_parquet_null_ids_are_bad_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "p"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": ["a", None, "b"], "item_id": ["x", "y", ""]}), folder / "interactions.parquet")
    with pytest.raises(DataError, match=re_escape(f"{folder / 'interactions.parquet'}:2: no user_id (1 more")):
        read_folder(folder)
    assert len(read_folder(folder, ReadOptions(max_bad_rows=2)).interactions) == 1


def test_the_readme_generic_example_reads(tmp_path: Path) -> None:
    import re
    import subprocess

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "cat > shop/schema.yaml" in b)
    script = "\n".join(line for line in block.splitlines() if not line.startswith("python "))
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True)
    dataset = read_folder(tmp_path / "shop")
    assert dataset.layout == "generic" and len(dataset.interactions) == 4
    assert dataset.items.ids.tolist() == ["sku-001", "sku-002", "sku-003", "sku-004"]
    assert dataset.item_titles[0] == "Trail Shoe, Pro" and dataset.genres == ("indoor", "outdoor", "running")
    assert [f.name for f in dataset.items.features] == ["categories", "brand", "description", "price"]
    assert value_of(dataset.users, "age", 1) is None and value_of(dataset.items, "price", 3) is None


def test_a_spreadsheet_bom_and_gzip_are_read(tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "bom"
    folder.mkdir()
    (folder / "interactions.csv").write_bytes("\ufeffuser_id,item_id\nü,b\n".encode("utf-8"))
    dataset = read_folder(folder)
    assert dataset.users.ids.tolist() == ["ü"] and dataset.items.ids.tolist() == ["b"]
    (folder / "interactions.csv").unlink()
    with gzip.open(folder / "interactions.tsv.gz", "wt") as f:
        f.write('user_id\titem_id\n"u\tx\n')
    assert read_folder(folder).users.ids.tolist() == ['"u']  # .tsv: no quoting


def test_parquet_integer_and_dictionary_ids(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "p"
    folder.mkdir()
    log = pa.table({"user_id": pa.array([30, 4, 30], pa.int64()),
                    "item_id": pa.array(["b", "a", " "]).dictionary_encode(),
                    "timestamp": pa.array([5, 6, 7], pa.int32())})  # fmt: skip
    pq.write_table(log, folder / "interactions.parquet")
    with pytest.raises(DataError, match=re_escape(f"{folder / 'interactions.parquet'}:3: no item_id")):
        read_folder(folder)
    dataset = read_folder(folder, ReadOptions(max_bad_rows=1))
    assert dataset.users.ids.tolist() == ["4", "30"] and dataset.items.ids.tolist() == ["a", "b"]
    assert dataset_sets(dataset) == {"30": {"b"}, "4": {"a"}} and dataset.interactions.timestamps.tolist() == [5, 6]


def test_many_unknown_items_are_counted_and_the_first_named(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id\nknown\n")
    rows = "".join(f"u,missing-{i}\n" for i in range(7))
    (folder / "interactions.csv").write_text("user_id,item_id\nu,known\n" + rows)
    with pytest.raises(DataError, match="7 item ids are not in .*items.csv: 'missing-0', .* and 2 more"):
        read_folder(folder)
    dataset = read_folder(folder, ReadOptions(allow_unknown_items=True))
    assert len(dataset.items) == 8 and dataset.items.ids[0] == "known" and len(dataset.interactions) == 8


def test_read_dataset_reports_what_it_skipped(ml100k_copy: Path) -> None:
    path = ml100k_copy / "u.data"
    lines = path.read_text().splitlines(keepends=True)
    lines[3:3] = ["1\t2\n", "1\t2\tx\t4\n"]  # lines 4 and 5
    path.write_text("".join(lines))
    parser = argparse.ArgumentParser()
    add_reader_flags(parser)
    printed: list[str] = []
    dataset = read_dataset(parser.parse_args(["--data-dir", str(ml100k_copy), "--max-bad-rows", "2"]), log=printed.append)
    assert dataset.bad_rows == 2
    assert "skipped 2 malformed rows (--max-bad-rows 2), first:" in printed
    assert f"  {path}:4: expected 4 fields, got 2" in printed and f"  {path}:5: rating 'x' is not an integer" in printed
