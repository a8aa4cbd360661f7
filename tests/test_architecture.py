"""The folder tree is the architecture: packages import only along the data path (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnstats"
# top to bottom: a module may import its own floor or a lower one
FLOORS = {"__main__": 9, "api": 8, "cli": 8, "torch": 7, "running": 6, "output": 5, "observers": 4, "inputs": 3,
          "decoding": 2, "statistics": 1, "limits": 0, "jsonio": 0, "registry": 0, "__init__": 0}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield path, parts


def _floor(parts: tuple[str, ...]) -> int | None:
    return FLOORS.get(parts[1] if len(parts) > 1 else "__init__")


def _imports(path: Path, parts: tuple[str, ...]):
    """The bnstats modules ``path`` imports (at any depth of its code), as dotted tuples."""
    here = parts[:-1]  # the package the module is in (for __init__, the package itself)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                if node.module:
                    yield (*base, *node.module.split("."))
                else:
                    for alias in node.names:
                        yield (*base, alias.name)
            elif node.module and node.module.split(".")[0] == "bnstats":
                yield tuple(node.module.split("."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bnstats":
                    yield tuple(alias.name.split("."))


def test_every_package_is_on_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages | modules <= set(FLOORS), "a new package or top-level module needs its floor in FLOORS"


@pytest.mark.parametrize("path, parts", list(_modules()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else "")
def test_imports_run_only_down_the_stack(path, parts):
    mine = _floor(parts)
    upward = [".".join(t) for t in _imports(path, parts)
              if t[1:2] != ("__version__",) and (_floor(t) or 0) > mine]
    assert not upward, f"{'/'.join(parts)} (floor {mine}) imports up the stack: {upward}"


def test_every_package_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
