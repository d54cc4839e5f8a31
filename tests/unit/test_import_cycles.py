"""No import circle among gateway/ modules, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def _module_name(path: Path, root: Path = GATEWAY) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], root: Path = GATEWAY) -> set[str]:
    """The gateway modules ``path`` imports anywhere (``TYPE_CHECKING`` blocks excluded:
    they never run). ``from gateway.x import y`` names ``gateway.x.y`` when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def import_graph(root: Path = GATEWAY) -> dict[str, set[str]]:
    paths = {_module_name(path, root): path for path in root.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules, root) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    root = tmp_path / "gateway"
    root.mkdir()
    (root / "__init__.py").write_text("", encoding="utf-8")
    (root / "limits.py").write_text("from gateway.meta import ready\n", encoding="utf-8")
    (root / "meta.py").write_text("def ready():\n    from gateway import limits\n", encoding="utf-8")
    (root / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gateway.meta\n", encoding="utf-8")
    graph = import_graph(root)
    assert graph["gateway.meta"] == {"gateway.limits"} and graph["gateway.typed"] == set()
    assert find_cycle(graph) == ["gateway.limits", "gateway.meta", "gateway.limits"]


def test_no_import_circle_in_gateway() -> None:
    graph = import_graph()
    assert "gateway.exchange" in graph and graph["gateway.routes.ai"]  # the graph was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
