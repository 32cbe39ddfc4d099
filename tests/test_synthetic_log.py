"""trainer.synthetic_log: the generated logs parse in every layout, have the asked shape,
heavy tails and a planted taste a low-rank model recovers; no TensorFlow is imported."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.readers import read_folder
from trainer.synthetic_log import (
    GENRES,
    NO_GENRES,
    LogConfig,
    delimited_lines,
    plant,
    sample,
    write_log,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = LogConfig(users=600, items=3000, interactions=60_000, heldout_users=600, seed=3)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """One small log per layout (and Parquet for the generic one), same config."""
    folders = {}
    for layout, file_format in (("ml-25m", "csv"), ("generic", "csv"), ("generic", "parquet"), ("ml-100k", "csv")):
        folder = tmp_path_factory.mktemp(f"{layout}-{file_format}")
        write_log(folder, SMALL, layout, file_format)
        folders[f"{layout}/{file_format}"] = folder
    return folders


def heldout_pairs(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "heldout.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["user_id", "item_id"]
    return [tuple(row) for row in rows[1:]]


@pytest.mark.parametrize("key", ["ml-25m/csv", "generic/csv", "generic/parquet", "ml-100k/csv"])
def test_every_layout_parses_with_the_trainer_readers_and_has_the_asked_shape(logs, key):
    dataset = read_folder(logs[key])
    assert len(dataset.interactions) == SMALL.interactions
    assert len(dataset.items) == SMALL.items  # the whole catalog, touched or not
    assert len(dataset.users) == SMALL.users
    assert len(np.unique(dataset.interactions.users)) == SMALL.users  # every user has interactions
    pairs = dataset.interactions.users.astype(np.int64) * SMALL.items + dataset.interactions.items
    assert len(np.unique(pairs)) == len(pairs), "a user never interacts with the same item twice"
    assert dataset.genre_feature is not None
    item_features = {f.name for f in dataset.items.features}
    assert {"genres", "year"} <= item_features
    user_features = {f.name for f in dataset.users.features}
    assert user_features == (set() if key == "ml-25m/csv" else {"age", "gender", "occupation"} | ({"zip"} if key.startswith("ml-100k") else set()))


def test_ml25m_layout_is_exactly_grouplens_csv(logs):
    folder = logs["ml-25m/csv"]
    assert sorted(p.name for p in folder.iterdir()) == ["heldout.csv", "movies.csv", "ratings.csv", "synthetic.json"]
    lines = (folder / "ratings.csv").read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    rows = np.array([line.split(",") for line in lines[1:]])
    ratings = rows[:, 2]
    assert set(ratings) <= {f"{r / 2:.1f}" for r in range(1, 11)}  # "0.5" .. "5.0", half stars
    users, items = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    order = np.lexsort((items, users))
    assert (order == np.arange(len(order))).all(), "sorted by userId, then movieId, as GroupLens ships it"
    with open(folder / "movies.csv", newline="", encoding="utf-8") as f:
        movies = list(csv.reader(f))
    assert movies[0] == ["movieId", "title", "genres"]
    assert all(title.endswith(")") and title[-6] == "(" and title[-5:-1].isdigit() for _, title, _ in movies[1:])
    raw = (folder / "movies.csv").read_text()
    assert ', The (' in raw and '"' in raw, "titles with commas are quoted"
    genres = {g for _, _, joined in movies[1:] for g in joined.split("|")}
    assert genres <= set(GENRES) | {NO_GENRES}


def test_timestamps_increase_along_each_users_time_order_and_heldout_is_last(logs):
    folder = logs["ml-25m/csv"]
    rows = np.loadtxt(folder / "ratings.csv", delimiter=",", skiprows=1, dtype=np.int64, converters={2: float})
    users, items, stamps = rows[:, 0], rows[:, 1], rows[:, 3]
    order = np.lexsort((stamps, users))
    same_user = users[order][1:] == users[order][:-1]
    assert (np.diff(stamps[order])[same_user] > 0).all(), "no two interactions of a user share a second"
    seen = set(zip(users.tolist(), items.tolist()))
    heldout = heldout_pairs(folder)
    assert len(heldout) == SMALL.heldout_users and len({u for u, _ in heldout}) == len(heldout)
    assert not any((int(u), int(i)) in seen for u, i in heldout), "the held-out item is not in the log"


def test_popularity_and_activity_are_heavy_tailed(logs):
    dataset = read_folder(logs["ml-25m/csv"])
    item_counts = np.sort(np.bincount(dataset.interactions.items, minlength=SMALL.items))[::-1]
    top_percent = item_counts[: SMALL.items // 100].sum() / item_counts.sum()
    assert top_percent > 0.1, f"the top 1% of items get {top_percent:.1%} of interactions"
    assert item_counts[0] > 20 * np.median(item_counts)
    user_counts = np.bincount(dataset.interactions.users)
    assert user_counts.min() >= SMALL.min_per_user
    assert user_counts.max() > 4 * np.median(user_counts)
    assert user_counts.max() <= SMALL.max_items_per_user


def test_a_low_rank_model_recovers_the_planted_taste_better_than_popularity(logs):
    """Truncated SVD of the log (the held-out pairs are not in it) beats popularity on them."""
    folder = logs["generic/csv"]
    dataset = read_folder(folder)
    matrix = np.zeros((len(dataset.users), len(dataset.items)), dtype=np.float32)
    matrix[dataset.interactions.users, dataset.interactions.items] = 1
    user_row = {u: r for r, u in enumerate(dataset.users.ids.tolist())}
    item_row = {i: r for r, i in enumerate(dataset.items.ids.tolist())}
    pairs = heldout_pairs(folder)
    users = np.array([user_row[u] for u, _ in pairs])
    items = np.array([item_row[i] for _, i in pairs])
    left, singular, right = np.linalg.svd(matrix, full_matrices=False)
    rank = SMALL.rank

    def hit_rate(scores: np.ndarray, k: int) -> float:
        scores = np.where(matrix[users] > 0, -np.inf, scores)  # seen excluded
        target = scores[np.arange(len(users)), items][:, None]
        return float(((scores > target).sum(axis=1) < k).mean())

    low_rank = (left[users, :rank] * singular[:rank]) @ right[:rank]
    popularity = np.broadcast_to(matrix.sum(axis=0), low_rank.shape)
    for k in (10, 100):
        assert hit_rate(low_rank, k) > hit_rate(popularity, k) + 0.03, k
    # A control: with the taste scrambled (users' rows shuffled), the low-rank scores lose their edge.
    shuffled = low_rank[np.random.default_rng(0).permutation(len(users))]
    assert hit_rate(shuffled, 10) < hit_rate(popularity, 10)


def test_same_seed_same_log_other_seed_other_log(tmp_path):
    config = dataclasses.replace(SMALL, users=100, interactions=5000)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_log(tmp_path / name, dataclasses.replace(config, seed=seed), "ml-25m")
    read = lambda name: (tmp_path / name / "ratings.csv").read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_sampling_memory_is_chunked_by_interactions():
    world = plant(dataclasses.replace(SMALL, heldout_users=0))
    sizes = [len(chunk.users) for chunk in sample(world, chunk_interactions=5000)]
    assert sum(sizes) == SMALL.interactions
    assert len(sizes) >= SMALL.interactions // 5000 and max(sizes) <= 5000 + SMALL.max_items_per_user


def test_delimited_lines_matches_the_csv_module():
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 10**9, size=500) // 10 ** rng.integers(0, 9, size=500)
    ints[:3] = [0, 9, 10]
    labels = np.array([b"a", b"bc", b"4.5"])[rng.integers(0, 3, size=500)]
    expected = "".join(f"{a},{b}\n" for a, b in zip(ints.tolist(), labels.astype(str).tolist())).encode()
    assert delimited_lines([ints, labels]) == expected


def test_bad_shapes_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match="add items or users"):
        LogConfig(users=10, items=100, interactions=10_000)
    with pytest.raises(ValueError, match="cannot give each of 100 users one"):
        LogConfig(users=100, items=1000, interactions=50)


def test_command_writes_the_asked_shape_without_importing_tensorflow(tmp_path):
    out = tmp_path / "log"
    script = (
        "import sys; from trainer.cli import main; "
        f"code = main(['synthetic-log', '--out', {str(out)!r}, '--users', '200', '--items', '1500', "
        "'--interactions', '9000', '--layout', 'generic', '--seed', '5']); "
        "assert 'tensorflow' not in sys.modules, 'the generator imported TensorFlow'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    dataset = read_folder(out)
    assert (len(dataset.interactions), len(dataset.users), len(dataset.items)) == (9000, 200, 1500)
    assert dataset.users.ids[0].startswith("user-") and dataset.items.ids[0].startswith("item-")


def test_command_rejects_an_impossible_shape_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "synthetic-log", "--out", str(tmp_path / "x"), "--users", "10",
         "--items", "100", "--interactions", "100000"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "add items or users" in result.stderr
    assert not (tmp_path / "x").exists()
