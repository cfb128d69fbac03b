"""Regenerate the Python stubs from `proto/fedrecon/v1/*.proto` (run: python -m fedrecon.proto.generate).

The .proto files sit where their package `fedrecon.v1` says (so descriptors, reflection and other
languages see `fedrecon/v1/recon.proto`); the Python stubs are the module `fedrecon.proto.v1`
(folder `proto/v1/`): protoc's output moves there, its `from fedrecon.v1 import` rewritten. A test
regenerates into a temporary folder and compares with the committed files, so the stubs never drift.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted((PROTO_ROOT / "fedrecon" / "v1").glob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpc_tools) on every .proto into out_dir; return the generated files."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    target = out_dir / "v1"
    target.mkdir(exist_ok=True)
    files = []
    for path in sorted(p for p in (out_dir / "fedrecon" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES)):
        text = re.sub(r"^from fedrecon\.v1 import", "from fedrecon.proto.v1 import", path.read_text(), flags=re.M)
        (target / path.name).write_text(text)
        path.unlink()
        files.append(target / path.name)
    return files


def main() -> int:
    """Write the stubs beside the .proto files."""
    files = generate(PROTO_ROOT)
    for path in files:
        print(path.relative_to(PROTO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
