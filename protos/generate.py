"""Regenerates the Python stubs and the protoset from the .proto files.

Run from anywhere: ``python protos/generate.py``. Writes, next to each
``recsys/**/*.proto`` (the public ``recsys/v1``, the internal ``recsys/internal/v1``),
the ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules, and ``protos/recsys.protoset`` (a FileDescriptorSet with imports, for
ghz and grpcurl). ``--out DIR`` writes the same tree under DIR instead; the
stale-codegen test uses it to compare a fresh generation with the checked-in one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTOSET_NAME = "recsys.protoset"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("recsys/**/*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = proto_files()
    # grpc_tools ships the well-known types (health, descriptor, ...) next to protoc.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / PROTOSET_NAME}",
        "--include_imports",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {files}")
    # Every folder from recsys/ down to each .proto's is a package (recsys/internal/v1 too).
    for f in files:
        for package_dir in (out_dir / f).relative_to(out_dir).parents:
            if package_dir != Path("."):
                (out_dir / package_dir / "__init__.py").touch()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    generate(parser.parse_args(argv).out)


if __name__ == "__main__":
    sys.exit(main())
