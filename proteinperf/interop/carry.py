"""Carry package modules into a flat folder of files that import each other relatively.

transformers' ``trust_remote_code`` runs the ``.py`` files beside a model's weights, found by
following ``from .name import ...`` lines from the file ``auto_map`` names: one flat folder,
no subpackages, no ``from . import name``. ``carry`` copies a module and everything of ours it
imports into such a folder, ``proteinperf.attention.phi`` as ``attention_phi.py``, with each
import of ours rewritten to the relative form. The exported model then runs the package's own
code, not a second copy to keep in step; what is carried follows the imports, so a module
that gains or loses a dependency carries the right files without a list to update.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import proteinperf

PACKAGE = "proteinperf"
PACKAGE_DIR = Path(proteinperf.__file__).resolve().parent


class CarryError(ValueError):
    """An import that cannot be expressed in a flat folder: a bug in a carried module, caught
    by tests/interop/test_carry.py before any export."""


def module_file(module: str) -> Path:
    """The source of a module of ours: ``a/b.py`` or ``a/b/__init__.py``."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise CarryError(f"{module} is not a module of {PACKAGE}")
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise CarryError(f"{module}: no such module in {PACKAGE_DIR}")


def is_module(module: str) -> bool:
    try:
        module_file(module)
    except CarryError:
        return False
    return True


def is_package(module: str) -> bool:
    return module_file(module).name == "__init__.py"


def flat_name(module: str, names: Mapping[str, str] | None = None) -> str:
    """The file stem a module gets in the folder: ``names[module]`` if given, else its dotted
    path below the package with dots as underscores (``attention.phi`` -> ``attention_phi``)."""
    if names and module in names:
        return names[module]
    if module == PACKAGE:
        raise CarryError(f"{PACKAGE}/__init__.py is not carried: import from its modules")
    return module.removeprefix(f"{PACKAGE}.").replace(".", "_")


def _absolute(node: ast.ImportFrom, module: str) -> str | None:
    """The module a ``from X import ...`` in ``module`` names, absolute; None if not ours."""
    if node.level == 0:
        target = node.module or ""
    else:
        base = module.split(".")
        if not is_package(module):
            base = base[:-1]
        if node.level > 1:
            base = base[: -(node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    if target == PACKAGE or target.startswith(f"{PACKAGE}."):
        return target
    return None


def _our_imports(tree: ast.AST, module: str) -> list[tuple[ast.stmt, str]]:
    """(statement, absolute module) of every import of ours in ``tree``, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(f"{PACKAGE}."):
                    raise CarryError(
                        f"{module} line {node.lineno}: `import {alias.name}` cannot be carried; "
                        f"write `from {alias.name.rpartition('.')[0] or alias.name} import ...`"
                    )
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module)
            if target is None:
                continue
            for alias in node.names:
                if is_module(f"{target}.{alias.name}"):
                    raise CarryError(
                        f"{module} line {node.lineno}: imports the module {target}.{alias.name} "
                        "as a name; transformers copies only the files named in `from .x import "
                        f"...` lines, so import the names it uses from {target}.{alias.name}"
                    )
            found.append((node, target))
    return found


def dependencies(roots: Iterable[str]) -> list[str]:
    """``roots`` and every module of ours they import, directly or not (sorted, roots first)."""
    roots = list(roots)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(module_file(module).read_text(), filename=str(module_file(module)))
        todo.extend(target for _, target in _our_imports(tree, module))
    return roots + sorted(seen - set(roots))


def rewrite_imports(source: str, module: str, names: Mapping[str, str] | None = None) -> str:
    """``source`` of ``module`` with each import of ours as ``from .<flat name> import ...``
    (same names, aliases and indentation; every other line unchanged)."""
    lines = source.splitlines(keepends=True)
    edits = []
    for node, target in _our_imports(ast.parse(source), module):
        imported = ", ".join(
            alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
            for alias in node.names
        )
        edits.append((node, f"from .{flat_name(target, names)} import {imported}\n"))
    for node, text in sorted(edits, key=lambda edit: edit[0].lineno, reverse=True):
        first, last = node.lineno - 1, node.end_lineno
        text = lines[first][: node.col_offset] + text  # indentation (or `try:`) kept
        # a comment after the statement on its last line stays with it
        tail = lines[last - 1][node.end_col_offset :].rstrip("\n")
        if tail.strip():
            text = text.rstrip("\n") + tail + "\n"
        lines[first:last] = [text]
    return "".join(lines)


def carry(roots: Iterable[str], folder, names: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``roots`` and their dependencies into ``folder`` as flat files (see the module
    docstring); ``names`` renames modules (e.g. to the file names transformers expects).
    Returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for module in dependencies(roots):
        path = folder / f"{flat_name(module, names)}.py"
        if path in written:
            raise CarryError(f"two carried modules would both be {path.name}")
        path.write_text(rewrite_imports(module_file(module).read_text(), module, names))
        written.append(path)
    return written


__all__ = [
    "CarryError",
    "carry",
    "dependencies",
    "flat_name",
    "module_file",
    "rewrite_imports",
]
