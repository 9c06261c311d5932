r"""Base class of score-based selection: keep the S weights with the largest score.

Follows laplace's ``SubnetMask`` protocol (``select(train_loader) -> indices``,
``.indices``, ``.n_params_subnet``), so every mask here works wherever laplace
expects one, and laplace's masks work wherever ours do.

``n_params_subnet`` may be an int, a fraction of D in (0, 1), or ``"auto"`` with
``memory_budget=`` (bytes or "4GB"): the largest S whose dense posterior fits.
``min_per_layer`` guarantees every parameter tensor a share of S.

Zero curvature: a weight whose output gradient vanishes on every training input
(a dead ReLU unit's weights, a LoRA factor multiplied by a zero partner) has no
curvature, so its posterior is the prior and it cannot change a prediction.
Every :class:`ScoreSubnetMask` drops such weights before choosing
(``filter_zero_curvature=True``), records how many in ``n_zero_curvature`` and
logs it; asking for more weights than have curvature is a ``ValueError``.
"Zero" is :math:`h_d \le \epsilon^2 \max_d h_d` with :math:`\epsilon` the machine
epsilon of the curvature's dtype: a diagonal entry is a sum of
squared output gradients, so round-off of gradients that are structurally zero
enters squared. Small but real curvature is kept: a LoRA adapter's factors can lie
ten orders of magnitude below its head's and still be the weights asked for.

Index space: the parameters that require grad, in ``model.parameters()`` order -
the vector laplace's posteriors (``BaseLaplace.params``) and
:class:`~laplace_subnet_ext.DenseSubnetLaplace` index. laplace's own
``SubnetMask`` counts frozen tensors too, so its indices are shifted on a model
with frozen tensors (e.g. every LoRA adapter); :class:`TrainableSubnetMask`
fixes that for every strategy here.
"""

from __future__ import annotations

import logging

import torch
from laplace.utils.subnetmask import SubnetMask
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext.numerics.memory import largest_subnet, parse_bytes
from laplace_subnet_ext.selection.variance import blocked_diag_curvature

logger = logging.getLogger("laplace_subnet_ext")

__all__ = [
    "ScoreSubnetMask",
    "TrainableSubnetMask",
    "resolve_n_params_subnet",
    "trainable",
]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require grad: the index space of the posterior."""
    return [p for p in model.parameters() if p.requires_grad]


class TrainableSubnetMask(SubnetMask):
    """laplace's ``SubnetMask`` over the parameters that require grad (D = their size)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        params = trainable(model)
        if not params:
            raise ValueError(
                "the model has no parameter with requires_grad=True; unfreeze the "
                "tensors the subnetwork may be chosen from."
            )
        self.parameter_vector = parameters_to_vector(params).detach()
        self._n_params = len(self.parameter_vector)


def resolve_n_params_subnet(
    n_params_subnet: int | float | str | None,
    n_params: int,
    memory_budget: int | str | None = None,
    itemsize: int = 8,
) -> int:
    """S from an int, a fraction of D, or ``"auto"`` + ``memory_budget``."""
    if n_params_subnet is None:
        raise ValueError(
            "n_params_subnet must be an int, a fraction in (0, 1) or 'auto'; got None."
        )
    if isinstance(n_params_subnet, str):
        if n_params_subnet != "auto" or memory_budget is None:
            raise ValueError(
                "n_params_subnet as a string must be 'auto' together with "
                f"memory_budget=...; got {n_params_subnet!r} and memory_budget="
                f"{memory_budget!r}."
            )
        return max(
            1, min(n_params, largest_subnet(parse_bytes(memory_budget), itemsize))
        )
    if isinstance(n_params_subnet, bool) or not isinstance(
        n_params_subnet, (int, float)
    ):
        raise TypeError(
            f"n_params_subnet must be an int, float or 'auto'; got {type(n_params_subnet).__name__}."
        )
    if isinstance(n_params_subnet, float) and not float(n_params_subnet).is_integer():
        if not 0 < n_params_subnet < 1:
            raise ValueError(
                f"n_params_subnet as a fraction must lie in (0, 1); got {n_params_subnet}."
            )
        return max(1, int(round(n_params_subnet * n_params)))
    s = int(n_params_subnet)
    if not 1 <= s <= n_params:
        raise ValueError(
            f"n_params_subnet must lie in [1, D={n_params}]; got {s}. Select fewer weights."
        )
    return s


class ScoreSubnetMask(TrainableSubnetMask):
    """Keep the S highest-scoring weights; subclasses implement :meth:`compute_param_scores`.

    Parameters
    ----------
    model : torch.nn.Module
    n_params_subnet : int, float or "auto"
    memory_budget : int or str, optional
        Needed for ``n_params_subnet="auto"``.
    min_per_layer : float, default=0
        Fraction of S reserved, split evenly, for every parameter tensor
        (each tensor first gets its top ``floor(min_per_layer*S/L)`` weights).
    filter_zero_curvature : bool, default=True
        Drop weights with zero curvature on the training data (see the module
        docstring); needs ``train_loader`` in :meth:`select`.

    Attributes
    ----------
    scores : torch.Tensor
        ``(p,)`` scores of the last :meth:`select` (before dropping zero curvature).
    n_zero_curvature : int
        Weights dropped for zero curvature by the last :meth:`select`.
    """

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet: int | float | str | None,
        *,
        memory_budget: int | str | None = None,
        min_per_layer: float = 0.0,
        filter_zero_curvature: bool = True,
    ) -> None:
        super().__init__(model)
        self._n_params_subnet = resolve_n_params_subnet(
            n_params_subnet, self._n_params, memory_budget
        )
        if not 0 <= min_per_layer < 1:
            raise ValueError(f"min_per_layer must lie in [0, 1); got {min_per_layer}.")
        self.min_per_layer = min_per_layer
        self.filter_zero_curvature = filter_zero_curvature
        self.scores: torch.Tensor | None = None
        self.n_zero_curvature = 0
        self._curvature: tuple | None = None  # (loader, (p,) diagonal)

    def curvature_diagonal(self, train_loader: DataLoader) -> torch.Tensor:
        r"""``(p,)`` diagonal curvature on the training data, computed once per loader.

        Here the output-gradient energy :math:`\sum_n \sum_k (\partial f_k(x_n) /
        \partial\theta_d)^2` (the GGN diagonal with an identity output Hessian);
        strategies that know the likelihood use its GGN diagonal.
        """
        if self._curvature is None or self._curvature[0] is not train_loader:
            h = self._compute_curvature_diagonal(train_loader)
            self._curvature = (train_loader, h)
        return self._curvature[1]

    def set_curvature_diagonal(
        self, train_loader: DataLoader, diagonal: torch.Tensor
    ) -> None:
        """Use a precomputed ``(p,)`` diagonal curvature for ``train_loader``.

        For a model on which the exact blocked diagonal is slow and a diagonal
        already exists, e.g. ``la.H`` of laplace's ``DiagLaplace`` fitted on the
        same loader with the same likelihood (the GGN diagonal, which is what
        likelihood-aware strategies compute). It must be the curvature of the
        trainable parameters in ``model.parameters()`` order; it is trusted as
        given (only its shape and values are checked).
        """
        if not isinstance(diagonal, torch.Tensor):
            raise TypeError(
                f"diagonal must be a torch.Tensor; got {type(diagonal).__name__}."
            )
        d = diagonal.detach().flatten()
        if d.numel() != self._n_params:
            raise ValueError(
                f"diagonal must have one entry per trainable weight (D={self._n_params}); "
                f"got {d.numel()}. Pass the diagonal of the same model's trainable "
                "parameters."
            )
        if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
            raise ValueError(
                "diagonal must be finite and non-negative (a GGN / Fisher diagonal); "
                "it has negative or non-finite entries."
            )
        self._curvature = (train_loader, d.to(self._device))

    def _compute_curvature_diagonal(self, train_loader: DataLoader) -> torch.Tensor:
        return blocked_diag_curvature(self.model, "regression", train_loader)

    def drop_zero_curvature(
        self, scores: torch.Tensor, train_loader: DataLoader | None
    ) -> torch.Tensor:
        """``scores`` with zero-curvature weights at ``-inf`` (counted in
        ``n_zero_curvature``, logged); ``ValueError`` if S exceeds the rest."""
        if not self.filter_zero_curvature or train_loader is None:
            return scores
        h = self.curvature_diagonal(train_loader).to(scores.device)
        zero = h <= torch.finfo(h.dtype).eps ** 2 * h.abs().max()
        self.n_zero_curvature = int(zero.sum())
        if not self.n_zero_curvature:
            return scores
        kept = self._n_params - self.n_zero_curvature
        logger.info(
            "%s: dropped %d of %d weights with zero curvature on the training data",
            type(self).__name__,
            self.n_zero_curvature,
            self._n_params,
        )
        if self._n_params_subnet > kept:
            raise ValueError(
                f"n_params_subnet={self._n_params_subnet} exceeds the {kept} weights "
                f"with nonzero curvature on the training data ({self.n_zero_curvature} "
                "of D have none: their posterior is the prior). Select at most "
                f"{kept} weights, or pass filter_zero_curvature=False to keep them."
            )
        return scores.masked_fill(zero, float("-inf"))

    def compute_param_scores(self, train_loader: DataLoader | None) -> torch.Tensor:
        """``(p,)`` score of every weight; larger is kept first."""
        raise NotImplementedError

    def get_subnet_mask(self, train_loader: DataLoader | None) -> torch.Tensor:
        scores = self.compute_param_scores(train_loader).detach().flatten()
        if scores.numel() != self._n_params:
            raise ValueError(
                f"scores must have one entry per weight (D={self._n_params}); got "
                f"{scores.numel()}."
            )
        self.scores = scores
        scores = self.drop_zero_curvature(scores, train_loader)
        S = self._n_params_subnet
        chosen = torch.zeros(self._n_params, dtype=torch.bool, device=scores.device)
        if self.min_per_layer > 0:
            sizes = [p.numel() for p in trainable(self.model)]
            quota = int(self.min_per_layer * S / len(sizes))
            for start, size in zip(
                torch.tensor([0] + sizes).cumsum(0)[:-1].tolist(), sizes
            ):
                block = scores[start : start + size]
                k = min(quota, int((block > float("-inf")).sum()))
                if k > 0:
                    top = block.topk(k).indices + start
                    chosen[top] = True
        rest = S - int(chosen.sum())
        if rest > 0:
            masked = scores.masked_fill(chosen, float("-inf"))
            chosen[masked.topk(rest).indices] = True
        return chosen
