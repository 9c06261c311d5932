r"""Base class of score-based selection: keep the S weights with the largest score.

Follows laplace's ``SubnetMask`` protocol (``select(train_loader) -> indices``,
``.indices``, ``.n_params_subnet``), so every mask here works wherever laplace
expects one, and laplace's masks work wherever ours do.

``n_params_subnet`` may be an int, a fraction of D in (0, 1), or ``"auto"`` with
``memory_budget=`` (bytes or "4GB"): the largest S whose dense posterior fits.
``min_per_layer`` guarantees every parameter tensor a share of S.

Index space: the parameters that require grad, in ``model.parameters()`` order -
the vector laplace's posteriors (``BaseLaplace.params``) and
:class:`~laplace_subnet_ext.DenseSubnetLaplace` index. laplace's own
``SubnetMask`` counts frozen tensors too, so its indices are shifted on a model
with frozen tensors (e.g. every LoRA adapter); :class:`TrainableSubnetMask`
fixes that for every strategy here.
"""

from __future__ import annotations

import torch
from laplace.utils.subnetmask import SubnetMask
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext.posterior.memory import largest_subnet, parse_bytes

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
    """

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet: int | float | str | None,
        *,
        memory_budget: int | str | None = None,
        min_per_layer: float = 0.0,
    ) -> None:
        super().__init__(model)
        self._n_params_subnet = resolve_n_params_subnet(
            n_params_subnet, self._n_params, memory_budget
        )
        if not 0 <= min_per_layer < 1:
            raise ValueError(f"min_per_layer must lie in [0, 1); got {min_per_layer}.")
        self.min_per_layer = min_per_layer
        self.scores: torch.Tensor | None = None

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
        S = self._n_params_subnet
        chosen = torch.zeros(self._n_params, dtype=torch.bool, device=scores.device)
        if self.min_per_layer > 0:
            sizes = [p.numel() for p in trainable(self.model)]
            quota = int(self.min_per_layer * S / len(sizes))
            for start, size in zip(
                torch.tensor([0] + sizes).cumsum(0)[:-1].tolist(), sizes
            ):
                k = min(quota, size)
                if k > 0:
                    top = scores[start : start + size].topk(k).indices + start
                    chosen[top] = True
        rest = S - int(chosen.sum())
        if rest > 0:
            masked = scores.masked_fill(chosen, float("-inf"))
            chosen[masked.topk(rest).indices] = True
        return chosen
