"""The source files a step runs: its import closure inside the ``hmarl`` package.

Every ``import`` statement of a module counts, wherever it stands (a function-level import runs too), and so
does every parent package's ``__init__.py`` (Python executes them on import). C sources a module compiles at
run time (``Path(__file__).with_name("x.c")``) belong to it as well. The result is what DVC must hash for
the step: change any of these files and ``dvc repro`` reruns the step.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import hmarl

PACKAGE = "hmarl"
PACKAGE_DIR = Path(hmarl.__file__).resolve().parent
_C_SOURCE = re.compile(r"""["']([A-Za-z0-9_]+\.c)["']""")


def module_path(name: str) -> Path | None:
    """The file of module ``hmarl.a.b`` (a module or a package's ``__init__``), or None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def direct_imports(name: str) -> frozenset[str]:
    """The ``hmarl`` modules that module ``name`` imports (``from a import b`` counts ``a.b`` when it is one)."""
    path = module_path(name)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, name, path.name == "__init__.py")
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(m for m in found if module_path(m) is not None)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(root: str) -> set[str]:
    """``root`` and every ``hmarl`` module it imports, directly or not, with their parent packages."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        for module in _with_parents(name):
            if module not in seen and module_path(module) is not None:
                seen.add(module)
                todo.extend(direct_imports(module))
    return seen


def file_closure(root: str) -> list[Path]:
    """The files of :func:`module_closure` plus the C sources those modules compile, sorted."""
    files: set[Path] = set()
    for module in module_closure(root):
        path = module_path(module)
        files.add(path)
        for source in _C_SOURCE.findall(path.read_text()):
            if (path.parent / source).is_file():
                files.add(path.parent / source)
    return sorted(files)
