"""Which weights: strategies that choose the S of D weights, in one registry."""

from laplace_subnet_ext.selection.registry import available, get, register

__all__ = ["available", "get", "register"]
