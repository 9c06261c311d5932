"""Diagnostics of a fitted subnetwork posterior: where the prior puts you.

:func:`prior_sweep` tabulates clean and shifted metrics along the prior
precision (O(S^2) per value after one eigendecomposition), with the
marginal-likelihood and validation-grid choices marked; :func:`plot_prior_sweep`
draws it (needs matplotlib).
"""

from laplace_subnet_ext.diagnostics.plot import plot_prior_sweep
from laplace_subnet_ext.diagnostics.sweep import PriorSweep, prior_sweep

__all__ = ["PriorSweep", "prior_sweep", "plot_prior_sweep"]
