"""The checked-in stubs and protoset are what `python protos/generate.py` produces now."""

import filecmp
import subprocess
import sys

from procs import REPO


def test_generated_code_is_current(tmp_path):
    subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "codegen wrote nothing"
    stale = [str(rel) for rel in generated if not filecmp.cmp(tmp_path / rel, REPO / "protos" / rel, shallow=False)]
    assert not stale, f"stale generated files (run `make protos`): {stale}"
    checked_in = sorted(
        p.relative_to(REPO / "protos")
        for p in (REPO / "protos").rglob("*")
        if p.is_file() and (p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")) or p.suffix == ".protoset")
    )
    assert checked_in == [g for g in generated if g.name != "__init__.py"], "generated files were added or removed"
