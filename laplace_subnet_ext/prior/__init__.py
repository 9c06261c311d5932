"""Prior precision / mean restricted to the subnetwork, and the S/D rescaling."""

from laplace_subnet_ext.prior.spec import (
    as_prior_tensor,
    restrict_prior_mean,
    restrict_prior_precision,
)

__all__ = ["as_prior_tensor", "restrict_prior_mean", "restrict_prior_precision"]
