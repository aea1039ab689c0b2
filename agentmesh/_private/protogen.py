"""Regenerate the checked-in wire code from ``protos/`` (``make proto``).

``python -m agentmesh._private.protogen [OUT_DIR]`` writes ``agentmesh/v1/*_pb2*.py``
under OUT_DIR (default: the repository root). The freshness test generates into a
temporary folder and compares. Needs grpcio-tools (the ``dev`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    """Generate Python code for every .proto under protos/ into ``out``."""
    from grpc_tools import protoc  # a development dependency only

    protos = sorted(PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    return sorted((out / "agentmesh").rglob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))
