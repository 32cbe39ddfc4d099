"""``trainer.tune`` and ``python -m trainer tune``: K-fold cross-validation of the warm start.

The cross-validated hit counts are checked against a brute-force ranking
written out here (EASE's closed form, the SVD and a per-pair rank count), on
the generated MovieLens-layout dataset of the conftest fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer import cli
from trainer.config import TrainConfig
from trainer.dataset import Interactions
from trainer.readers import read_folder
from trainer.split import split_interactions
from trainer.tune import Cell, cross_validate, fold_rows
from trainer.warm_start import temporal_gram

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("n", "folds"), [(10, 2), (101, 10), (7, 7)])
def test_folds_partition_the_rows(n: int, folds: int) -> None:
    parts = fold_rows(n, folds, seed=3)
    assert len(parts) == folds
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, fold_rows(n, folds, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, fold_rows(n, folds, seed=4)))


def test_fold_rows_rejects_impossible_splits() -> None:
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_rows(10, 1, seed=0)
    with pytest.raises(ValueError, match="cannot be split"):
        fold_rows(3, 4, seed=0)


def _brute_force_hits(
    train: Interactions, user_count: int, item_count: int, held_rows, fit_rows, tau: float, lam: float, rank: int
) -> dict[str, dict[int, int]]:
    """Each held-out pair's rank counted one by one (ties: the lower catalog row first)."""
    fit, held = train.take(fit_rows), train.take(held_rows)
    x = np.zeros((user_count, item_count))
    x[fit.users, fit.items] = 1.0
    gram = temporal_gram(fit.users, fit.items, fit.timestamps, item_count, tau) if tau > 0 else x.T @ x
    p = np.linalg.inv(gram + lam * np.eye(item_count))
    b = np.eye(item_count) - p / np.diag(p)[None, :]
    u, s, vt = np.linalg.svd(b)
    scores = x @ (u[:, :rank] * s[:rank]) @ vt[:rank]
    hits = {"seen_excluded": {10: 0, 100: 0}, "all": {10: 0, 100: 0}}
    for row, col in zip(held.users.tolist(), held.items.tolist()):
        s_u = scores[row].astype(np.float32)  # the tuner ranks float32 vectors
        for protocol in hits:
            allowed = ~x[row].astype(bool) if protocol == "seen_excluded" else np.ones(item_count, bool)
            if not allowed[col]:
                continue
            above = allowed & ((s_u > s_u[col]) | ((s_u == s_u[col]) & (np.arange(item_count) < col)))
            for k in hits[protocol]:
                hits[protocol][k] += int(above.sum() < k)
    return hits


def test_cross_validation_matches_a_brute_force_ranking(small_movielens_dir: Path) -> None:
    ds = read_folder(small_movielens_dir)
    split = split_interactions(len(ds.interactions), TrainConfig(test_fraction=0.2, seed=5))
    lines: list[str] = []
    report = cross_validate(ds, split.train, taus=(0, 8), lams=(20, 50), rank=8, folds=3, seed=1, progress=lines.append)
    assert len(lines) == 3 and lines[-1].startswith("fold 3/3")
    assert report["pairs"] == len(split.train)  # every training rating held out once, no test rating
    assert len(report["cells"]) == 4

    train = ds.interactions.take(split.train)
    parts = fold_rows(len(train), 3, seed=1)
    for row in report["cells"]:
        expected = {"seen_excluded": {10: 0, 100: 0}, "all": {10: 0, 100: 0}}
        for f, held_rows in enumerate(parts):
            fit_rows = np.concatenate([p for g, p in enumerate(parts) if g != f])
            fold = _brute_force_hits(train, len(ds.users), len(ds.items), held_rows, fit_rows, row["tau"], row["lambda"], 8)
            for protocol in expected:
                for k in expected[protocol]:
                    expected[protocol][k] += fold[protocol][k]
        for protocol in expected:
            for k in (10, 100):
                assert row[f"{protocol}/hr@{k}"] == pytest.approx(expected[protocol][k] / len(split.train), abs=1e-6), (
                    row,
                    protocol,
                    k,
                )


def test_report_is_sorted_and_names_the_best_cell(small_movielens_dir: Path) -> None:
    ds = read_folder(small_movielens_dir)
    train_rows = split_interactions(len(ds.interactions), TrainConfig()).train
    report = cross_validate(ds, train_rows, taus=(0, 5, 20), lams=(10, 100), rank=8, folds=4, seed=0, progress=lambda _: None)
    scores = [row["selection"] for row in report["cells"]]
    assert scores == sorted(scores, reverse=True)
    best = report["cells"][0]
    assert (best["tau"], best["lambda"]) == (report["best"]["tau"], report["best"]["lambda"])
    assert report["best"]["flags"] == Cell(best["tau"], best["lambda"]).flags
    assert best["vs_best"] == 0.0 and all(row["vs_best"] <= 1e-9 for row in report["cells"])
    for row in report["cells"]:
        assert row["selection"] == pytest.approx(row["seen_excluded/hr@10"] + row["seen_excluded/hr@100"] / 4, abs=2e-6)

    # Popularity, all ranked: a held-out pair is a hit when its movie is among the fit part's K most rated.
    train = ds.interactions.take(train_rows)
    parts = fold_rows(len(train), 4, seed=0)
    hits = 0
    for f, held_rows in enumerate(parts):
        fit = train.take(np.concatenate([p for g, p in enumerate(parts) if g != f]))
        counts = np.bincount(fit.items, minlength=len(ds.items))
        top10 = set(np.argsort(-counts, kind="stable")[:10].tolist())
        hits += sum(item in top10 for item in train.take(held_rows).items.tolist())
    assert report["popularity"]["all/hr@10"] == pytest.approx(hits / len(train), abs=1e-6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--ease-lambda", "0,10"], "--ease-lambda values must be positive"),
        (["--ease-tau", "-1"], "--ease-tau values must be 0 or more"),
        (["--test-fraction", "1"], "--test-fraction must be in [0, 1)"),
    ],
)
def test_tune_rejects_bad_values(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tune", "--data-dir", str(tmp_path), *flags]) == cli.EXIT_INPUT_ERROR
    assert message in capsys.readouterr().err


def test_tune_rejects_a_malformed_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "--ease-tau", "20,x"])
    assert exit_info.value.code == 2
    assert "expected comma-separated numbers, got '20,x'" in capsys.readouterr().err


def test_tune_command_writes_json_without_tensorflow(small_movielens_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    script = (
        "import sys\n"
        "from trainer import cli\n"
        f"code = cli.main(['tune', '--data-dir', {str(small_movielens_dir)!r}, '--folds', '3', '--ease-tau', '0,10',"
        f" '--ease-lambda', '20,50', '--embedding-dim', '8', '--out', {str(out)!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'tune imported TensorFlow'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert {(row["tau"], row["lambda"]) for row in report["cells"]} == {(0, 20), (0, 50), (10, 20), (10, 50)}
    assert report["folds"] == 3 and report["rank"] == 8
    # the training part of train's split, and the data hash train's manifest records
    ds = read_folder(small_movielens_dir)
    assert report["ratings"] == len(split_interactions(len(ds.interactions), TrainConfig()).train)
    assert report["data_sha256"] == ds.sha256
    assert f"best: {report['best']['flags']}" in done.stdout
