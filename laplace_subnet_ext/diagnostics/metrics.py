r"""Predictive metrics, one implementation for the package, the tutorials and the studies.

Index conventions: ``n`` inputs, ``c``/``k`` outputs.

* :func:`probit` - laplace's probit approximation of the GLM predictive,
  :math:`\operatorname{softmax}(f / \sqrt{1 + \pi \operatorname{diag}\Sigma_f / 8})`;
* :func:`classification_metrics` - accuracy, NLL, expected calibration error
  (equal-width confidence bins :math:`(\ell, u]`, as ``torchmetrics``) and the
  Brier score of probabilities;
* :func:`regression_metrics` - Gaussian NLL and RMSE of a mean and variance;
* :func:`ood_auroc` - AUROC of predictive entropy separating out- from
  in-distribution inputs (Mann-Whitney, ties counted one half).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "probit",
    "classification_metrics",
    "regression_metrics",
    "entropy",
    "ood_auroc",
    "ECE_BINS",
]

#: confidence bins of the expected calibration error (torchmetrics' default 15 is
#: not used: every study here reports 10)
ECE_BINS = 10
#: probabilities are clamped below by this before the log
_EPS = 1e-12


def probit(f: torch.Tensor, f_var: torch.Tensor) -> torch.Tensor:
    """``(n, c)`` class probabilities from logits ``f`` ``(n, c)`` and their GLM
    covariance ``f_var`` ``(n, c, k)`` (its diagonal is used) or variance ``(n, c)``."""
    var = f_var.diagonal(dim1=-2, dim2=-1) if f_var.ndim == f.ndim + 1 else f_var
    return torch.softmax(f / torch.sqrt(1.0 + math.pi / 8 * var), dim=-1)


def classification_metrics(
    probs: torch.Tensor, y: torch.Tensor, n_bins: int = ECE_BINS
) -> dict[str, float]:
    """``acc``, ``nll``, ``ece`` and ``brier`` of ``(n, c)`` probabilities against
    labels ``(n,)``, computed in float64."""
    if probs.ndim != 2 or y.shape != probs.shape[:1]:
        raise ValueError(
            f"probs must be (n, c) and y (n,); got {tuple(probs.shape)} and "
            f"{tuple(y.shape)}."
        )
    p = probs.detach().double().clamp_min(_EPS)
    y = y.to(p.device)
    conf, pred = p.max(-1)
    hit = (pred == y).double()
    bins = ((conf * n_bins).ceil().long() - 1).clamp(0, n_bins - 1)
    ece = sum(
        float(m.double().mean() * (conf[m].mean() - hit[m].mean()).abs())
        for b in range(n_bins)
        if (m := bins == b).any()
    )
    return {
        "acc": float(hit.mean()),
        "nll": float(F.nll_loss(p.log(), y)),
        "ece": ece,
        "brier": float((p - F.one_hot(y, p.shape[-1])).pow(2).sum(-1).mean()),
    }


def regression_metrics(
    f: torch.Tensor, f_var: torch.Tensor, y: torch.Tensor, sigma_noise: float
) -> dict[str, float]:
    """Gaussian ``nll`` (summed over outputs, mean over inputs) and ``rmse`` of the
    GLM predictive mean ``f`` ``(n, c)`` and covariance ``f_var`` ``(n, c, k)`` plus
    observation noise."""
    f, y = f.detach().double(), y.detach().double().reshape(f.shape)
    var = f_var.detach().double().diagonal(dim1=-2, dim2=-1) + float(sigma_noise) ** 2
    nll = 0.5 * ((y - f) ** 2 / var + var.log() + math.log(2 * math.pi))
    return {
        "nll": float(nll.sum(-1).mean()),
        "rmse": float((y - f).pow(2).mean().sqrt()),
    }


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``(n,)`` entropy of ``(n, c)`` probabilities (float64)."""
    p = probs.detach().double().clamp_min(_EPS)
    return -(p * p.log()).sum(-1)


def ood_auroc(probs_in: torch.Tensor, probs_out: torch.Tensor) -> float:
    """AUROC of predictive entropy for telling ``probs_out`` (positives) from
    ``probs_in``: the probability that an out-of-distribution input has the
    higher entropy, ties counted one half."""
    s_in, s_out = entropy(probs_in), entropy(probs_out)
    scores = torch.cat([s_in, s_out])
    # average ranks (1-based), ties share their mean rank
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).double()
    ranks = (upper - (counts.double() - 1) / 2)[inverse]
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))
