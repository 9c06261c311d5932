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
from torch import nn

from laplace_subnet_ext._compat import LAPLACE_PRIVATES

OWNERS = {
    "FullSubnetLaplace": FullSubnetLaplace,
    "GGNInterface": GGNInterface,
    "ParametricLaplace": ParametricLaplace,
    "laplace.laplace": front,
}


def _instance():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    return FullSubnetLaplace(
        model, "classification", subnetwork_indices=torch.arange(4)
    )


@pytest.mark.parametrize("owner,name", sorted(LAPLACE_PRIVATES), ids=lambda v: str(v))
def test_laplace_private_exists_with_signature(owner, name):
    expected = LAPLACE_PRIVATES[(owner, name)]
    obj = OWNERS[owner]
    if expected == "attribute":
        inst = _instance()
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
    used = set(re.findall(r"(?:self|la|owner|curv)\.(_[A-Za-z]\w*)", src))
    inst = _instance()
    laplace_names = {
        n
        for n in used
        if n in vars(inst) or hasattr(FullSubnetLaplace, n) or hasattr(GGNInterface, n)
    }
    listed = {name for _, name in LAPLACE_PRIVATES}
    assert laplace_names <= listed, sorted(laplace_names - listed)
