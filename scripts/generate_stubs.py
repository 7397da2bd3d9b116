"""Generate the Python stubs of protos/ into canarycast/v1 (or another directory).

    python scripts/generate_stubs.py            # rewrite canarycast/v1/*_pb2*.py(i)
    python scripts/generate_stubs.py OUT_DIR    # write OUT_DIR/canarycast/v1/... instead

The stubs are committed; tests/canarycast/test_stubs.py regenerates them into
a temporary directory and fails on any difference. grpcio-tools is pinned in
pyproject.toml so that the output is reproducible.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ],
        check=True,
        cwd=PROTOS,
    )
    written = []
    for name in files:
        stem = name.removesuffix(".proto")
        written += [
            out_dir / f"{stem}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
        ]
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))
