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

import math
from typing import Any

import torch
from laplace.curvature import EFInterface, GGNInterface
from torch import nn

from laplace_subnet_ext._compat import functional_hessian, mc_functional_fisher

__all__ = [
    "output_curvature",
    "output_hessian",
    "add_batch_curvature",
    "rows_per_sample",
]


def output_curvature(
    backend_cls: type, backend_kwargs: dict[str, Any], likelihood: str
) -> GGNInterface | EFInterface:
    """laplace's GGN / EF interface for ``backend_cls``'s curvature type, on no model.

    Built around a placeholder module, so BackPACK / ASDL never hook into the
    user's model; ``stochastic`` / ``num_samples`` are taken from ``backend_kwargs``.
    ``likelihood="reward_modeling"`` fits as classification (laplace's rule: the
    Bradley-Terry pairs are two-class logits); its predictive is regression.
    """
    if likelihood == "reward_modeling":
        likelihood = "classification"
    if issubclass(backend_cls, EFInterface):
        return EFInterface(nn.Identity(), likelihood)
    kwargs = {
        k: v for k, v in backend_kwargs.items() if k in ("stochastic", "num_samples")
    }
    return GGNInterface(nn.Identity(), likelihood, **kwargs)


def output_hessian(f: torch.Tensor, likelihood: str) -> torch.Tensor | None:
    r"""The GGN's output Hessian :math:`\Lambda_b` of one batch, ``(b, c, k)``.

    Classification (and reward modeling's fit): the softmax Hessian
    :math:`\operatorname{diag}(p_b) - p_b p_b^\top` of the cross-entropy;
    regression: ``None``, meaning the identity (laplace's GGN; the factor
    :math:`1/\sigma^2` is applied with the prior).
    """
    if likelihood == "regression":
        return None
    p = torch.softmax(f, dim=-1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def rows_per_sample(curv: GGNInterface | EFInterface, n_outputs: int) -> int:
    r"""Rows of the square-root factor :math:`R` (:math:`H = R^\top R`) per input:
    one per output for a GGN, one for the empirical Fisher."""
    return 1 if isinstance(curv, EFInterface) else n_outputs


def _square_root_rows(Lam: torch.Tensor | None, Js: torch.Tensor) -> torch.Tensor:
    r"""``(b k, s)`` rows :math:`A_b^\top J_b` with :math:`A_b A_b^\top = \Lambda_b`
    (``Lam`` None: the identity), so that their Gram sum is
    :math:`\sum_b J_b^\top \Lambda_b J_b`; :math:`A_b = U\sqrt{e}` from ``eigh`` of
    the small ``(c, c)`` output Hessian (round-off negatives clipped)."""
    S = Js.shape[-1]
    if Lam is None:
        return Js.reshape(-1, S)
    e, U = torch.linalg.eigh(Lam)
    A = U * e.clamp_min(0).sqrt().unsqueeze(-2)
    return torch.einsum("bkc,bks->bcs", A, Js).reshape(-1, S)


def add_batch_curvature(
    curv: GGNInterface | EFInterface,
    Js: torch.Tensor,
    f: torch.Tensor,
    y: torch.Tensor,
    H: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Add a batch's curvature into ``H`` in place; return its loss.

    One ``addmm_`` of the ``(b c, s)`` factors: no S x S temporary. Nothing is
    added (and ``FloatingPointError`` is raised) if the loss, a factor or the sum
    is not finite, so ``H`` stays as it was; only when a bound on the entries
    cannot exclude overflow is the sum formed in a temporary first.

    Parameters
    ----------
    Js : torch.Tensor
        ``(b, c, s)`` subnetwork Jacobians.
    f : torch.Tensor
        ``(b, c)`` outputs.
    y : torch.Tensor
        Targets.
    H : torch.Tensor
        ``(s, t)`` curvature accumulated so far, in its dtype.
    rows : torch.Tensor, optional
        ``(b k, s)`` (:func:`rows_per_sample`) buffer that receives the batch's
        square-root rows :math:`R_b` (:math:`R_b^\top R_b` is what is added to
        ``H``), written only when the batch is added.
    """
    dtype = H.dtype
    loss = (curv.factor * curv.lossfunc(f, y)).detach()
    Js = Js.to(dtype)
    S = Js.shape[-1]
    if isinstance(curv, EFInterface):
        f_ = f.detach().requires_grad_(True)
        with torch.enable_grad():
            (r,) = torch.autograd.grad(curv.lossfunc(f_, y), f_)
        A = torch.einsum("bcs,bc->bs", Js, r.to(dtype))
        B, alpha = A, float(curv.factor)
        R = A * math.sqrt(alpha) if rows is not None else None  # factor >= 0
    else:
        Lam = (
            mc_functional_fisher(curv, f)
            if curv.stochastic
            else functional_hessian(curv, f)
        )
        A = Js.reshape(-1, S)
        if Lam is None:  # regression: exact GGN with identity output Hessian
            B = A
        else:
            B = torch.einsum("bck,bks->bcs", Lam.to(dtype), Js).reshape(-1, S)
        alpha = 1.0
        R = None
        if rows is not None:
            R = _square_root_rows(None if Lam is None else Lam.to(dtype), Js)
    for name, t in (("loss (model outputs or targets)", loss), ("curvature", B)):
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(name)
    if not bool(torch.isfinite(A).all()):
        raise FloatingPointError("curvature")
    bound = float(A.abs().amax()) * float(B.abs().amax()) * A.shape[0] * abs(alpha)
    lo, hi = H.aminmax()  # a reduction: no |H| copy
    if bound + max(-float(lo), float(hi)) < torch.finfo(dtype).max / 4:
        H.addmm_(A.T, B, alpha=alpha)  # cannot overflow: no S x S temporary
        if R is not None:
            rows.copy_(R)
        return loss
    H_b = torch.addmm(H, A.T, B, alpha=alpha)  # may overflow: check before keeping
    if not bool(torch.isfinite(H_b).all()):
        raise FloatingPointError("curvature")
    H.copy_(H_b)
    if R is not None:
        rows.copy_(R)
    return loss
