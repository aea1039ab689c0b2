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


#: What each part of agentmesh._private may import of the others, at run time or for
#: type checking alike: the layering of DESIGN.md, lower layers never naming higher ones.
ALLOWED = {
    "kernel": set(),
    "supervision": {"kernel"},
    "placement": {"kernel"},
    "pubsub": {"kernel"},
    "transport": {"kernel"},
    "sqlite_store": {"kernel"},
    "daemon": set(),
    "running": set(),
    "protogen": set(),
    "tracing": {"kernel"},
    "cluster": {"kernel", "supervision", "placement", "pubsub", "transport"},
    "config": {"kernel", "placement", "transport", "cluster"},
    "metrics": {"kernel", "placement", "pubsub", "transport"},
    "virtual": {"kernel", "supervision"},
    "mesh": {
        *("kernel", "supervision", "placement", "pubsub", "transport", "cluster", "config"),
        *("metrics", "tracing", "virtual"),
    },
    "dashboard": {"kernel", "mesh", "tracing"},
    "logs": set(),
    "tables": {"kernel", "cluster"},
    "cli": {
        *("kernel", "placement", "transport", "cluster", "mesh", "running", "config"),
        *("logs", "tables", "dashboard", "sqlite_store"),
    },
    "sim": {"kernel", "mesh", "daemon", "running"},
}
#: The one name a lower layer takes from a higher one, for type checking only: the
#: public annotation of ``Agent.mesh`` (an agent's mesh is the `Mesh` it lives in).
EXCEPTIONS = {("kernel/agent.py", "mesh")}


def _all_imports(path: Path) -> list[tuple[str, bool]]:
    """(part of agentmesh._private imported, whether under ``if TYPE_CHECKING:``)."""
    private = PACKAGE / "_private"
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            typing = typing_only or (
                isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING"
            )
            if isinstance(child, ast.ImportFrom) and child.level > 0:
                base = path.parent
                for _ in range(child.level - 1):
                    base = base.parent
                target = base.joinpath(*(child.module or "").split(".")).resolve()
                if target.is_relative_to(private) and target != private:
                    found.append((target.relative_to(private).parts[0], typing))
            elif isinstance(child, ast.ImportFrom | ast.Import):
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else []
                names += [a.name for a in child.names] if isinstance(child, ast.Import) else []
                found.extend(
                    (name.split(".")[2], typing)
                    for name in names
                    if name.startswith("agentmesh._private.")
                )
            visit(child, typing)

    visit(ast.parse(path.read_text()), False)
    return found


def test_every_layer_imports_only_those_below_it_type_checking_included() -> None:
    private = PACKAGE / "_private"
    checked = set()
    for module in sorted(private.rglob("*.py")):
        rel = module.relative_to(private)
        part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if part == "__init__":
            continue
        assert part in ALLOWED, f"{rel}: a part of agentmesh._private the layering omits"
        checked.add(part)
        for imported, typing_only in _all_imports(module):
            imported = imported.removesuffix(".py")
            if imported == part:
                continue
            if (rel.as_posix(), imported) in EXCEPTIONS:
                assert typing_only, f"{rel} imports {imported} at run time"
                continue
            assert imported in ALLOWED[part], f"{rel} imports {imported} (above it)"
    assert checked == set(ALLOWED)
