r"""The Laplace evidence with a scalar prior, from a spectrum: pure functions.

With :math:`P = hH + \lambda I` (:math:`h = 1/(\sigma^2 T)`) and :math:`H`'s
spectrum given as nodes :math:`g_i` with weights :math:`w_i` (exact
eigenvalues: all weights 1; stochastic Lanczos quadrature: weights summing to
S), the log-determinant ratio is

.. math:: \log\det P - \log\det P_0 = \sum_i w_i \operatorname{log1p}(h g_i/\lambda),

formed without the cancellation of :math:`\log\det P - S\log\lambda` (the two
terms nearly cancel; in float32 about 1e-3 nats at S = 10,000). The part of the
log evidence that depends on :math:`t = \log\lambda` is

.. math:: \psi(t) = -\tfrac12\Big[\sum_i w_i \operatorname{log1p}(h g_i e^{-t}) + e^t \|\hat\theta - \mu_0\|^2\Big],

maximised by :func:`argmax_scalar_evidence` (a grid over ``LOG_LAMBDA_RANGE``,
then golden section). Used by the posterior's exact path, the large-S path, the
noise tuning surrogate and the diagnostics' full-network reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "log_det_ratio",
    "scalar_evidence",
    "argmax_log_prior",
    "argmax_scalar_evidence",
    "LOG_LAMBDA_RANGE",
]

#: search interval of log(lambda), its grid points and golden-section steps
LOG_LAMBDA_RANGE = (-20.0, 20.0)
GRID_POINTS = 401
GOLDEN_STEPS = 80


def log_det_ratio(
    nodes: torch.Tensor,
    h: torch.Tensor | float,
    lam: torch.Tensor | float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r""":math:`\sum_i w_i\operatorname{log1p}(h g_i/\lambda)` (``weights`` None: all
    1); differentiable in ``h`` and ``lam``. ``lam`` may be ``(m, 1)`` for m
    values at once (then ``(m,)``)."""
    terms = torch.log1p(h * nodes / lam)
    return (terms if weights is None else weights * terms).sum(-1)


def scalar_evidence(
    t: torch.Tensor,
    nodes: torch.Tensor,
    h: float,
    scatter: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r""":math:`\psi(t)` for a vector of :math:`t = \log\lambda` (float64)."""
    lam = t.exp()[:, None]
    return -0.5 * (log_det_ratio(nodes, h, lam, weights) + lam[:, 0] * scatter)


def argmax_log_prior(
    fn: Callable[[torch.Tensor], torch.Tensor],
    lo: float = LOG_LAMBDA_RANGE[0],
    hi: float = LOG_LAMBDA_RANGE[1],
) -> float:
    """The maximiser of a unimodal ``fn`` over ``[lo, hi]``: the best of a grid of
    ``GRID_POINTS``, then ``GOLDEN_STEPS`` of golden section around it."""
    grid = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64)
    i = int(fn(grid).argmax())
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, GRID_POINTS - 1)])
    r = (math.sqrt(5) - 1) / 2
    for _ in range(GOLDEN_STEPS):
        c, d = b - r * (b - a), a + r * (b - a)
        fc, fd = fn(torch.tensor([c, d], dtype=torch.float64)).tolist()
        if fc > fd:
            b = d
        else:
            a = c
    return (a + b) / 2


def argmax_scalar_evidence(
    nodes: torch.Tensor,
    h: float,
    scatter: float,
    weights: torch.Tensor | None = None,
) -> float:
    r"""The scalar prior :math:`\lambda` that maximises :math:`\psi` (see module)."""
    nodes = nodes.to(torch.float64)
    w = None if weights is None else weights.to(torch.float64)
    t = argmax_log_prior(lambda t: scalar_evidence(t, nodes, h, scatter, w))
    return math.exp(t)
