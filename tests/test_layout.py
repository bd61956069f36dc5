"""The house shows its architecture: the core of ``rolora/`` imports no subsystem, no subsystem imports the entry
points (CLI, HTTP service), and retrieval stands on the core alone. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSYSTEMS = {"agents": "agents", "adapters": "adapters", "retrieval": "retrieval", "evals": "evals"}
ENTRY_POINTS = ("rolora.cli", "rolora.service")
# the public facade may point at the graph lazily (``rolora.build_graph``); every other core module stays below
FACADE = REPO / "rolora" / "__init__.py"


def _package_of(path: Path) -> str:
    """The import name of a source file under the setuptools package-dir mapping."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in SUBSYSTEMS:
        parts = ["rolora", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names, relative imports resolved, lazy imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _package_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in paths:
        for mod in sorted(imported_modules(path)):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
    return bad


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The rule below is only as good as the parser: a lazy import and a relative one are both found."""
    mods = imported_modules(REPO / "agents" / "agent.py")
    assert "rolora.agents.graph" in mods  # `from .graph import compile_graph`
    assert "rolora.adapters.registry" in mods  # imported inside make_backend()
    assert _offending([REPO / "agents" / "agent.py"], ("rolora.adapters",))


def test_core_never_imports_the_floors_above_it() -> None:
    core = [p for p in _sources("rolora") if not p.is_relative_to(REPO / "rolora" / "cli")]
    core = [p for p in core if not p.is_relative_to(REPO / "rolora" / "service") and p != FACADE]
    assert {p.stem for p in core} >= {"config", "errors", "fileutil", "models", "telemetry"}
    forbidden = tuple(f"rolora.{s}" for s in SUBSYSTEMS) + ENTRY_POINTS
    assert _offending(core, forbidden) == []


@pytest.mark.parametrize("folder", sorted(SUBSYSTEMS))
def test_subsystems_never_import_the_entry_points(folder: str) -> None:
    assert _offending(_sources(folder), ENTRY_POINTS) == []


def test_retrieval_stands_on_the_core_alone() -> None:
    others = tuple(f"rolora.{s}" for s in SUBSYSTEMS if s != "retrieval") + ENTRY_POINTS
    assert _offending(_sources("retrieval"), others) == []
