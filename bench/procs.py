"""Starting the services as subprocesses on 127.0.0.1: the same helpers the tests use (tests/procs.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_bench_test_procs", Path(__file__).resolve().parent.parent / "tests" / "procs.py")
_procs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _procs
_spec.loader.exec_module(_procs)

REPO = _procs.REPO
Service = _procs.Service
free_port = _procs.free_port
running = _procs.running
stack = _procs.stack
