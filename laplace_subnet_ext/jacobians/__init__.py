"""Derivatives restricted to the subnetwork (never the full Jacobian, then a slice)."""

from laplace_subnet_ext.jacobians.engine import JACOBIAN_METHODS, SubnetJacobians
from laplace_subnet_ext.jacobians.layout import SubnetLayout, TensorSelection
from laplace_subnet_ext.jacobians.rules import (
    RULES,
    Outer,
    Rule,
    Use,
    bias_use,
    channels,
    covered_modules,
    feature_rows,
    is_fast,
    leading,
    linear_uses,
    register_layout_owner,
    register_rule,
    unregister_rule,
)

__all__ = [
    "JACOBIAN_METHODS",
    "RULES",
    "Outer",
    "Rule",
    "Use",
    "bias_use",
    "channels",
    "covered_modules",
    "feature_rows",
    "leading",
    "linear_uses",
    "register_layout_owner",
    "register_rule",
    "unregister_rule",
    "SubnetJacobians",
    "SubnetLayout",
    "TensorSelection",
    "is_fast",
]
