"""Derivatives restricted to the subnetwork (never the full Jacobian, then a slice)."""

from laplace_subnet_ext.jacobians.engine import JACOBIAN_METHODS, SubnetJacobians
from laplace_subnet_ext.jacobians.fast import is_fast
from laplace_subnet_ext.jacobians.layout import SubnetLayout, TensorSelection

__all__ = [
    "JACOBIAN_METHODS",
    "SubnetJacobians",
    "SubnetLayout",
    "TensorSelection",
    "is_fast",
]
