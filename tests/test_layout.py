"""The package's layering, read from the source: lower layers never import upper ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mosa"
LOWER = (
    "adapters",
    "backbones",
    "data",
    "config",
    "model",
    "checkpoint",
    "export",
    "heads",
    "methods",
    "state",
    "runs",
)
UPPER = ("mosa.engine", "mosa.cli", "mosa.bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_lower_layers_do_not_import_engine_cli_or_bench(path: Path) -> None:
    name = _module_name(path)
    if name.split(".")[1:2] and name.split(".")[1] in LOWER:
        upward = sorted(m for m in _imports(path) if m.startswith(UPPER))
        assert not upward, f"{name} imports {upward}"


def test_no_private_hook_or_module_dicts() -> None:
    # hooks are removed through the handles register_forward_hook returns
    pattern = re.compile(r"\._(forward_hooks|forward_pre_hooks|modules)\b")
    hits = [
        f"{p.relative_to(SRC)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_the_layout_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mosa.engine.trainer import train\n")
    assert "mosa.engine.trainer" in _imports(f)


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg`` itself)."""
    names = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in names:
                        deps.add(sub)
                    elif node.module in names:
                        deps.add(node.module)
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_among_package_modules() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_functions_are_short_and_the_cli_entry_point_is_thin() -> None:
    long = [
        f"{p.relative_to(SRC)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in _sources()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > 100
    ]
    assert long == []
    assert len((SRC / "cli" / "main.py").read_text().splitlines()) < 400
