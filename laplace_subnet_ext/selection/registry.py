"""Registry of subnetwork selection strategies (mask classes) by name.

Every entry is a class following laplace's ``SubnetMask`` protocol:
``Mask(model=..., ...)`` then ``.select(train_loader) -> indices``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["available", "get", "register"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str, cls: type | None = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as a decorator ``@register("name")``.

    Raises
    ------
    ValueError
        If ``name`` is taken and ``overwrite`` is False.
    TypeError
        If ``cls`` has no ``select`` method.
    """

    def deco(c: T) -> T:
        if not (isinstance(c, type) and hasattr(c, "select")):
            raise TypeError(
                f"selection strategy {name!r} must be a class with a select() method "
                f"(a laplace SubnetMask); got {c!r}."
            )
        if name in _REGISTRY and _REGISTRY[name] is not c and not overwrite:
            raise ValueError(
                f"selection strategy {name!r} is already registered as "
                f"{_REGISTRY[name].__name__}; pass overwrite=True to replace it."
            )
        _REGISTRY[name] = c
        return c

    return deco if cls is None else deco(cls)


def get(name: str) -> type:
    """The strategy class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown selection strategy {name!r}; available: {available()}. "
            "Register your own with laplace_subnet_ext.selection.register(name, cls)."
        ) from None


def available() -> list[str]:
    """Sorted names of all registered strategies."""
    return sorted(_REGISTRY)


def _register_laplace_masks(reg: Callable = register) -> None:
    from laplace.utils import subnetmask as sm

    for name, cls in {
        "laplace_random": sm.RandomSubnetMask,
        "laplace_largest_magnitude": sm.LargestMagnitudeSubnetMask,
        "laplace_largest_variance_diag_laplace": sm.LargestVarianceDiagLaplaceSubnetMask,
        "laplace_largest_variance_swag": sm.LargestVarianceSWAGSubnetMask,
        "laplace_param_name": sm.ParamNameSubnetMask,
        "laplace_module_name": sm.ModuleNameSubnetMask,
        "laplace_last_layer": sm.LastLayerSubnetMask,
    }.items():
        reg(name, cls)


_register_laplace_masks()
