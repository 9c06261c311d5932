r"""Prior precision and mean restricted to the subnetwork, and the S/D rescaling.

Index conventions: ``p`` all parameters (length :math:`D`), ``s`` subnetwork
parameters (length :math:`S`), ``l`` parameter tensors.

A prior precision is stored in one of three structures:

``"scalar"``    length 1, :math:`\lambda`;
``"layerwise"`` one value per parameter tensor the subnetwork touches;
``"diag"``      one value per subnetwork weight (length :math:`S`).

User input may also be given per tensor of the whole model (length
``n_layers``) or per weight of the whole model (length :math:`D`); it is then
restricted to the subnetwork. Paper, sec. 6.1: with ``prior_rescaling`` the
given precision is the full network's :math:`\lambda` and the subnetwork uses
:math:`\lambda_S = \lambda S / D`.
"""

from __future__ import annotations

import numpy as np
import torch

from laplace_subnet_ext.jacobians.layout import SubnetLayout

__all__ = ["as_prior_tensor", "restrict_prior_precision", "restrict_prior_mean"]


def as_prior_tensor(
    value: float | torch.Tensor, argument: str, device, dtype
) -> torch.Tensor:
    """A 1-D tensor from a scalar or tensor; validates finiteness."""
    if isinstance(value, torch.Tensor):
        t = value.to(device=device, dtype=dtype)
    elif np.isscalar(value) and np.isreal(value) and not isinstance(value, bool):
        t = torch.as_tensor([float(value)], device=device, dtype=dtype)
    else:
        raise TypeError(
            f"{argument} must be a float or a 1-D torch.Tensor; got "
            f"{type(value).__name__}."
        )
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(
            f"{argument} must be a scalar or a non-empty 1-D tensor; got shape "
            f"{tuple(t.shape)}."
        )
    if not torch.isfinite(t.detach()).all():
        raise ValueError(f"{argument} must be finite; got {t.detach()[:5].tolist()}.")
    return t


def restrict_prior_precision(
    value: torch.Tensor, layout: SubnetLayout, current: str | None = None
) -> tuple[torch.Tensor, str]:
    """Restrict a prior precision to the subnetwork.

    Parameters
    ----------
    value : torch.Tensor
        1-D, of length 1, the current structure's length, S, D, the number of
        parameter tensors of the model, or the number of touched tensors.
    layout : SubnetLayout
    current : str, optional
        The structure in use; a value of its length keeps it (so a layer-wise
        prior stays layer-wise when its length happens to equal S).

    Returns
    -------
    prior : torch.Tensor
        Length 1, ``len(layout.selections)`` or S.
    structure : {"scalar", "layerwise", "diag"}
    """
    n = value.numel()
    S, D, L = layout.n_subnet, layout.n_params, layout.n_tensors
    L_S = len(layout.selections)
    if (value.detach() <= 0).any():
        raise ValueError(
            "prior_precision must be positive; got min "
            f"{value.detach().min().item():.3g}. Use a positive precision (weight decay)."
        )
    if n == 1:
        return value, "scalar"
    if current == "layerwise" and n == L_S:
        return value, "layerwise"
    if n == S:
        return value, "diag"
    if n == D:
        return value[layout.indices], "diag"
    if n == L:
        return value[torch.as_tensor(layout.touched_tensors, device=value.device)], (
            "layerwise"
        )
    if n == L_S:
        return value, "layerwise"
    raise ValueError(
        f"prior_precision must have length 1 (scalar), {L} (one per parameter tensor "
        f"of the model), {L_S} (one per tensor the subnetwork touches), {S} (S, one "
        f"per subnetwork weight) or {D} (D, one per model weight); got length {n}."
    )


def restrict_prior_mean(value: torch.Tensor, layout: SubnetLayout) -> torch.Tensor:
    """Prior mean of length 1 or S (a length-D mean is restricted)."""
    n = value.numel()
    if n in (1, layout.n_subnet):
        return value
    if n == layout.n_params:
        return value[layout.indices]
    raise ValueError(
        f"prior_mean must have length 1, S={layout.n_subnet} or D={layout.n_params}; "
        f"got length {n}."
    )
