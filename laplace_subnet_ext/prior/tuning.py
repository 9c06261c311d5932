r"""Prior-precision tuning on the subnetwork, for every prior structure: the
pieces around laplace's own loop.

laplace's loop (``BaseLaplace.optimize_prior_precision``) runs unchanged on the
posterior; these functions validate its arguments, warn when grid search ends on
the edge of its grid, run laplace's grid search with a reset metric
(:func:`gridsearch`), and maximise the evidence jointly in the prior and the
noise (:func:`optimize_prior_and_noise`). They read and write the posterior only
through its public laplace attributes.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
import torchmetrics
import tqdm
from laplace.utils.enums import PredType, PriorStructure, TuningMethod
from laplace.utils.utils import validate

from laplace_subnet_ext.numerics.evidence import log_det_ratio

__all__ = [
    "check_tuning_arguments",
    "quiet_link_notice",
    "warn_grid_edge",
    "gridsearch",
    "optimize_prior_and_noise",
    "GRID_EDGE",
]

#: a grid-searched prior within this factor of the grid's end is "on the edge"
GRID_EDGE = 1.0001


def check_tuning_arguments(pred_type: str, method: str, prior_structure: str) -> None:
    """``ValueError`` naming the argument for a value laplace does not accept."""
    if pred_type not in (PredType.GLM, PredType.NN):
        raise ValueError(f"pred_type must be 'glm' or 'nn'; got {pred_type!r}.")
    if method not in tuple(TuningMethod):
        raise ValueError(f"method must be 'marglik' or 'gridsearch'; got {method!r}.")
    if prior_structure not in tuple(PriorStructure):
        raise ValueError(
            "prior_structure must be 'scalar', 'layerwise' or 'diag'; got "
            f"{prior_structure!r}."
        )


@contextlib.contextmanager
def quiet_link_notice(method: str, kwargs: dict):
    """laplace's reminder that grid search scores with the probit link, silenced
    where it is moot (the marginal likelihood, or a link the caller chose)."""
    with warnings.catch_warnings():
        if method == TuningMethod.MARGLIK or "link_approx" in kwargs:
            warnings.filterwarnings(
                "ignore", message="By default `link_approx` is `probit`"
            )
        yield


def warn_grid_edge(prior_precision: torch.Tensor, kwargs: dict) -> None:
    """Warn when the grid-searched prior lies on the edge of laplace's grid."""
    base = kwargs.get("log_prior_prec_base", 10.0)
    lo = base ** kwargs.get("log_prior_prec_min", -4)
    hi = base ** kwargs.get("log_prior_prec_max", 4)
    value = float(prior_precision.max())
    if not lo * GRID_EDGE < value < hi / GRID_EDGE:
        warnings.warn(
            f"the tuned prior precision {value:.3g} lies on the edge of the "
            f"search grid [{lo:.3g}, {hi:.3g}]; widen log_prior_prec_min/max.",
            stacklevel=3,
        )


def gridsearch(
    la: Any,
    loss: Any,
    interval: torch.Tensor,
    val_loader: Any,
    pred_type: str,
    link_approx: str = "probit",
    n_samples: int = 100,
    progress_bar: bool = False,
) -> torch.Tensor:
    """laplace's grid search, with a stateful ``torchmetrics`` loss reset
    before every grid value. laplace 0.3 never resets it, so each value is
    scored by the running mean over all values tried so far, which favours
    the last value of an ascending grid. A non-finite score is skipped with a
    warning (laplace's ``argmin`` would select a NaN)."""
    results = []
    for value in tqdm.tqdm(interval, disable=not progress_bar):
        la.prior_precision = value
        if isinstance(loss, torchmetrics.Metric):
            loss.reset()
        try:
            result = validate(
                la,
                val_loader,
                loss,
                pred_type=pred_type,
                link_approx=link_approx,
                n_samples=n_samples,
                dict_key_y=la.dict_key_y,
            )
        except (torch.linalg.LinAlgError, FloatingPointError):
            result = float("inf")
        results.append(float(result))
    scores = torch.tensor(results, dtype=torch.float64)
    bad = ~torch.isfinite(scores)
    if bool(bad.all()):
        raise FloatingPointError(
            "prior grid search: the validation loss is not finite for any prior "
            f"precision in {interval.flatten().tolist()}; check val_loader and "
            "the loss."
        )
    if bool(bad.any()):
        warnings.warn(
            "prior grid search: the validation loss is not finite for prior "
            f"precision(s) {interval.flatten()[bad].tolist()}; they are skipped "
            "(argmin over NaN would pick them).",
            RuntimeWarning,
            stacklevel=4,
        )
    return interval[int(scores.masked_fill(bad, float("inf")).argmin())]


def optimize_prior_and_noise(
    la: Any,
    n_steps: int,
    lr: float,
    tune_sigma_noise: bool,
    spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Adam on :math:`\log\lambda` (keeping the prior's structure) and, if
    ``tune_sigma_noise``, :math:`\log\sigma`, maximising ``la``'s log evidence.
    ``spectrum``: SLQ ``(nodes, weights)`` of H standing in for its eigenvalues
    (large-S path, scalar prior), O(m k) per step."""
    log_prior = la.prior_precision.detach().log().clone().requires_grad_(True)
    log_sigma = la.sigma_noise.detach().log().clone().requires_grad_(tune_sigma_noise)
    opt = torch.optim.Adam(
        [log_prior, log_sigma] if tune_sigma_noise else [log_prior], lr=lr
    )
    for _ in range(n_steps):
        opt.zero_grad()
        sigma = log_sigma.exp() if tune_sigma_noise else None
        if spectrum is None:
            lml = la.log_marginal_likelihood(log_prior.exp(), sigma)
        else:
            la.prior_precision = log_prior.exp()
            if sigma is not None:
                la.sigma_noise = sigma
            lam = la.prior_precision[0]
            nodes, weights = (t.to(lam.dtype) for t in spectrum)
            ratio = log_det_ratio(nodes, la._H_factor, lam, weights)
            lml = la.log_likelihood - 0.5 * (ratio + la.scatter)
        (-lml).backward()
        opt.step()
    la.prior_precision = log_prior.detach().exp()
    if tune_sigma_noise:
        la.sigma_noise = log_sigma.detach().exp()
    return la.prior_precision, la.sigma_noise
