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
    span : slice or None
        ``positions`` as a slice when they are consecutive (sorted indices):
        :attr:`columns` indexes with it, a view instead of a gather.
    """

    name: str
    param: nn.Parameter
    module: nn.Module
    attr: str
    local: torch.Tensor
    positions: torch.Tensor
    span: slice | None = None

    @property
    def columns(self) -> slice | torch.Tensor:
        """The columns of :math:`J_S` to index with: :attr:`span` if set, else
        :attr:`positions`."""
        return self.positions if self.span is None else self.span


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
        # each tensor's range of the parameter vector, found by binary search in
        # the sorted indices (one mask over all S indices per tensor took 85 s
        # of a ViT-B/16 screening, S = D = 86M, 152 tensors)
        ascending = bool((indices[1:] >= indices[:-1]).all())
        order = None if ascending else torch.argsort(indices, stable=True)
        values = indices if ascending else indices[order]
        sizes = torch.tensor([p.numel() for _, p in named], dtype=torch.long)
        edges = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).to(indices.device)
        cuts = torch.searchsorted(values, edges).tolist()
        start = 0
        for layer, (name, p) in enumerate(named):
            stop = start + p.numel()
            lo, hi = cuts[layer], cuts[layer + 1]
            if ascending:
                positions = torch.arange(lo, hi, device=indices.device)
            else:  # ascending positions, as a mask's nonzero() gives them
                positions = order[lo:hi].sort().values
            if positions.numel() > 0:
                module, attr = owners[id(p)]
                selections.append(
                    TensorSelection(
                        name,
                        p,
                        module,
                        attr,
                        indices[positions] - start,
                        positions,
                        slice(lo, hi) if ascending else None,
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
