r"""Curvature of one batch from subnetwork Jacobians, with laplace's loss conventions.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

GGN: :math:`\sum_b J_b^\top \Lambda_b J_b` with :math:`\Lambda` the output Hessian
of the negative log-likelihood (identity for regression, :math:`\mathrm{diag}(p)-pp^\top`
for classification) or its MC-Fisher estimate (``stochastic=True``). EF:
:math:`\text{factor}\sum_b g_b g_b^\top` with :math:`g_b = J_b^\top \partial\ell/\partial f_b`.
Loss, factor and :math:`\Lambda` come from laplace's own ``GGNInterface`` /
``EFInterface``, so results match every laplace backend.
"""

from __future__ import annotations

from typing import Any

import torch
from laplace.curvature import EFInterface, GGNInterface
from torch import nn

__all__ = ["output_curvature", "batch_curvature"]


def output_curvature(
    backend_cls: type, backend_kwargs: dict[str, Any], likelihood: str
) -> GGNInterface | EFInterface:
    """laplace's GGN / EF interface for ``backend_cls``'s curvature type, on no model.

    Built around a placeholder module, so BackPACK / ASDL never hook into the
    user's model; ``stochastic`` / ``num_samples`` are taken from ``backend_kwargs``.
    """
    if issubclass(backend_cls, EFInterface):
        return EFInterface(nn.Identity(), likelihood)
    kwargs = {
        k: v for k, v in backend_kwargs.items() if k in ("stochastic", "num_samples")
    }
    return GGNInterface(nn.Identity(), likelihood, **kwargs)


def batch_curvature(
    curv: GGNInterface | EFInterface,
    Js: torch.Tensor,
    f: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and ``(s, t)`` curvature of a batch.

    Parameters
    ----------
    Js : torch.Tensor
        ``(b, c, s)`` subnetwork Jacobians.
    f : torch.Tensor
        ``(b, c)`` outputs.
    y : torch.Tensor
        Targets.
    dtype : torch.dtype
        dtype of the returned curvature.
    """
    loss = curv.factor * curv.lossfunc(f, y)
    Js = Js.to(dtype)
    S = Js.shape[-1]
    if isinstance(curv, EFInterface):
        f_ = f.detach().requires_grad_(True)
        with torch.enable_grad():
            (r,) = torch.autograd.grad(curv.lossfunc(f_, y), f_)
        G = torch.einsum("bcs,bc->bs", Js, r.to(dtype))
        return loss.detach(), curv.factor * (G.T @ G)
    Lam = (
        curv._get_mc_functional_fisher(f)
        if curv.stochastic
        else curv._get_functional_hessian(f)
    )
    flat = Js.reshape(-1, S)
    if Lam is None:  # regression: exact GGN with identity output Hessian
        return loss.detach(), flat.T @ flat
    LJ = torch.einsum("bck,bks->bcs", Lam.to(dtype), Js).reshape(-1, S)
    return loss.detach(), flat.T @ LJ
