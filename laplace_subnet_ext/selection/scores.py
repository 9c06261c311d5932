r"""Simple score-based strategies: random, magnitude, OBD saliency, gradient energy,
Gradient-Laplace.

Index conventions: ``p`` all parameters, ``b`` batch.
"""

from __future__ import annotations

import torch
from torch import nn

from laplace_subnet_ext.selection.base import ScoreSubnetMask
from laplace_subnet_ext.selection.registry import register
from laplace_subnet_ext.selection.variance import diag_curvature

__all__ = [
    "RandomMask",
    "MagnitudeMask",
    "OBDMask",
    "GradientEnergyMask",
    "GradientLaplaceMask",
]


@register("random")
class RandomMask(ScoreSubnetMask):
    """Uniformly random weights (the paper's baseline); ``seed`` makes it reproducible."""

    def __init__(
        self, model: nn.Module, n_params_subnet, *, seed: int = 0, **kw
    ) -> None:
        super().__init__(model, n_params_subnet, **kw)
        self.seed = seed

    def compute_param_scores(self, train_loader) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(self._n_params, generator=g).to(self._device)


@register("magnitude")
class MagnitudeMask(ScoreSubnetMask):
    """Largest :math:`|\\theta_d|` (magnitude pruning, Han et al., 2015, kept instead of cut)."""

    def compute_param_scores(self, train_loader) -> torch.Tensor:
        return self.parameter_vector.abs()


class _DataScoreMask(ScoreSubnetMask):
    """A score that needs the likelihood and the training data."""

    def __init__(
        self, model: nn.Module, n_params_subnet, *, likelihood: str, **kw
    ) -> None:
        super().__init__(model, n_params_subnet, **kw)
        self.likelihood = likelihood

    def _compute_curvature_diagonal(self, train_loader) -> torch.Tensor:
        return diag_curvature(self.model, self.likelihood, train_loader)


@register("obd")
class OBDMask(_DataScoreMask):
    r"""Optimal Brain Damage saliency :math:`\tfrac12 \theta_d^2 H_{dd}` (LeCun et al., 1990),
    with :math:`H_{dd}` the diagonal GGN on the training data."""

    def compute_param_scores(self, train_loader) -> torch.Tensor:
        h = self.curvature_diagonal(train_loader)
        return 0.5 * self.parameter_vector**2 * h


@register("gradient_energy")
class GradientEnergyMask(_DataScoreMask):
    r"""Summed squared per-sample loss gradients :math:`\sum_n g_{nd}^2` (diagonal
    empirical Fisher; Fisher pruning, Theis et al., 2018)."""

    def compute_param_scores(self, train_loader) -> torch.Tensor:
        return diag_curvature(self.model, self.likelihood, train_loader, kind="ef")


@register("gradient_laplace")
class GradientLaplaceMask(ScoreSubnetMask):
    r"""Gradient-Laplace (Raha, Khare & Patra, 2026): the largest mean squared
    output gradient :math:`\tfrac1N \sum_n \sum_k (\partial f_k(x_n)/\partial
    \theta_d)^2` on the training data.

    Each weight's own contribution to the predictive variance, up to its
    posterior variance; no likelihood needed. Costs one pass over the data per
    block of weights (:func:`~laplace_subnet_ext.selection.variance.blocked_diag_curvature`).
    """

    def compute_param_scores(self, train_loader) -> torch.Tensor:
        if train_loader is None:
            raise ValueError(
                "GradientLaplaceMask needs train_loader in select(train_loader)."
            )
        return self.curvature_diagonal(train_loader) / len(train_loader.dataset)
