r"""Where the subnetwork lives inside the model's parameter tensors.

Index conventions: ``p`` all parameters (length :math:`D`), ``s`` subnetwork
parameters (length :math:`S`), ``l`` one parameter tensor.

A :class:`SubnetLayout` splits the :math:`S` selected positions of the
parameter vector by parameter tensor, so that derivatives can be formed for
the touched tensors (and, on the fast path, the selected entries) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SubnetLayout", "TensorSelection"]


@dataclass(frozen=True)
class TensorSelection:
    """The selected entries of one parameter tensor.

    Attributes
    ----------
    name : str
        Qualified parameter name (``model.named_parameters()``).
    param : torch.nn.Parameter
        The tensor itself.
    module : torch.nn.Module
        The module that owns it directly.
    attr : str
        Its attribute name on ``module`` (e.g. ``"weight"``).
    local : torch.Tensor
        ``(s_l,)`` flat indices inside ``param``.
    positions : torch.Tensor
        ``(s_l,)`` columns of :math:`J_S` (positions in the subnetwork).
    """

    name: str
    param: nn.Parameter
    module: nn.Module
    attr: str
    local: torch.Tensor
    positions: torch.Tensor


class SubnetLayout:
    """Partition of the subnetwork indices by parameter tensor.

    Parameters
    ----------
    model : torch.nn.Module
    indices : torch.Tensor
        ``(s,)`` long tensor of validated indices into the vector of the
        parameters of ``model`` that require gradients.
    """

    def __init__(self, model: nn.Module, indices: torch.Tensor) -> None:
        owners: dict[int, tuple[nn.Module, str]] = {}
        for module in model.modules():
            for attr, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), (module, attr))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for _, p in named)
        self.n_subnet = int(indices.numel())
        self.n_tensors = len(named)
        self.indices = indices
        selections: list[TensorSelection] = []
        touched: list[int] = []
        start = 0
        for layer, (name, p) in enumerate(named):
            stop = start + p.numel()
            in_tensor = (indices >= start) & (indices < stop)
            positions = in_tensor.nonzero(as_tuple=True)[0]
            if positions.numel() > 0:
                module, attr = owners[id(p)]
                selections.append(
                    TensorSelection(
                        name, p, module, attr, indices[positions] - start, positions
                    )
                )
                touched.append(layer)
            start = stop
        self.selections = selections
        #: indices (into the list of grad-requiring tensors) of touched tensors
        self.touched_tensors = touched

    def tensor_of_position(self) -> torch.Tensor:
        """``(s,)`` index of the touched tensor (0..len(selections)-1) of each column."""
        out = torch.empty(self.n_subnet, dtype=torch.long, device=self.indices.device)
        for k, sel in enumerate(self.selections):
            out[sel.positions] = k
        return out
