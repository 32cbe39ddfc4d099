"""A memory ceiling: training on a generated log whose dense users x items matrix
(30,000 x 25,000 float64: 6 GB) or items x items matrix (5 GB) would not fit the
bound must stay under it, so neither is built (histories are sampled from the
log, the warm start is off at this catalog size, evaluation is chunked).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO, service_env
from serving import bundle
from trainer.synthetic_log import LogConfig, write_log

pytestmark = pytest.mark.slow

PEAK_RSS_BOUND = 2 * 2**30  # TensorFlow, the log, the tables and a batch; far below either dense matrix


def test_training_memory_does_not_grow_with_users_times_items(tmp_path: Path) -> None:
    data = tmp_path / "log"
    write_log(data, LogConfig(users=30_000, items=25_000, interactions=300_000, heldout_users=0), layout="generic")
    model_base = tmp_path / "models"
    command = [sys.executable, "-m", "trainer", "train", "--data-dir", str(data), "--model-base", str(model_base),
               "--test-fraction", "0.1", "--epochs", "1", "--batch-size", "4096"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**30:.2f} GiB"
    assert "negatives in_batch, init random" in result.stdout
    [path] = bundle.version_dirs(model_base).values()
    manifest = bundle.read_manifest(path)
    items, _ = bundle.validate(path, manifest)
    assert len(items.ids) == 25_000
    training = manifest.raw["training"]
    assert (training["negatives"], training["init"]) == ("in_batch", "random")
    assert training["peak_rss_bytes"] < PEAK_RSS_BOUND
