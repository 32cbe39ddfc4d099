"""Shared fixtures: a small MovieLens-format dataset and a model trained on it.

The model is trained by running ``python -m trainer train`` in a subprocess,
so the test process itself does not import TensorFlow for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from movielens_fixture import write_small_movielens

REPO_ROOT = Path(__file__).resolve().parent.parent

# The running-services fixtures (live_stack) build on trained_model_base.
pytest_plugins = ("stack_fixtures",)


@pytest.fixture(scope="session")
def small_movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset in the GroupLens layout: 60 users, 80 movies, ~2000 ratings."""
    return write_small_movielens(tmp_path_factory.mktemp("ml-small"))


@pytest.fixture(scope="session")
def trained_model_base(small_movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model base holding one bundle (version 1) trained on ``small_movielens_dir``."""
    model_base = tmp_path_factory.mktemp("models") / "movielens"
    env = {**os.environ, "RECSYS_CACHE_DIR": str(tmp_path_factory.mktemp("no-download-cache"))}
    command = [
        sys.executable, "-m", "trainer", "train",
        "--data-dir", str(small_movielens_dir),
        "--model-base", str(model_base),
        "--epochs", "3",
        "--batch-size", "256",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"training failed:\n{result.stdout}\n{result.stderr}"
    assert (model_base / "1" / "manifest.json").is_file(), result.stdout
    return model_base
