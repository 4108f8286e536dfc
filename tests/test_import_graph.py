"""No import circles between embedkit's modules, counting function-local (lazy) imports too.

A circle works only as long as each side imports the other late enough; it breaks when a
module moves or a lazy import becomes eager (extractors/openl3.py and openl3_image.py
had one). The graph is read from the source (ast), so nothing is imported here.
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

SKIP = {".git", ".venv", "tests", "benchmarks", "examples", "__pycache__", "build", "output", "docs"}


def module_files() -> dict[str, object]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if SKIP & set(rel.parts[:-1]) or rel.parts[0].startswith("."):
            continue
        dotted = ".".join(rel.with_suffix("").parts).removesuffix("__init__").rstrip(".")
        mods["embedkit" + (f".{dotted}" if dotted else "")] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedkit"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                deps |= subs
                if len(subs) < len(node.names):  # names from the module itself
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("embedkit")}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_circles():
    graph = import_graph()
    assert "embedkit.extractors.openl3" in graph and "embedkit.openl3.core" in graph  # the scan sees them
    assert graph["embedkit.extractors.openl3_image"] >= {"embedkit.openl3.network"}
    assert find_cycles(graph) == []
