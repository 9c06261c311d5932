r"""Generic path: ``torch.func`` Jacobians w.r.t. the touched tensors only.

Index conventions: ``b`` batch, ``c`` outputs, ``s`` subnetwork parameters.

Any module works here (custom ``forward``, parameters on non-leaf modules,
grouped convolutions, attention, ...). Untouched parameter tensors are not
differentiated; each touched tensor costs ``O(b c numel)`` per chunk, so the
batch is processed in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.jacobians.layout import TensorSelection

__all__ = ["functional_jacobians"]


def functional_jacobians(
    model: nn.Module,
    selections: list[TensorSelection],
    x: torch.Tensor | MutableMapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobian columns of ``selections`` for one chunk of inputs.

    Returns
    -------
    Js : torch.Tensor
        ``(b, c, s)`` with ``s = sum(len(sel.local))``, in ``selections`` order.
    f : torch.Tensor
        ``(b, c)`` model output.
    """
    params = {sel.name: sel.param.detach() for sel in selections}

    def forward(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.func.functional_call(model, p, (x,), strict=False)
        return out, out

    jac, f = torch.func.jacrev(forward, has_aux=True)(params)
    cols = [
        jac[sel.name].flatten(start_dim=f.ndim)[..., sel.local] for sel in selections
    ]
    return torch.cat(cols, dim=-1), f
