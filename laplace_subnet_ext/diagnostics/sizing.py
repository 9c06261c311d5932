r"""Choosing S itself: log marginal likelihood along one selection ranking.

For a grid of sizes S, the top-S weights of the *same* ranking (scores of a
selected score-based mask) get a dense subnetwork Laplace with a marginal-
likelihood-tuned scalar prior; the log evidence and the retained share of the
estimated posterior variance show where adding weights stops paying off
(paper, Fig. 3: test LL rises steeply with S, then plateaus).
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext.posterior import DenseSubnetLaplace

__all__ = ["subnet_size_curve"]


def subnet_size_curve(
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader,
    mask,
    sizes: list[int],
    *,
    tune_prior: bool = True,
    **laplace_kwargs,
) -> list[dict[str, float]]:
    """Log marginal likelihood and retained variance for each S in ``sizes``.

    Parameters
    ----------
    mask : ScoreSubnetMask
        A mask whose ``select`` has run (its ``scores`` give the ranking; a
        ``WassersteinSubnetMask``'s ``variances`` give the retained fraction).
    sizes : list of int
    tune_prior : bool, default=True
        Tune a scalar prior precision by marginal likelihood at every S
        (O(S) per step after one eigendecomposition).
    **laplace_kwargs
        Passed to :class:`~laplace_subnet_ext.DenseSubnetLaplace`.

    Returns
    -------
    rows : list of dict
        ``S``, ``log_marglik``, ``prior_precision``, ``retained_fraction``.
    """
    scores = getattr(mask, "scores", None)
    if scores is None:
        raise ValueError(
            "mask must be selected first (call mask.select(train_loader))."
        )
    order = scores.argsort(descending=True)
    weights = getattr(mask, "variances", None)
    weights = scores.clamp_min(0) if weights is None else weights
    rows = []
    for S in sizes:
        if not 1 <= S <= order.numel():
            raise ValueError(f"sizes must lie in [1, D={order.numel()}]; got {S}.")
        idx = order[:S]
        la = DenseSubnetLaplace(model, likelihood, idx, **laplace_kwargs)
        la.fit(train_loader)
        if tune_prior:
            la.optimize_prior_precision(method="marglik", prior_structure="scalar")
        rows.append(
            {
                "S": S,
                "log_marglik": float(la.log_marginal_likelihood()),
                "prior_precision": float(la.prior_precision.reshape(-1)[0]),
                "retained_fraction": float(weights[idx].sum() / weights.sum()),
            }
        )
    return rows
