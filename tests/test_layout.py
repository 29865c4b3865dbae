"""Layout: the core never imports the apps, and no module import circle exists anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mixpro

ROOT = Path(mixpro.__file__).resolve().parent
APPS = ("mixpro.train", "mixpro.evaluate", "mixpro.data", "mixpro.plots", "mixpro.bench",
        "mixpro.cli", "mixpro.checkpoint", "mixpro.models", "mixpro.errors", "mixpro.files",
        "matplotlib")


def test_importing_the_core_loads_no_app():
    code = (
        "import sys, mixpro, mixpro.methods, mixpro.strategies, mixpro.sweep\n"
        f"apps = {APPS!r}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(apps))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"the core imported app modules: {out}"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module → the mixpro modules it imports anywhere in its body (functions included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in mods else base)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert "mixpro.checkpoint" in graph["mixpro.evaluate.run"]  # the walk sees imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_core_modules_import_no_app_module():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(APPS) and m != "mixpro.__main__"]
    for m in core:
        bad = [d for d in graph[m] if d.startswith(APPS)]
        assert not bad, f"core module {m} imports {bad}"
