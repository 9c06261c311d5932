"""Derivatives restricted to the subnetwork (never the full Jacobian, then a slice)."""

from laplace_subnet_ext.jacobians.engine import JACOBIAN_METHODS, SubnetJacobians
from laplace_subnet_ext.jacobians.layout import SubnetLayout, TensorSelection
from laplace_subnet_ext.jacobians.rules import RULES, is_fast

__all__ = [
    "JACOBIAN_METHODS",
    "RULES",
    "SubnetJacobians",
    "SubnetLayout",
    "TensorSelection",
    "is_fast",
]
