"""Dense subnetwork posterior: pure maths functions + one laplace-compatible class."""

from laplace_subnet_ext.posterior.dense import DenseSubnetLaplace, NotFittedError
from laplace_subnet_ext.posterior.indices import normalize_subnetwork_indices

__all__ = ["DenseSubnetLaplace", "NotFittedError", "normalize_subnetwork_indices"]
