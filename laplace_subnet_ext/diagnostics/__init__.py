"""Diagnostics: where the prior puts you, and what a subnetwork keeps.

:func:`prior_sweep` tabulates clean and shifted metrics along the prior
precision (O(S^2) per value after one eigendecomposition), with the
marginal-likelihood and validation-grid choices marked; :func:`plot_prior_sweep`
draws it (needs matplotlib).

:class:`FullNetworkReference` measures the share of the full network's GLM
predictive variance a subnetwork keeps (and the Wasserstein distance between the
two predictives), exactly; :func:`estimate_full_variance` estimates the
denominator matrix-free; :func:`selection_quality` and
:func:`plot_selection_quality` compare strategies along S; :func:`subnet_size_curve`
gives the log evidence along one selection ranking (choosing S itself).

:mod:`.metrics` (:func:`probit`, :func:`classification_metrics`,
:func:`regression_metrics`, :func:`ood_auroc`) is the one implementation of the
predictive metrics used here, in the tutorials and in the studies.
"""

from laplace_subnet_ext.diagnostics.capture import (
    CaptureResult,
    FullNetworkReference,
    estimate_full_variance,
    gaussian_w2,
)
from laplace_subnet_ext.diagnostics.metrics import (
    classification_metrics,
    ood_auroc,
    probit,
    regression_metrics,
)
from laplace_subnet_ext.diagnostics.plot import plot_prior_sweep
from laplace_subnet_ext.diagnostics.quality import (
    plot_selection_quality,
    selection_quality,
)
from laplace_subnet_ext.diagnostics.sizing import subnet_size_curve
from laplace_subnet_ext.diagnostics.sweep import (
    PriorSweep,
    glm_along_priors,
    glm_predict_sets,
    grid_walk,
    gridsearch_walk,
    prior_sweep,
)

__all__ = [
    "PriorSweep",
    "prior_sweep",
    "glm_along_priors",
    "gridsearch_walk",
    "grid_walk",
    "glm_predict_sets",
    "plot_prior_sweep",
    "CaptureResult",
    "FullNetworkReference",
    "estimate_full_variance",
    "gaussian_w2",
    "selection_quality",
    "plot_selection_quality",
    "subnet_size_curve",
    "probit",
    "classification_metrics",
    "regression_metrics",
    "ood_auroc",
]
