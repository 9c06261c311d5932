"""Which weights: strategies that choose the S of D weights, in one registry.

``available()`` lists names, ``get(name)`` returns the class, ``register(name, cls)``
adds one. laplace's own masks are registered as ``laplace_*``.
"""

from laplace_subnet_ext.selection.base import ScoreSubnetMask, resolve_n_params_subnet
from laplace_subnet_ext.selection.registry import available, get, register
from laplace_subnet_ext.selection.scores import (
    GradientEnergyMask,
    GradientLaplaceMask,
    MagnitudeMask,
    OBDMask,
    RandomMask,
)
from laplace_subnet_ext.selection.wasserstein import VARIANCES, WassersteinSubnetMask

__all__ = [
    "available",
    "get",
    "register",
    "ScoreSubnetMask",
    "resolve_n_params_subnet",
    "RandomMask",
    "MagnitudeMask",
    "OBDMask",
    "GradientEnergyMask",
    "GradientLaplaceMask",
    "WassersteinSubnetMask",
    "VARIANCES",
]

from laplace_subnet_ext.selection.structured import (  # noqa: E402
    LastLayerMask,
    NameMask,
    StructuredMask,
)

__all__ += ["NameMask", "LastLayerMask", "StructuredMask"]

from laplace_subnet_ext.selection.greedy import GreedyLaplaceMask  # noqa: E402

__all__ += ["GreedyLaplaceMask"]
