r"""Run-time check of fast Jacobian columns against plain autograd.

Index conventions: ``b`` batch, ``c`` outputs, ``s`` subnetwork parameters.

One reverse pass of the unmodified model (plain autograd, no capture hooks,
:func:`.functional.autograd_vjp`) with random output weights :math:`v`
``(b, c)`` gives :math:`\sum_b v_b^\top J_b` for every checked tensor at once;
the fast path gives the same from its columns, ``einsum("bc,bcs->s", v, Js)``.
The comparison is per tensor, so a mismatch names the offending tensors
directly. Random per-sample weights also catch rows attributed to the wrong
sample. The engine checks each tensor on its first *live* use (the first batch
in which the forward pass reaches it); cost about one extra forward and backward
pass of the model per batch that brings new tensors.

The tolerance follows the least precise floating dtype in the forward pass
(:attr:`.guard.GraphReport.compute_eps`): a float64 model whose normalisation
layers upcast to float32 is compared at float32 accuracy, so an exact fast path
is not demoted for the reference's round-off.

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

from laplace_subnet_ext.jacobians.functional import autograd_vjp
from laplace_subnet_ext.jacobians.layout import TensorSelection

__all__ = ["tolerance", "mismatched_tensors", "mismatched_vjp"]


def tolerance(compute_eps: float) -> float:
    """Relative tolerance of the check: ``min(0.05, 5 sqrt(eps))`` of the least
    precise dtype of the forward pass (float64: 7e-8, float32: 2e-3, bfloat16 /
    float16: 0.05)."""
    return min(0.05, 5 * compute_eps**0.5)


def mismatched_tensors(
    model: nn.Module,
    selections: list[TensorSelection],
    Js: torch.Tensor,
    x: torch.Tensor | MutableMapping[str, Any],
    compute_eps: float,
    seed: int = 0,
) -> dict[str, float]:
    """Names of the tensors whose columns of ``Js`` disagree with plain autograd.

    Parameters
    ----------
    model : torch.nn.Module
    selections : list of TensorSelection
        The tensors to check (those computed by the fast path).
    Js : torch.Tensor
        ``(b, c, s)`` Jacobians, all S columns.
    x : torch.Tensor or dict
        The inputs ``Js`` was computed for.
    compute_eps : float
        Machine epsilon of the least precise dtype of the forward pass.

    Returns
    -------
    dict
        ``name -> relative error`` for every tensor above :func:`tolerance`.
    """
    g, v, f = autograd_vjp(model, selections, x, seed=seed)
    ours = [
        torch.einsum("bc,bcs->s", v, Js[:, :, s.positions].to(v.dtype))
        for s in selections
    ]
    return _compare(selections, ours, g, compute_eps, f.dtype)


def mismatched_vjp(
    model: nn.Module,
    selections: list[TensorSelection],
    ours: list[torch.Tensor],
    x: torch.Tensor | MutableMapping[str, Any],
    v: torch.Tensor,
    compute_eps: float,
) -> dict[str, float]:
    r"""Like :func:`mismatched_tensors`, for a fast path that never formed
    ``Js``: ``ours[l]`` is its :math:`\sum_{bc} v_{bc} J_{bcs}` for tensor
    ``l``, ``v`` ``(b, c)`` the output weights it used."""
    g, _, f = autograd_vjp(model, selections, x, v=v.detach())
    return _compare(selections, ours, g, compute_eps, f.dtype)


def _compare(selections, ours, g, compute_eps: float, dtype) -> dict[str, float]:
    tol = tolerance(compute_eps)
    sizes = [int(s.local.numel()) for s in selections]
    refs = list(torch.split(g, sizes))
    # absolute floor: a tensor whose gradient vanishes (e.g. attention key biases,
    # zero by softmax shift-invariance) is compared at the scale of the others
    rms = g.pow(2).mean().sqrt()
    floor_factor = max(1e-3, 10 * compute_eps**0.5)
    bad = {}
    for s, ref, o in zip(selections, refs, ours):
        o = o.to(ref.dtype)
        floor = floor_factor * rms * ref.numel() ** 0.5
        scale = torch.stack([ref.norm(), o.norm(), floor]).max()
        err = float((o - ref).norm() / scale.clamp_min(torch.finfo(dtype).tiny))
        if err > tol:
            bad[s.name] = err
    return bad
