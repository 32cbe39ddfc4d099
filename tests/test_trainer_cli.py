"""The ``python -m trainer`` command line: exit codes, evaluate and synthetic commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving import bundle
from trainer import cli

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_missing_data_dir_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--data-dir", str(tmp_path / "missing"), "--model-base", str(tmp_path / "m")])
    assert code == cli.EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_malformed_ratings_exit_2_naming_file_and_line(
    small_movielens_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "ml"
    shutil.copytree(small_movielens_dir, data_dir)
    with open(data_dir / "u.data", "a") as f:
        f.write("1\t1\n")
    lines = len((data_dir / "u.data").read_text().splitlines())
    # No subcommand means train.
    code = cli.main(["--data-dir", str(data_dir), "--model-base", str(tmp_path / "m")])
    assert code == 2
    assert f"u.data:{lines}: expected 4 fields" in capsys.readouterr().err


def test_if_missing_skips_training_when_a_version_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "models"
    (base / "3").mkdir(parents=True)
    (base / "3" / "manifest.json").write_text("{}")
    # The data directory does not exist: returning 0 shows nothing was loaded.
    assert cli.main(["train", "--if-missing", "--model-base", str(base), "--data-dir", str(tmp_path / "none")]) == 0
    assert "already holds version 3" in capsys.readouterr().out
    assert cli.main(["train", "--if-missing", "--model-base", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "none")]) == 2


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[env MODEL_BASE]" in text and "[env ML100K_DIR]" in text and "--if-missing" in text


def test_bad_flag_values_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--test-fraction", "1.5", "--data-dir", str(tmp_path)]) == 2
    assert "--test-fraction must be in [0, 1)" in capsys.readouterr().err


def test_loss_flags_parse_and_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["train", "--negatives", "in_batch", "--no-mask-seen", "--history-length", "16"])
    assert (args.negatives, args.mask_seen, args.history_length) == ("in_batch", False, 16)
    defaults = cli.build_parser().parse_args(["train"])
    assert (defaults.negatives, defaults.mask_seen, defaults.init) == ("auto", True, "auto")
    assert cli.main(["train", "--history-length", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--history-length must be positive" in capsys.readouterr().err
    assert cli.main(["train", "--history-dropout", "1", "--data-dir", str(tmp_path)]) == 2
    assert "--history-dropout must be in [0, 1)" in capsys.readouterr().err


def test_automatic_choices_follow_the_catalog_size() -> None:
    from trainer.config import CATALOG_SOFTMAX_MAX_ITEMS, choose_init, choose_negatives

    assert choose_negatives("auto", 1682) == "catalog"
    assert choose_negatives("auto", CATALOG_SOFTMAX_MAX_ITEMS + 1) == "in_batch"
    assert choose_negatives("catalog", 10**6) == "catalog"  # a flag overrides
    assert choose_init("auto", 1682) == "ease" and choose_init("auto", 3706) == "ease"  # ml-100k, ml-1m
    assert choose_init("auto", 62_423) == "random"  # ml-25m: 4 x 62k² float64 would not fit
    assert choose_init("ease", 62_423) == "ease"


def test_evaluate_without_bundles_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "--model-base", str(tmp_path)]) == 2
    assert "no published versions" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    result = _run("train", "--data-dir", str(tmp_path / "missing"), "--model-base", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "data directory not found" in result.stderr


@pytest.mark.slow
def test_evaluate_recomputes_the_training_report(trained_model_base: Path, tmp_path: Path) -> None:
    bundle_dir = trained_model_base / "1"
    files_before = {p: p.stat().st_mtime_ns for p in bundle_dir.rglob("*")}
    result = _run("evaluate", "--model-base", str(trained_model_base), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "model (seen_excluded)" in result.stdout and str(bundle_dir) in result.stdout
    recomputed = json.loads((tmp_path / "out" / "report.json").read_text())
    original = json.loads((bundle_dir / "evaluation" / "report.json").read_text())
    for name in ("model", "popularity"):
        for protocol in ("all", "seen_excluded"):
            np.testing.assert_allclose(recomputed[name][protocol], original[name][protocol], atol=1e-5)
    assert {p: p.stat().st_mtime_ns for p in bundle_dir.rglob("*")} == files_before


@pytest.mark.slow
def test_train_with_test_fraction_zero_skips_evaluation(small_movielens_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "models"
    result = _run(
        "train", "--data-dir", str(small_movielens_dir), "--model-base", str(base),
        "--test-fraction", "0", "--epochs", "1", "--batch-size", "512",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "evaluation skipped" in result.stdout and f"published {base / '1'}" in result.stdout
    manifest = bundle.read_manifest(base / "1")
    bundle.verify_files(base / "1", manifest)
    assert (base / "1" / "evaluation" / "test_interactions.tsv").read_text() == "user_id\titem_id\n"
    assert manifest.raw["training"]["interactions"]["test"] == 0
    assert sum(np.diff(bundle.load_users(base / "1", manifest).seen_indptr)) == len(
        (small_movielens_dir / "u.data").read_text().splitlines()
    )


@pytest.mark.slow
def test_synthetic_bundle_is_valid(tmp_path: Path) -> None:
    import tensorflow as tf

    result = _run("synthetic", "--items", "20000", "--users", "30", "--dim", "16", "--model-base", str(tmp_path))
    assert result.returncode == 0, result.stderr
    manifest = bundle.read_manifest(tmp_path / "1")
    bundle.verify_files(tmp_path / "1", manifest)
    items = bundle.load_items(tmp_path / "1", manifest)
    users = bundle.load_users(tmp_path / "1", manifest)
    assert items.embeddings.shape == (20000, 16) and len(users.ids) == 30
    norms = np.linalg.norm(items.embeddings, axis=1)
    assert 0.08 < norms.std() / norms.mean() < 0.3  # uneven norms, as spread as a trained table's (sigma 0.15)
    # It ships its serialized ScaNN searcher, as the index service loads it.
    assert manifest.raw["scann"]["mode"] == "tree_ah" and manifest.raw["scann"]["serialized"] == "scann"
    assert (tmp_path / "1" / "scann" / "scann_assets.pbtxt").is_file()
    assert len(users.seen_item_ids("1")) >= 1
    signature = tf.saved_model.load(str(tmp_path / "1" / bundle.USER_TOWER)).signatures["serving_default"]
    out = signature(user_id=tf.constant(["1", "unknown-user"]))["embedding"].numpy()
    assert out.shape == (2, 16) and np.isfinite(out).all()


def test_warm_start_flags_parse_and_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["train", "--init", "ease", "--ease-lambda", "300", "--init-balance", "1"])
    assert (args.init, args.ease_lambda, args.init_balance) == ("ease", 300.0, 1.0)
    assert cli.main(["train", "--ease-lambda", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--ease-lambda must be positive" in capsys.readouterr().err
    assert cli.main(["train", "--init-balance", "2", "--data-dir", str(tmp_path)]) == 2
    assert "--init-balance must be in [0, 1]" in capsys.readouterr().err
    assert cli.main(["train", "--ease-tau", "-1", "--data-dir", str(tmp_path)]) == 2
    assert "--ease-tau must be 0 or more" in capsys.readouterr().err
