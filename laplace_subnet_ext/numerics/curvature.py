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
    "mirror_upper",
    "rows_per_sample",
    "output_hessian_root",
    "diagonal_contraction",
]


#: laplace's GGN interface per likelihood, on no model (for its output Hessian)
_GGN = {
    lik: GGNInterface(nn.Identity(), lik) for lik in ("classification", "regression")
}


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
    r"""The GGN's output Hessian :math:`\Lambda_b` of one batch, ``(b, c, k)``:
    laplace's own (``GGNInterface``'s functional Hessian, through
    :func:`laplace_subnet_ext._compat.functional_hessian`), so fit, selection
    and diagnostics use the curvature laplace defines.

    Classification (and reward modeling's fit): the softmax Hessian
    :math:`\operatorname{diag}(p_b) - p_b p_b^\top` of the cross-entropy;
    regression: ``None``, meaning the identity (laplace's GGN; the factor
    :math:`1/\sigma^2` is applied with the prior).
    """
    if likelihood == "reward_modeling":
        likelihood = "classification"
    return functional_hessian(_GGN[likelihood], f)


def output_hessian_root(f: torch.Tensor, likelihood: str) -> torch.Tensor | None:
    r"""A square root :math:`A_b` ``(b, c, c)`` of :func:`output_hessian`,
    :math:`A_b A_b^\top = \Lambda_b`, in closed form (no ``eigh``).

    Softmax: :math:`A = \operatorname{diag}(\sqrt p) - p \sqrt p^\top`, since
    :math:`A A^\top = \operatorname{diag}(p) - 2 p p^\top + p (\sqrt p^\top
    \sqrt p) p^\top` and :math:`\sum_c p_c = 1`. Regression: ``None`` (the
    identity).
    """
    if likelihood == "regression":
        return None
    p = torch.softmax(f, dim=-1)
    r = p.sqrt()
    return torch.diag_embed(r) - p.unsqueeze(-1) * r.unsqueeze(-2)


def diagonal_contraction(Js: torch.Tensor, A: torch.Tensor | None) -> torch.Tensor:
    r"""``(s,)`` :math:`\sum_b \operatorname{diag}(J_b^\top A_b A_b^\top J_b)` of
    Jacobians ``(b, c, s)`` and an output factor ``A`` ``(b, c, m)`` (None: the
    identity): the GGN's diagonal with :func:`output_hessian_root`, the EF's
    with the loss gradient as ``A``."""
    if A is None:
        return Js.pow(2).sum((0, 1))
    return torch.einsum("bcm,bcs->bms", A.to(Js.dtype), Js).pow(2).sum((0, 1))


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
    # in float64: the clipped round-off of Lam's null direction (softmax: the
    # all-ones logit shift) always adds, and common-mode Jacobian rows sum it
    # over the batch (float32: H 2.3e-5 off, bench_gram_update's problem)
    e, U = torch.linalg.eigh(Lam.to(torch.float64))
    A = (U * e.clamp_min(0).sqrt().unsqueeze(-2)).to(Js.dtype)
    return torch.einsum("bkc,bks->bcs", A, Js).reshape(-1, S)


#: columns per block row of the symmetric update (``upper=True``): the Gram
#: update skips the blocks below the diagonal, ~half the flops of a full ``addmm_``
GRAM_BLOCK = 1024
#: largest output count whose (c, c) output Hessians are square-rooted by ``eigh``
#: for the symmetric update; above it the update is a full ``addmm_``
MAX_SQRT_OUTPUTS = 256


def add_batch_curvature(
    curv: GGNInterface | EFInterface,
    Js: torch.Tensor,
    f: torch.Tensor,
    y: torch.Tensor,
    H: torch.Tensor,
    rows: torch.Tensor | None = None,
    upper: bool = False,
) -> torch.Tensor:
    r"""Add a batch's curvature into ``H`` in place; return its loss.

    ``addmm_`` of the ``(b c, s)`` factors into ``H`` (one, or one per block row
    with ``upper``): no S x S temporary. Nothing is
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
        ``(s, s)`` curvature accumulated so far, in its dtype.
    rows : torch.Tensor, optional
        ``(b k, s)`` (:func:`rows_per_sample`) buffer that receives the batch's
        square-root rows :math:`R_b` (:math:`R_b^\top R_b` is what is added to
        ``H``), written only when the batch is added.
    upper : bool, default=False
        Update only the blocks on and above the block diagonal (block rows of
        :data:`GRAM_BLOCK`), as the Gram product :math:`R_b^\top R_b` of the
        square-root rows: about half the flops. The caller restores the lower
        triangle with :func:`mirror_upper` once all batches are in; until then
        the blocks below the diagonal are stale.
    """
    dtype = H.dtype
    loss = (curv.factor * curv.lossfunc(f, y)).detach()
    if not bool(torch.isfinite(loss).all()):  # before any eigh of a NaN
        raise FloatingPointError("loss (model outputs or targets)")
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
        # the output Hessian from float64 outputs: its null direction (softmax:
        # the all-ones logit shift) exact to 1e-16, not to the outputs' dtype
        f64 = f.detach().to(torch.float64)
        Lam = (
            mc_functional_fisher(curv, f64)
            if curv.stochastic
            else functional_hessian(curv, f64)
        )
        if Lam is not None and not bool(torch.isfinite(Lam).all()):
            raise FloatingPointError("curvature")
        alpha, R = 1.0, None
        if Lam is None:  # regression: exact GGN with identity output Hessian
            A = B = Js.reshape(-1, S)
        elif upper and Lam.shape[-1] <= MAX_SQRT_OUTPUTS:
            A = B = _square_root_rows(Lam, Js)  # Gram form: H += R^T R
        else:
            A = Js.reshape(-1, S)
            B = torch.einsum("bck,bks->bcs", Lam.to(dtype), Js).reshape(-1, S)
        if rows is not None:
            R = A if A is B else _square_root_rows(Lam, Js)
    if not (bool(torch.isfinite(B).all()) and bool(torch.isfinite(A).all())):
        raise FloatingPointError("curvature")
    bound = float(A.abs().amax()) * float(B.abs().amax()) * A.shape[0] * abs(alpha)
    lo, hi = H.aminmax()  # a reduction: no |H| copy
    if bound + max(-float(lo), float(hi)) < torch.finfo(dtype).max / 4:
        if upper and A is B and alpha >= 0:
            _add_gram_upper(H, A, alpha)
        else:
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


def _add_gram_upper(H: torch.Tensor, R: torch.Tensor, alpha: float) -> None:
    r""":math:`H \mathrel{+}= \alpha R^\top R` on the blocks on and above the
    block diagonal: one ``addmm_`` per block row, into views of ``H``."""
    S = H.shape[0]
    for r0 in range(0, S, GRAM_BLOCK):
        r1 = min(S, r0 + GRAM_BLOCK)
        H[r0:r1, r0:].addmm_(R[:, r0:r1].T, R[:, r0:], alpha=alpha)


def mirror_upper(H: torch.Tensor) -> None:
    """Copy the blocks above the block diagonal onto those below, in place
    (after updates with ``add_batch_curvature(..., upper=True)``)."""
    S = H.shape[0]
    for r0 in range(0, S, GRAM_BLOCK):
        r1 = min(S, r0 + GRAM_BLOCK)
        H[r1:, r0:r1].copy_(H[r0:r1, r1:].T)
