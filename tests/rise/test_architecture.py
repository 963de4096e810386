"""rise/'s modules import each other without a circle (docs/ARCHITECTURE.md, dependency rules):
every import counts, the lazy ones inside functions included, since a circle hidden in a
function is still one (the request plan used to import the turn loop that way)."""

from __future__ import annotations

import ast
from pathlib import Path

RISE = Path(__file__).resolve().parents[2] / "rise"


def module_graph() -> dict[str, set[str]]:
    """``rise`` module -> the ``rise`` modules it imports (a submodule's own packages left
    out: importing ``rise.engine.base`` initialises ``rise.engine`` first, not a dependency)."""
    modules = {}
    for path in RISE.rglob("*.py"):
        parts = path.relative_to(RISE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rise"):
                module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("rise")]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_rise_has_no_import_circle() -> None:
    assert find_cycle(module_graph()) is None, " -> ".join(find_cycle(module_graph()) or [])


def test_the_check_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert "rise.loop" in module_graph()["rise.cli"]
