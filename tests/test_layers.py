"""Where gRPC stops: the engine, adapters, models, trainer and domain modules never import grpc
or the generated proto code, directly or through another covergen module; every domain error
has its row in the one status table. Read from the sources with `ast`, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"covergen": REPO / "server" / "covergen", "trainer": REPO / "trainer"}
# the packages and modules that must stay transport-free (ARCHITECTURE.md, "where grpc stops")
TRANSPORT_FREE = (
    "covergen.engine", "covergen.adapters", "covergen.models", "covergen.errors", "covergen.covers",
    "covergen.regions", "covergen.geotags", "covergen.requests", "covergen.styles", "covergen.prompts", "covergen.cache",
    "covergen.catalogue", "covergen.admin", "covergen.feed", "covergen.titles", "covergen.painters",
    "trainer",
)  # fmt: skip
# the trainer's publish client calls AdminService.ReloadStyles; it imports grpc inside the call
ALLOWED_DIRECT = {"trainer.publish"}
# Edges of their own, outside the rule: the training studio serves HTTP pages and is a gRPC client
# of a running server (trainer.studio.server_link); the trainer modules it uses stay transport-free.
EDGES = ("trainer.studio",)
TRANSPORT = ("grpc", "grpc_health", "grpc_reflection", "covergen.v1", "covergen.rpc", "covergen.service")


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            if "v1" in path.relative_to(root).parts:
                continue  # generated code
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute names `module` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_transport(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TRANSPORT)


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _reachable(start: str, modules: dict[str, Path]) -> dict[str, str]:
    """Every name imported at module level when `start` is imported -> the module importing it."""
    seen: dict[str, str] = {}
    visited: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        parts = current.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for module in chain:
            if module not in modules or module in visited:
                continue
            visited.add(module)
            for name in _imports(module, modules[module], top_level_only=True):
                if name not in seen:
                    seen[name] = module
                    todo.append(name)
    return seen


def test_the_checked_packages_exist() -> None:
    modules = _modules()
    for prefix in TRANSPORT_FREE:
        assert any(_under(m, (prefix,)) for m in modules), f"{prefix} no longer exists; update TRANSPORT_FREE"


@pytest.mark.parametrize(
    "module", sorted(m for m in _modules() if _under(m, TRANSPORT_FREE) and not _under(m, EDGES))
)
def test_no_transport_import(module: str) -> None:
    modules = _modules()
    if module not in ALLOWED_DIRECT:
        direct = sorted(
            n for n in _imports(module, modules[module], top_level_only=False) if _is_transport(n)
        )
        assert not direct, f"{module} imports {direct}; map domain errors at the edge (covergen.rpc) instead"
    reached = _reachable(module, modules)
    leaks = sorted(f"{name} (imported by {by})" for name, by in reached.items() if _is_transport(name))
    assert not leaks, f"importing {module} pulls in the transport: {leaks}"


def test_the_layer_check_sees_a_leak(tmp_path: Path) -> None:
    """The checker itself: a module that reaches grpc through another one is caught."""
    (tmp_path / "a.py").write_text("from covergen import b\n")
    (tmp_path / "b.py").write_text("import grpc\n")
    modules = {"covergen.a": tmp_path / "a.py", "covergen.b": tmp_path / "b.py"}
    assert "grpc" in _reachable("covergen.a", modules)


def test_every_domain_error_has_a_status() -> None:
    from covergen import errors
    from covergen.rpc.status import STATUS_BY_ERROR

    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.CovergenError)
    }
    missing = sorted(cls.__name__ for cls in defined - set(STATUS_BY_ERROR))
    assert not missing, f"add {missing} to covergen.rpc.status.STATUS_BY_ERROR"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("InvalidRequest", "INVALID_ARGUMENT"),
        ("StyleNotFound", "NOT_FOUND"),
        ("Overloaded", "RESOURCE_EXHAUSTED"),
        ("Draining", "UNAVAILABLE"),
        ("DeadlineExceeded", "DEADLINE_EXCEEDED"),
        ("AdapterRejected", "FAILED_PRECONDITION"),
        ("ConfigError", "INTERNAL"),
    ],
)
def test_status_table(error: str, code: str) -> None:
    from covergen import errors
    from covergen.rpc.status import status_for

    assert status_for(getattr(errors, error)("x")).name == code

    class Narrower(getattr(errors, error)):  # type: ignore[misc]
        """A subclass maps like its nearest listed ancestor."""

    assert status_for(Narrower("x")).name == code
    assert status_for(ValueError("a bug")).name == "INTERNAL"
