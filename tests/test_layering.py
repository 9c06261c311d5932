"""Folders are floors: a module imports only from its own folder or a lower floor,
at module level or inside a function (a hidden loop is still a loop)."""

from __future__ import annotations

import ast
from pathlib import Path

import laplace_subnet_ext

ROOT = Path(laplace_subnet_ext.__file__).parent
#: floor of each top-level module / folder; imports may only go down (or sideways
#: within one folder). ``prior`` and ``selection`` are one floor and independent.
#: ``numerics`` (pure maths on tensors) sits below ``jacobians``, which uses its
#: output-space contractions.
FLOORS = {
    "_compat": 0,
    "numerics": 1,
    "jacobians": 1.5,
    "prior": 2,
    "selection": 2,
    "posterior": 3,
    "diagnostics": 4,
    "training": 4,
    "__init__": 5,
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "laplace_subnet_ext" and len(parts) > 1:
                yield parts[1], node.lineno


def test_every_import_goes_down_a_floor():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        src = rel[0] if len(rel) > 1 else path.stem
        assert src in FLOORS, f"{path}: folder {src!r} has no floor in FLOORS"
        for dst, line in _imports(path):
            assert dst in FLOORS, f"{path}:{line}: {dst!r} has no floor"
            if dst != src and FLOORS[dst] >= FLOORS[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {dst}")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)
