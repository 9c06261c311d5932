r"""Run-time check of fast Jacobian columns against ``torch.func``.

Index conventions: ``b`` batch, ``c`` outputs, ``s`` subnetwork parameters.

One reverse pass of the unmodified model (``torch.func.vjp`` of
``functional_call``) with random output weights :math:`v` ``(b, c)`` gives
:math:`\sum_b v_b^\top J_b` for every touched tensor at once; the fast path gives
the same from its columns, ``einsum("bc,bcs->s", v, Js)``. The comparison is per
tensor, so a mismatch names the offending tensors directly. Random per-sample
weights also catch rows attributed to the wrong sample. Cost: about one extra
forward and backward pass of the model, once per :class:`.SubnetJacobians`.

A tensor is compared at the scale :math:`\max(\|r_l\|, \|o_l\|, \phi \cdot
\mathrm{rms}(r) \sqrt{s_l})` with :math:`\phi = \max(10^{-3}, 10\sqrt{\epsilon})`:
tensors whose gradient vanishes by symmetry are not flagged for round-off, and an
error below :math:`\phi` of the typical entry is below what the curvature can show.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.jacobians.layout import TensorSelection

__all__ = ["tolerance", "mismatched_tensors"]


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the check: ``min(0.05, 5 sqrt(eps))`` of ``dtype``
    (float64: 7e-8, float32: 2e-3, bfloat16 / float16: 0.05)."""
    return min(0.05, 5 * torch.finfo(dtype).eps ** 0.5)


def mismatched_tensors(
    model: nn.Module,
    selections: list[TensorSelection],
    Js: torch.Tensor,
    x: torch.Tensor | MutableMapping[str, Any],
    seed: int = 0,
) -> dict[str, float]:
    """Names of the tensors whose columns of ``Js`` disagree with ``torch.func``.

    Parameters
    ----------
    model : torch.nn.Module
    selections : list of TensorSelection
        The tensors to check (those computed by the fast path).
    Js : torch.Tensor
        ``(b, c, s)`` Jacobians, all S columns.
    x : torch.Tensor or dict
        The inputs ``Js`` was computed for.

    Returns
    -------
    dict
        ``name -> relative error`` for every tensor above :func:`tolerance`.
    """
    params = {s.name: s.param.detach() for s in selections}

    def forward(p):
        return torch.func.functional_call(model, p, (x,), strict=False)

    with torch.enable_grad():
        f, pullback = torch.func.vjp(forward, params)
    gen = torch.Generator(device=f.device).manual_seed(seed)
    v = torch.randn(f.shape, dtype=f.dtype, device=f.device, generator=gen)
    (grads,) = pullback(v)
    tol = tolerance(f.dtype)
    refs = [grads[s.name].detach().flatten()[s.local] for s in selections]
    # absolute floor: a tensor whose gradient vanishes (e.g. attention key biases,
    # zero by softmax shift-invariance) is compared at the scale of the others
    rms = torch.cat(refs).pow(2).mean().sqrt()
    floor_factor = max(1e-3, 10 * torch.finfo(f.dtype).eps ** 0.5)
    bad = {}
    for s, ref in zip(selections, refs):
        ours = torch.einsum("bc,bcs->s", v, Js[:, :, s.positions].to(v.dtype))
        floor = floor_factor * rms * ref.numel() ** 0.5
        scale = torch.stack([ref.norm(), ours.norm(), floor]).max()
        err = float((ours - ref).norm() / scale.clamp_min(torch.finfo(f.dtype).tiny))
        if err > tol:
            bad[s.name] = err
    return bad
