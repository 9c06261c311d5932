r"""Prior-precision sweep: in-distribution and shifted metrics along :math:`\lambda`.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

The GLM predictive of a fitted :class:`~laplace_subnet_ext.DenseSubnetLaplace`
with a scalar prior depends on :math:`\lambda` only through
:math:`(hG + \lambda I)^{-1}`. With :math:`G = V \operatorname{diag}(g) V^\top`
(one eigendecomposition, cached by the posterior) and the projected Jacobians
:math:`J V` of each evaluation set (formed once),

.. math:: \operatorname{Var}[f(x)] = (J V) \operatorname{diag}\big(1/(h g + \lambda)\big) (J V)^\top,

so every grid value costs :math:`O(n c^2 S)`: no refit, no new Jacobian, no
factorisation. The sweep marks where the marginal likelihood
(``optimize_prior_precision(method="marglik")``) and a validation-NLL grid search
over the same grid put :math:`\lambda`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from laplace_subnet_ext.diagnostics.metrics import (
    classification_metrics,
    probit,
    regression_metrics,
)
from laplace_subnet_ext.jacobians.batching import split_batch

__all__ = [
    "PriorSweep",
    "prior_sweep",
    "glm_along_priors",
    "grid_walk",
    "gridsearch_walk",
    "glm_predict_sets",
]


@dataclass
class PriorSweep:
    """Result of :func:`prior_sweep`.

    Attributes
    ----------
    prior_precisions : torch.Tensor
        ``(g,)`` the subnetwork prior precisions swept.
    rows : list of dict
        One row per (prior precision, evaluation set): ``prior_precision``,
        ``full_network_prior_precision`` (:math:`\\lambda D / S` when the posterior
        uses ``prior_rescaling``, else equal), ``set``, ``nll`` and, for
        classification, ``acc``, ``ece``, ``brier``; for regression ``rmse``.
    marks : dict
        ``"marglik"`` and ``"gridsearch"`` -> the tuned prior precision.
    """

    prior_precisions: torch.Tensor
    rows: list[dict] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def column(self, metric: str, set_name: str) -> list[float]:
        """``metric`` along the grid for one evaluation set."""
        return [r[metric] for r in self.rows if r["set"] == set_name]

    def at(self, prior_precision: float, set_name: str) -> dict:
        """The row of the grid value closest (in log) to ``prior_precision``."""
        rows = [r for r in self.rows if r["set"] == set_name]
        return min(
            rows, key=lambda r: abs(math.log(r["prior_precision"] / prior_precision))
        )


def _batches(data, dict_key_y: str) -> Iterable[tuple]:
    """``(X, y)`` of one set given as ``(X, y)`` or as a loader of tuple / dict
    batches (:func:`~laplace_subnet_ext.jacobians.batching.split_batch`)."""
    if isinstance(data, tuple | list) and len(data) == 2 and torch.is_tensor(data[1]):
        yield data[0], data[1]
        return
    for batch in data:
        yield split_batch(batch, dict_key_y)


def _projected(la, data, precision):
    """``(J V, f, y)`` of one evaluation set, block by block."""
    JVs, fs, ys = [], [], []
    for X, y in _batches(data, la.dict_key_y):
        Js, f = la.jacobians(X)
        JVs.append(precision.project(Js))
        fs.append(f)
        ys.append(y.to(f.device))
    return torch.cat(JVs), torch.cat(fs), torch.cat(ys)


def _metrics(la, f, f_var, y, n_bins: int) -> dict[str, float]:
    if la.likelihood == "regression":
        return regression_metrics(f, f_var, y, float(la.sigma_noise))
    return classification_metrics(probit(f, f_var), y, n_bins)


def _check_scalar_prior(la, what: str) -> None:
    la._check_H_init()
    if la.prior_structure != "scalar":
        raise ValueError(
            f"{what} needs a scalar prior precision; got prior structure "
            f"{la.prior_structure!r}. Set la.prior_precision to a float first."
        )


def _as_grid(prior_precisions) -> torch.Tensor:
    grid = torch.as_tensor(prior_precisions, dtype=torch.float64).flatten()
    if grid.numel() == 0 or not bool((grid > 0).all()):
        raise ValueError(
            f"prior_precisions must be non-empty and positive; got {grid.tolist()}."
        )
    return grid


def glm_along_priors(
    la, X, prior_precisions, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""GLM predictive mean and covariance at several scalar prior precisions.

    One Jacobian pass over ``X`` and the posterior's cached eigendecomposition
    serve every value: at each :math:`\lambda` the result equals
    ``la.prior_precision = lambda; la.functional_variance(...)`` (what
    ``la(X, pred_type="glm")`` uses), without a factorisation per value.

    Parameters
    ----------
    la : DenseSubnetLaplace
        Fitted, with a scalar prior (left as it was).
    X : torch.Tensor or batch
        Inputs (a tensor is split into blocks of ``batch_size``).
    prior_precisions : sequence of float
        Subnetwork prior precisions.

    Returns
    -------
    f_mu : torch.Tensor
        ``(n, c)`` MAP outputs.
    f_var : torch.Tensor
        ``(g, n, c, c)`` output covariances, one per prior precision.
    """
    _check_scalar_prior(la, "glm_along_priors")
    grid = _as_grid(prior_precisions)
    precision = la.precision
    precision.cache_eigh()
    blocks = (
        [X[i : i + batch_size] for i in range(0, len(X), batch_size)]
        if torch.is_tensor(X)
        else [X]
    )
    fs, fvars = [], []
    with torch.no_grad():
        for xb in blocks:
            Js, f = la.jacobians(xb)
            JV = precision.project(Js)
            fvars.append(precision.variance_along(JV, grid.tolist()).to(f.dtype))
            fs.append(f)
    return torch.cat(fs), torch.cat(fvars, dim=1)


def prior_sweep(
    la,
    val,
    shifted: Mapping[str, object] | None = None,
    *,
    prior_precisions: torch.Tensor | None = None,
    n_bins: int = 10,
    marglik_kwargs: Mapping | None = None,
) -> PriorSweep:
    r"""Clean (and shifted) NLL / ECE / accuracy / Brier along the prior precision.

    Parameters
    ----------
    la : DenseSubnetLaplace
        Fitted, with a scalar prior. Its prior precision is left as it was.
    val : DataLoader or (X, y)
        Validation set: the grid search's criterion and the ``"val"`` rows.
    shifted : dict, optional
        ``name -> DataLoader or (X, y)``: further sets reported along the grid.
    prior_precisions : torch.Tensor, optional
        Subnetwork prior precisions to sweep; default ``logspace(-2, 4, 25)``.
    n_bins : int, default=10
        Bins of the expected calibration error (equal width, as torchmetrics).
    marglik_kwargs : dict, optional
        Passed to ``optimize_prior_precision(method="marglik")`` for the mark.

    Returns
    -------
    PriorSweep
        Rows per grid value and set; marks ``"marglik"`` (the marginal-likelihood
        optimum, continuous) and ``"gridsearch"`` (the grid value of smallest
        validation NLL, as ``optimize_prior_precision(method="gridsearch")`` with
        the same grid and an NLL loss).

    Raises
    ------
    ValueError
        A prior structure other than scalar; an empty grid or a non-positive value.
    RuntimeError
        ``la`` is not fitted.
    """
    _check_scalar_prior(la, "prior_sweep")
    grid = _as_grid(
        torch.logspace(-2, 4, 25) if prior_precisions is None else prior_precisions
    )
    saved = la.prior_precision.detach().clone()
    precision = la.precision
    precision.cache_eigh()
    sets = {"val": val, **dict(shifted or {})}
    projected = {name: _projected(la, data, precision) for name, data in sets.items()}
    scale = la.n_params / la.n_params_subnet if la.prior_rescaling else 1.0
    sweep = PriorSweep(grid)
    with torch.no_grad():
        for lam in grid.tolist():
            for name, (JV, f, y) in projected.items():
                f_var = precision.variance_along(JV, [lam])[0].to(f.dtype)
                row = {
                    "prior_precision": lam,
                    "full_network_prior_precision": lam * scale,
                    "set": name,
                }
                row.update(_metrics(la, f, f_var, y, n_bins))
                sweep.rows.append(row)
    val_nll = torch.tensor(sweep.column("nll", "val"))
    sweep.marks["gridsearch"] = float(grid[int(val_nll.argmin())])
    try:
        la.optimize_prior_precision(method="marglik", **dict(marglik_kwargs or {}))
        sweep.marks["marglik"] = float(la.prior_precision)
    finally:
        la.prior_precision = saved
    return sweep


# ------------------------------------------- large S: one factor per value
def grid_walk(score, n: int, start: int) -> tuple[int, dict[int, float]]:
    """Index of a local minimum of ``score`` over ``0 .. n-1``, found by walking
    downhill from ``start`` (each index scored once): the grid minimum where the
    score is unimodal along the grid.

    Parameters
    ----------
    score : callable
        ``index -> float``.
    n : int
        Grid length.
    start : int
        First index scored.

    Returns
    -------
    index : int
        The local minimum reached.
    seen : dict
        Every index scored -> its score.
    """
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n}); got {start}.")
    seen: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in seen:
            seen[i] = float(score(i))
        return seen[i]

    i = start
    while True:
        best = min([j for j in (i - 1, i, i + 1) if 0 <= j < n], key=at)
        if best == i:
            return i, seen
        i = best


def glm_predict_sets(
    la, sets, prior_precision: float | None = None, batch_size: int = 250
) -> list[torch.Tensor]:
    """The GLM predictive on several input sets at one prior precision, from one
    factorisation of the posterior precision (large S: no eigendecomposition).

    Setting the prior frees the factor; it is set once, so one factorisation
    serves every set and block.

    Parameters
    ----------
    la : DenseSubnetLaplace
        Fitted.
    sets : sequence of torch.Tensor
        Input sets, each run ``batch_size`` inputs at a time.
    prior_precision : float, optional
        Set first (default: the posterior's current prior).

    Returns
    -------
    list of torch.Tensor
        Per set: ``(n, c)`` probit probabilities (classification) or ``(n, c, 2)``
        mean and variance (regression; the noise variance not added).
    """
    la._check_H_init()
    if prior_precision is not None:
        la.prior_precision = float(prior_precision)
    out = []
    with torch.no_grad():
        for x in sets:
            parts = []
            for i in range(0, len(x), batch_size):
                Js, f = la.jacobians(x[i : i + batch_size])
                f_var = la.functional_variance(Js)
                parts.append(
                    torch.stack([f, f_var.diagonal(dim1=-2, dim2=-1)], -1)
                    if la.likelihood == "regression"
                    else probit(f, f_var)
                )
            out.append(torch.cat(parts))
    return out


def gridsearch_walk(
    la,
    val,
    prior_precisions=None,
    start: float | None = None,
    n_bins: int = 10,
) -> tuple[float, dict[float, float]]:
    """The validation-NLL grid choice of a scalar prior without an
    eigendecomposition (large S, where :math:`O(S^3)` is hours): one Cholesky
    factorisation per grid value visited by :func:`grid_walk`, from the grid
    value nearest ``start`` (default: the current prior, e.g. the marginal
    likelihood's); the validation Jacobians are formed once. Equals the full
    grid search where the validation NLL has one valley along the grid.

    Parameters
    ----------
    la : DenseSubnetLaplace
        Fitted; left at the chosen prior.
    val : (X, y) or loader
        Validation set.
    prior_precisions : sequence of float, optional
        Ascending grid; default ``logspace(-2, 4, 13)`` (the paper's).
    start : float, optional
        Where the walk starts.

    Returns
    -------
    prior_precision : float
    visited : dict
        Every grid value visited -> its validation NLL.
    """
    _check_scalar_prior(la, "gridsearch_walk")
    grid = _as_grid(
        torch.logspace(-2, 4, 13) if prior_precisions is None else prior_precisions
    )
    Js, fs, ys = [], [], []
    with torch.no_grad():
        for X, y in _batches(val, la.dict_key_y):
            J, f = la.jacobians(X)
            Js.append(J)
            fs.append(f)
            ys.append(y.to(f.device))
    J, f, y = torch.cat(Js), torch.cat(fs), torch.cat(ys)
    t0 = math.log(float(la.prior_precision) if start is None else float(start))
    first = int((grid.log() - t0).abs().argmin())

    def val_nll(i: int) -> float:
        la.prior_precision = float(grid[i])
        with torch.no_grad():
            return _metrics(la, f, la.functional_variance(J), y, n_bins)["nll"]

    i, seen = grid_walk(val_nll, len(grid), first)
    la.prior_precision = float(grid[i])
    return float(grid[i]), {float(grid[j]): v for j, v in sorted(seen.items())}
