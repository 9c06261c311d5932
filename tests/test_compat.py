"""Every laplace private the package relies on exists with the expected signature
(one place that fails when a laplace upgrade changes one)."""

from __future__ import annotations

import inspect

import laplace.laplace as front
import pytest
import torch
from laplace import FullSubnetLaplace
from laplace.baselaplace import ParametricLaplace
from laplace.curvature import GGNInterface
from laplace.utils.subnetmask import (
    LargestMagnitudeSubnetMask,
    ScoreBasedSubnetMask,
    SubnetMask,
)
from torch import nn

from laplace_subnet_ext._compat import LAPLACE_PRIVATES, TORCH_PRIVATES

OWNERS = {
    "FullSubnetLaplace": FullSubnetLaplace,
    "GGNInterface": GGNInterface,
    "ParametricLaplace": ParametricLaplace,
    "SubnetMask": SubnetMask,
    "ScoreBasedSubnetMask": ScoreBasedSubnetMask,
    "laplace.laplace": front,
}


def _instance(owner: str = "FullSubnetLaplace"):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    if owner == "SubnetMask":
        return SubnetMask(model)
    if owner == "ScoreBasedSubnetMask":
        return LargestMagnitudeSubnetMask(model, n_params_subnet=2)
    return FullSubnetLaplace(
        model, "classification", subnetwork_indices=torch.arange(4)
    )


@pytest.mark.parametrize("owner,name", sorted(LAPLACE_PRIVATES), ids=lambda v: str(v))
def test_laplace_private_exists_with_signature(owner, name):
    expected = LAPLACE_PRIVATES[(owner, name)]
    obj = OWNERS[owner]
    if expected == "attribute":
        inst = _instance(owner)
        assert (
            name in vars(inst) or name in vars(type(inst)) or hasattr(type(inst), name)
        ), f"laplace's {owner} no longer sets {name}"
        return
    static = inspect.getattr_static(obj, name)
    if expected == "property":
        assert isinstance(static, property), f"{owner}.{name} is not a property"
        return
    params = tuple(inspect.signature(getattr(obj, name)).parameters)
    assert params == expected, f"{owner}.{name}{params} != {expected}"


def test_the_list_covers_what_the_package_uses():
    """Every ``_name`` the package reads from a laplace class is in the list."""
    import pathlib
    import re

    import laplace_subnet_ext

    root = pathlib.Path(laplace_subnet_ext.__file__).parent
    src = "\n".join(p.read_text() for p in root.rglob("*.py"))
    used = set(re.findall(r"(?:self|la|owner|curv|mask)\.(_[A-Za-z]\w*)", src))
    insts = [_instance(o) for o in ("FullSubnetLaplace", "ScoreBasedSubnetMask")]
    laplace_names = {
        n
        for n in used
        if any(n in vars(i) for i in insts)
        or hasattr(FullSubnetLaplace, n)
        or hasattr(GGNInterface, n)
        or hasattr(SubnetMask, n)
    }
    listed = {name for _, name in LAPLACE_PRIVATES}
    assert laplace_names <= listed, sorted(laplace_names - listed)


@pytest.mark.parametrize("owner", sorted(TORCH_PRIVATES))
def test_torch_private_exists(owner):
    import importlib

    if owner == "torch.Tensor":
        obj = torch.zeros(1)
    elif owner == "torch.nn.Module":
        obj = nn.Linear(1, 1)
    else:
        obj = importlib.import_module(owner)
    for name in TORCH_PRIVATES[owner]:
        assert hasattr(obj, name), f"torch's {owner} no longer has {name}"


def test_no_torch_or_laplace_private_outside_compat():
    """The names of TORCH_PRIVATES (read or rebound) and laplace's private
    modules appear in ``_compat.py`` only."""
    import pathlib
    import re

    import laplace_subnet_ext

    root = pathlib.Path(laplace_subnet_ext.__file__).parent
    names = [n for ns in TORCH_PRIVATES.values() for n in ns if n.startswith("_")]
    pattern = re.compile(
        r"\.(" + "|".join(map(re.escape, names)) + r")\b|F\.linear\s*=(?!=)"
    )
    bad = [
        f"{p.relative_to(root)}:{i}"
        for p in root.rglob("*.py")
        if p.name != "_compat.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, bad
