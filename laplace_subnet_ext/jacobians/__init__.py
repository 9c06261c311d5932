"""Derivatives restricted to the subnetwork (never the full Jacobian, then a slice)."""

from laplace_subnet_ext.jacobians.engine import JACOBIAN_METHODS, SubnetJacobians
from laplace_subnet_ext.jacobians.layout import SubnetLayout, TensorSelection
from laplace_subnet_ext.jacobians.rules import (
    RULES,
    Rule,
    Use,
    covered_modules,
    is_fast,
    linear_uses,
    register_rule,
    unregister_rule,
)

__all__ = [
    "JACOBIAN_METHODS",
    "RULES",
    "Rule",
    "Use",
    "covered_modules",
    "linear_uses",
    "register_rule",
    "unregister_rule",
    "SubnetJacobians",
    "SubnetLayout",
    "TensorSelection",
    "is_fast",
]
