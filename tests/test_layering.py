"""Lower layers never import higher ones; only the transport may import grpc."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agentmesh"
KERNEL = PACKAGE / "_private" / "kernel"


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = "." * child.level + (child.module or "")
                found.add(base)
            visit(child)

    visit(tree)
    return found


def test_the_kernel_imports_nothing_above_it() -> None:
    modules = sorted(KERNEL.glob("*.py"))
    assert len(modules) > 5
    for module in modules:
        for name in _runtime_imports(module):
            assert not name.startswith(".."), f"{module.name} imports {name} (above the kernel)"
            assert not name.startswith("agentmesh"), f"{module.name} imports {name}"
            assert "grpc" not in name, f"{module.name} imports {name}"


def test_supervision_uses_only_the_kernel() -> None:
    for module in sorted((PACKAGE / "_private" / "supervision").glob("*.py")):
        for name in _runtime_imports(module):
            if name.startswith(".."):
                assert name.startswith("..kernel"), f"{module.name} imports {name}"
            assert "mesh" not in name, f"{module.name} imports {name}"


def test_only_the_transport_imports_grpc_and_the_wire_code() -> None:
    transport = PACKAGE / "_private" / "transport"
    importers = set()
    for module in PACKAGE.rglob("*.py"):
        if module.parent == PACKAGE / "v1" or module.name == "protogen.py":
            continue  # the generated code itself, and its generator
        names = _runtime_imports(module)
        if any(
            n == "grpc" or n.startswith(("grpc.", "agentmesh.v1")) or n.endswith(".v1")
            for n in names
        ):
            importers.add(module)
    assert importers
    assert all(m.parent == transport for m in importers), sorted(map(str, importers))


def test_placement_uses_only_the_kernel() -> None:
    modules = sorted((PACKAGE / "_private" / "placement").glob("*.py"))
    assert len(modules) >= 3
    for module in modules:
        for name in _runtime_imports(module):
            if name.startswith(".."):
                assert name.startswith("..kernel"), f"{module.name} imports {name}"
            assert "grpc" not in name, f"{module.name} imports {name}"


def test_nothing_below_the_simulation_imports_it() -> None:
    sim = PACKAGE / "_private" / "sim"
    for module in sorted(PACKAGE.rglob("*.py")):
        if module.parent in (sim, PACKAGE / "sim"):
            continue
        for name in _runtime_imports(module):
            assert ".sim" not in name, f"{module} imports {name}"
            assert not name.endswith("sim"), f"{module} imports {name}"
