"""The package's shape: no import cycle between its modules (an import inside a function counts:
it only hides the cycle until that function runs) and no module over 700 lines. Modules still
over the limit are listed, each as a strict xfail: when one is split its test turns red, to be
taken off the list; anything new fails at once."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "schoolgate"
MAX_LINES = 700

# Import cycles allowed (none: a new one fails the test below and names its imports).
KNOWN_CYCLES: list[set[str]] = []
# Modules over MAX_LINES as of today (issue 21 splits them).
KNOWN_LONG = [
    "schoolgate/core/lists.py",
    "schoolgate/core/timetable.py",
]


# -- the import graph --------------------------------------------------------------------------
def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is its
    ``__init__``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules ``node`` (in ``module``) names: for ``from x import y``, ``x.y`` if that is
    a module, else ``x``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names] + [source]


Graph = dict[str, dict[str, int]]  # module -> {module it imports: first line}


def import_graph(modules: dict[str, Path]) -> Graph:
    """Who imports whom among ``modules``, from every import statement wherever it is (module
    level, in a function, under ``if TYPE_CHECKING``)."""
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):  # `from x import y`: y if a module, else x
                found = [n for n in names[:-1] if n in modules] or names[-1:]
            else:
                found = names
            for target in found:
                while target not in modules and "." in target:  # a name in a module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def cycles(graph: Graph) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without
    recursion): each is one or more import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def describe(component: set[str], graph: Graph, modules: dict[str, Path], root: Path = ROOT) -> str:
    """One shortest cycle through the component, with where each import is."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if start in graph[node]:
            break
        for target in graph[node]:
            if target in component and target not in previous:
                previous[target] = node
                queue.append(target)
    path = [node]
    while path[-1] != start:
        path.append(previous[path[-1]])
    path.reverse()
    path.append(start)
    steps = [
        f"    {a} -> {b} ({modules[a].relative_to(root)}:{graph[a][b]})"
        for a, b in zip(path, path[1:], strict=False)
    ]
    return f"  {', '.join(sorted(component))}:\n" + "\n".join(steps)


# -- the tests ---------------------------------------------------------------------------------
def test_no_import_cycle_beyond_the_known_ones() -> None:
    modules = module_files()
    graph = import_graph(modules)
    new = [c for c in cycles(graph) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, "import cycles (imports inside functions count):\n" + "\n".join(
        describe(c, graph, modules) for c in new
    )


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_over_700_lines_beyond_the_known_ones() -> None:
    long = {
        str(p.relative_to(ROOT)): _lines(p)
        for p in module_files().values()
        if _lines(p) > MAX_LINES and str(p.relative_to(ROOT)) not in KNOWN_LONG
    }
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=f"over {MAX_LINES} lines"))
        for m in KNOWN_LONG
    ],
)
def test_a_known_long_module_is_short(module: str) -> None:
    path = ROOT / module
    assert not path.exists() or _lines(path) <= MAX_LINES, f"{module}: {_lines(path)} lines"


def test_the_cycle_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import something\n")
    (package / "d.py").write_text("import pkg.a\n")
    modules = module_files(package)
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.sub.c": 2} and graph["pkg.sub.c"] == {"pkg.a": 1}
    assert cycles(graph) == [{"pkg.a", "pkg.b", "pkg.sub.c"}]
    text = describe({"pkg.a", "pkg.b", "pkg.sub.c"}, graph, modules, tmp_path)
    assert "pkg.a -> pkg.b (pkg/a.py:1)" in text and "pkg.sub.c -> pkg.a (pkg/sub/c.py:1)" in text
