"""Registration into laplace.Laplace: deterministic, idempotent, reversible."""

from __future__ import annotations

import laplace
import laplace.laplace as front
import pytest
import torch
from laplace import FullSubnetLaplace, Laplace
from laplace.baselaplace import BaseLaplace

import laplace_subnet_ext
from laplace_subnet_ext import DenseSubnetLaplace
from tests.cases import mlp


def dispatch_map():
    return {c._key: c for c in front._all_subclasses(BaseLaplace) if hasattr(c, "_key")}


def build(**kw):
    return Laplace(mlp(), "classification", "subnetwork", "full", **kw)


def test_front_door_returns_ours_and_is_a_full_subnet_laplace():
    la = build(subnetwork_indices=torch.tensor([0, 3, 5]))
    assert type(la) is DenseSubnetLaplace
    assert isinstance(la, FullSubnetLaplace)


def test_unregister_restores_upstream_and_register_is_idempotent():
    laplace_subnet_ext.unregister()
    assert not laplace_subnet_ext.is_registered()
    la = build(subnetwork_indices=torch.tensor([0, 3, 5]))
    assert type(la) is FullSubnetLaplace
    assert front._all_subclasses is front.__dict__["_all_subclasses"]
    laplace_subnet_ext.register()
    laplace_subnet_ext.register()
    assert type(build(subnetwork_indices=torch.tensor([1]))) is DenseSubnetLaplace


def test_every_other_key_resolves_as_before():
    registered = dispatch_map()
    laplace_subnet_ext.unregister()
    upstream = dispatch_map()
    laplace_subnet_ext.register()
    assert registered[("subnetwork", "full")] is DenseSubnetLaplace
    assert upstream[("subnetwork", "full")] is FullSubnetLaplace
    others = {k for k in upstream if len(k) == 2} - {("subnetwork", "full")}
    assert others, "laplace exposes other keys"
    for key in others:
        assert registered.get(key) is upstream[key], key
    # no key of ours leaks while unregistered other than the inert one
    assert not any(v is DenseSubnetLaplace for k, v in upstream.items() if len(k) == 2)


def test_override_wins_regardless_of_set_order(monkeypatch):
    """Shuffle the upstream subclass order: our class still wins its key."""
    import random

    original = laplace_subnet_ext._compat._ORIGINAL
    for seed in range(5):
        rng = random.Random(seed)

        def shuffled(cls, _o=original, _r=rng):
            out = list(_o(cls))
            _r.shuffle(out)
            return out

        monkeypatch.setattr(laplace_subnet_ext._compat, "_ORIGINAL", shuffled)
        assert dispatch_map()[("subnetwork", "full")] is DenseSubnetLaplace


def test_diag_subnet_and_other_structures_untouched():
    la = Laplace(
        mlp(),
        "regression",
        "subnetwork",
        "diag",
        subnetwork_indices=torch.tensor([0, 1]),
    )
    assert type(la) is laplace.DiagSubnetLaplace
    with pytest.raises(ValueError):
        Laplace(
            mlp(),
            "regression",
            "subnetwork",
            "kron",
            subnetwork_indices=torch.tensor([0]),
        )


def test_package_never_imports_torchvision():
    import subprocess
    import sys

    code = (
        "import sys, laplace_subnet_ext; "
        "print('torchvision' in sys.modules and 'laplace_subnet_ext' in "
        "str(sys.modules['torchvision'].__dict__.get('__spec__')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import ast
    import pathlib

    for path in pathlib.Path(laplace_subnet_ext.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "torchvision" for n in names), path
