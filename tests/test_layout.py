"""The package's shape: no import cycle between its modules (an import inside a function counts:
it only hides the cycle until that function runs), no module over 700 lines, and no private
name (``_name``) of one module used by another, and no import across the layers of
docs/architecture.md. Nothing is exempt: anything new fails at once, naming what to fix."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "schoolgate"
MAX_LINES = 700

# Import cycles allowed (none: a new one fails the test below and names its imports).
KNOWN_CYCLES: list[set[str]] = []
# Modules allowed over MAX_LINES (none: a new one fails the test below and names it).
KNOWN_LONG: list[str] = []


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


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def private_uses(modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """Where a module imports, or reads as an attribute of an imported module, a private name
    of another of ``modules`` (a private module may be used by its own package only)."""

    def may_use_module(user: str, target: str) -> bool:
        package, _, last = target.rpartition(".")
        return not _private(last) or user == package or user.startswith(package + ".")

    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = f"{path.relative_to(root)}"
        bound: dict[str, str] = {}  # local name -> module it is
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and not may_use_module(name, alias.name):
                        found.append(f"{where}:{node.lineno} imports {alias.name}")
                    if alias.asname and alias.name in modules:
                        bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _imported(node, name, is_package)[-1]
                if source not in modules or source == name:
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in modules:
                        bound[alias.asname or alias.name] = full
                        if may_use_module(name, full):
                            continue
                    elif not _private(alias.name):
                        continue
                    found.append(f"{where}:{node.lineno} imports {full}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = _dotted(node.value)
                owner = bound.get(owner or "", owner)
                if owner in modules and owner != name:
                    found.append(f"{where}:{node.lineno} reads {owner}.{node.attr}")
    return sorted(set(found))


# -- the tests ---------------------------------------------------------------------------------
def test_no_import_cycle_beyond_the_known_ones() -> None:
    modules = module_files()
    graph = import_graph(modules)
    new = [c for c in cycles(graph) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, "import cycles (imports inside functions count):\n" + "\n".join(
        describe(c, graph, modules) for c in new
    )


def test_no_module_uses_another_modules_private_names() -> None:
    used = private_uses(module_files())
    assert not used, (
        "private names used across modules (make them public, with a docstring, in the module "
        "where they belong):\n  " + "\n  ".join(used)
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


# -- layers (docs/architecture.md) -------------------------------------------------------------
# What each layer may import of schoolgate, besides itself. The pure parts (core, and the
# detectors, monitoring and bindings above it) know nothing of the database, mitmproxy or the
# web; storage knows the core; nothing but the command line imports the command line.
PURE = {"core"}
MAY_IMPORT = {
    "core": PURE,
    "circumvention": PURE | {"circumvention"},
    "monitoring": PURE | {"monitoring"},
    "storage": PURE | {"storage", "bindings", "monitoring"},
}
# Imports across layers allowed (none: a new one fails the test below and names it).
KNOWN_LAYER_BREACHES: set[tuple[str, str]] = set()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_breaches() -> set[tuple[str, str]]:
    graph = import_graph(module_files())
    found = set()
    for module, imported in graph.items():
        allowed = MAY_IMPORT.get(_layer(module))
        for other in imported:
            if other == "schoolgate":  # the package itself (its version, its folder)
                continue
            if allowed is not None and _layer(other) not in allowed:
                found.add((module, other))
            elif _layer(other) == "cli" and _layer(module) != "cli":
                found.add((module, other))
    return found


def test_no_layer_imports_what_is_above_it_beyond_the_known_ones() -> None:
    new = layer_breaches() - KNOWN_LAYER_BREACHES
    assert not new, "imports across layers (docs/architecture.md):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(new)
    )


def test_the_private_name_check_sees_imports_and_attributes(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("_secret = 1\nshared = 2\n__all__ = ['shared']\n")
    (package / "b.py").write_text(
        "from pkg.a import shared, __all__\ndef later():\n    from .a import _secret\n"
    )
    (package / "c.py").write_text("import pkg.a as m\nfrom pkg import a\nx = m._secret + a._x\n")
    (package / "d.py").write_text("import pkg.a\nx = pkg.a._secret\n")
    (package / "sub" / "__init__.py").write_text("from pkg.sub import _impl\n")
    (package / "sub" / "_impl.py").write_text("")
    (package / "e.py").write_text("from pkg.sub import _impl\n")
    (package / "f.py").write_text("class F:\n    def g(self):\n        return self._own\n")
    assert private_uses(module_files(package), tmp_path) == [
        "pkg/b.py:3 imports pkg.a._secret",
        "pkg/c.py:3 reads pkg.a._secret",
        "pkg/c.py:3 reads pkg.a._x",
        "pkg/d.py:2 reads pkg.a._secret",
        "pkg/e.py:1 imports pkg.sub._impl",
    ]
