r"""Scalar-prior marginal-likelihood tuning at large S, without an eigendecomposition.

The Laplace log evidence with a scalar prior :math:`\lambda = e^t` is, up to terms
free of :math:`t`,

.. math:: \psi(t) = -\tfrac12\Big[\log\det(hH + \lambda I) - S t + \lambda\|\hat\theta_S - \mu_0\|^2\Big].

An exact eigendecomposition costs :math:`O(S^3)` with a memory-bound
tridiagonalisation (hours at S = 40,000 on 2 cores). Here:

1. **Surrogate**: stochastic Lanczos quadrature (:mod:`..numerics.slq`) gives
   nodes and weights that replace the S eigenvalues; :math:`\psi` is then
   maximised over :math:`t` exactly (grid + golden section, O(mk) per value).
2. **Exact correction** (``refine=True``): the exact :math:`\psi` (log det from
   the in-place Cholesky factor) at :math:`\hat t` and :math:`\hat t + \delta`
   gives the exact slope; one Newton step with the surrogate's curvature moves
   to :math:`t^*`, where the exact evidence is evaluated last, so the factor
   left behind is the posterior's at the tuned prior (the predictive reuses it).

Cost: one SLQ run (:math:`k` block products with H) and three Cholesky
factorisations, all inside the two-matrix memory plan.

**Data-space spectrum** (no SLQ, no correction): when ``fit`` found H of rank
:math:`r \le S/8` (:math:`r` = inputs x outputs, e.g. few inputs and many
weights) it kept the square-root rows :math:`R` (:math:`H = R^\top R`) and took
H's nonzero eigenvalues from the ``(r, r)`` Gram matrix :math:`RR^\top`
(:meth:`.DensePrecision.set_data_spectrum`). Then :math:`\psi` is exact for
every :math:`t` and maximised directly; one Cholesky factorisation follows, at
the tuned prior, which the predictive reuses.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from laplace_subnet_ext.numerics.evidence import (
    argmax_log_prior,
    argmax_scalar_evidence,
    scalar_evidence,
)

__all__ = ["tune_scalar_prior_slq", "SLQ_DEFAULTS"]

logger = logging.getLogger("laplace_subnet_ext")

#: SLQ probes m, Lanczos steps k and probe seed of the large-S path (accuracy
#: benchmark: lambda within 0.05 % after the exact correction)
SLQ_DEFAULTS = {"n_probes": 32, "n_steps": 64, "seed": 0}
#: finite-difference step of the surrogate's curvature, the smallest curvature
#: a Newton step divides by, and the largest Newton step in log(lambda)
CURVATURE_STEP = 1e-3
MIN_CURVATURE = 1e-12
MAX_NEWTON_STEP = 0.5


def tune_scalar_prior_slq(
    la: Any,
    n_probes: int = SLQ_DEFAULTS["n_probes"],
    n_steps: int = SLQ_DEFAULTS["n_steps"],
    refine: bool = True,
    delta: float = 0.05,
    seed: int = SLQ_DEFAULTS["seed"],
) -> dict[str, float]:
    r"""Set ``la.prior_precision`` to the scalar maximising the log evidence.

    Parameters
    ----------
    la : DenseSubnetLaplace
        Fitted, scalar prior.
    n_probes, n_steps : int
        SLQ probes :math:`m` and Lanczos steps :math:`k`.
    refine : bool, default=True
        Exact correction with three Cholesky factorisations (see module doc).
    delta : float, default=0.05
        Step in :math:`\log\lambda` of the exact slope.
    seed : int, default=0
        Seed of the probes.

    Returns
    -------
    info : dict
        ``lambda_slq``, ``lambda``, ``log_marglik`` (exact, at ``lambda`` when
        refined) and timings (the posterior keeps them as
        ``marglik_tuning_info``).
    """
    t0 = time.perf_counter()
    h = float(la.precision.h)
    S = la.n_params_subnet
    delta_theta = (la.mean_subnet - la.prior_mean).to(torch.float64)
    sc = float(delta_theta @ delta_theta)
    if la.precision.has_data_spectrum:
        return _tune_on_data_spectrum(la, h, S, sc, t0)
    nodes, weights = la.precision.slq(n_probes, n_steps, seed)
    t_slq = time.perf_counter() - t0

    def psi(t):
        return scalar_evidence(t, nodes, h, sc, weights)

    t_hat = argmax_log_prior(psi)
    info: dict[str, float] = {
        "path": "slq",
        "n_probes": n_probes,
        "n_steps": n_steps,
        "lambda_slq": math.exp(t_hat),
        "seconds_slq": t_slq,
    }
    if not refine:
        la.prior_precision = math.exp(t_hat)
        info["lambda"] = math.exp(t_hat)
    else:
        e = CURVATURE_STEP
        tt = torch.tensor([t_hat - e, t_hat, t_hat + e], dtype=torch.float64)
        p = psi(tt)
        curv = max(float(-(p[0] - 2 * p[1] + p[2]) / e**2), MIN_CURVATURE)

        def exact(t: float) -> float:
            with torch.no_grad():
                return float(la.log_marginal_likelihood(math.exp(t)))

        t1 = time.perf_counter()
        f0, f1 = exact(t_hat), exact(t_hat + delta)
        slope = (f1 - f0) / delta + curv * delta / 2
        step = slope / curv
        t_star = t_hat + max(-MAX_NEWTON_STEP, min(MAX_NEWTON_STEP, step))
        f_star = exact(t_star)  # last: leaves the factor at the tuned prior
        if f_star < f0:  # the Newton step did not improve: keep the SLQ optimum
            t_star, f_star = t_hat, exact(t_hat)
        info.update(
            lambda_=math.exp(t_star),
            log_marglik=f_star,
            log_marglik_at_lambda_slq=f0,
            seconds_exact=time.perf_counter() - t1,
        )
        info["lambda"] = info.pop("lambda_")
    info["seconds"] = time.perf_counter() - t0
    return _record(la, info, f"SLQ lambda={info['lambda_slq']:.4g}, tuned")


def _tune_on_data_spectrum(la: Any, h: float, S: int, sc: float, t0: float) -> dict:
    """The exact maximiser from H's data-space eigenvalues; one factorisation."""
    g = la.precision.data_spectrum()
    t_star = math.log(argmax_scalar_evidence(g, h, sc))
    t1 = time.perf_counter()
    with torch.no_grad():
        f_star = float(la.log_marginal_likelihood(math.exp(t_star)))
    info = {
        "path": "data_spectrum",
        "rank": int(g.numel()),
        "lambda": math.exp(t_star),
        "log_marglik": f_star,
        "seconds_spectrum": t1 - t0,
        "seconds_exact": time.perf_counter() - t1,
        "seconds": time.perf_counter() - t0,
    }
    return _record(la, info, f"exact from the data-space spectrum (rank {g.numel()}),")


def _record(la: Any, info: dict, how: str) -> dict:
    """Log the tuned prior; ``info`` is returned (the posterior keeps it as
    ``marglik_tuning_info``)."""
    logger.info(
        "scalar prior by marginal likelihood, large-S path (S=%d): %s lambda=%.4g "
        "(%.1f s)",
        la.n_params_subnet,
        how,
        info["lambda"],
        info["seconds"],
    )
    return info
