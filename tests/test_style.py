"""House rules that a linter does not check for first-party code: no private names across modules, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_lnm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, at module level) of every ``import`` / ``from ... import`` in a file."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], id(node) in top) for a in node.names)
    return out


def test_no_private_names_imported_across_modules():
    bad = []
    for path in SRC.rglob("*.py"):
        for module, names, _ in _imports(path):
            if module.startswith("napari_lnm"):
                bad += [f"{_module_name(path)}: from {module} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        mod = _module_name(path)
        deps = set()
        for module, names, top in _imports(path):
            if top and module.startswith("napari_lnm") and module != mod:
                deps.add(module)
                deps.update(f"{module}.{n}" for n in names)
        graph[mod] = deps
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package importing its own submodule is fine
                cycle.extend(stack[stack.index(d):] + [m, d] if d in stack else [m, d])
                return True
            if d not in state and visit(d, stack + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_core_imports_no_qt():
    qt = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")
    bad = [f"{_module_name(p)} imports {m}" for p in SRC.rglob("*.py")
           if "_widgets" not in p.parts and p.name not in ("_reader.py", "_sample_data.py")
           for m, _, _ in _imports(p) if m.split(".")[0] in qt]
    assert not bad, "\n".join(bad)
