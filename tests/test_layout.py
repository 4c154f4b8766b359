"""The package's layout: no module imports another that imports it back (directly or around a circle),
counting imports inside functions too (a lazy import hides a cycle from Python, not from a reader)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mumath"


def imported_modules(path):
    """The mumath modules a file imports (relative `from .x import`, `from . import x`, `mumath.x`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                names.add(module.split(".")[0])
            elif node.level == 1:
                names.update(alias.name for alias in node.names)
            elif module.startswith("mumath."):
                names.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("mumath."))
    return names


def import_graph(package=PACKAGE):
    modules = {path.stem: path for path in package.glob("*.py")}
    return {name: sorted(imported_modules(path) & set(modules) - {name}) for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state:
                found = visit(target, trail + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in graph:
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_lazy_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    assert find_cycle(import_graph(tmp_path)) in (["a", "b", "a"], ["b", "a", "b"])
