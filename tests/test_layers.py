"""The package's structure: no two modules import each other, directly or round a loop, and no
import dodges that inside a function. (The layer order itself is make lint's import contract.)"""

from __future__ import annotations

import ast
from pathlib import Path

import cnnlab

SRC = Path(cnnlab.__file__).parent
# Imports kept inside a function on purpose, each with its reason in a comment beside it.
LAZY = {
    ("cnnlab.cli.train", "cnnlab.runs.planning"),
    ("cnnlab.cli.train", "cnnlab.runs.sweep"),
    ("cnnlab.cli.train", "cnnlab.training.run"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported cnnlab module, whether the import is inside a function) for each import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(n, node.col_offset > 0) for n in names if n.split(".")[0] == "cnnlab"]
    return found


def graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    lazy = set()
    for name, path in modules.items():
        for target, in_function in imports(path):
            # "from cnnlab.x import y" may name a module y or a name defined in cnnlab.x.
            if target in modules:
                edges[name].add(target)
                if in_function:
                    lazy.add((name, target))
    return edges, lazy


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``edges``, as the list of modules round it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def test_find_cycle_finds_a_loop_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    edges, _ = graph()
    assert len(edges) > 50, "the walk found too few modules: is SRC right?"
    assert find_cycle(edges) is None


def test_function_level_imports_are_only_the_documented_ones():
    _, lazy = graph()
    assert lazy == LAZY
