r"""Generic path: Jacobians w.r.t. the touched tensors only, for any model.

Index conventions: ``b`` batch, ``c`` outputs, ``s`` subnetwork parameters.

Two implementations, both exact for any module (custom ``forward``, parameters
on non-leaf modules, grouped convolutions, recurrent layers, ...):

:func:`functional_jacobians`
    ``torch.func.jacrev`` of ``functional_call``; only the touched tensors are
    differentiated and every other parameter is passed *detached*, so kernels
    without a batching rule for their derivative (SDPA with a learned float
    mask, ``nn.EmbeddingBag``) are not asked for one. ``O(b c numel)`` per
    chunk; the engine chunks the batch.
:func:`autograd_jacobians`
    One ``backward()`` per (sample, output) of the unmodified model, reading
    ``.grad`` of the touched tensors: slow (``b c`` reverse passes) but it works
    wherever plain autograd does, where ``torch.func`` cannot (reentrant and
    non-reentrant ``torch.utils.checkpoint``, packed sequences, a ``.to()``
    inside ``forward``, in-place updates of parameters such as
    ``Embedding(max_norm=...)``). The engine uses it when
    :func:`functional_jacobians` raises.

Both differentiate the *function*: gradient modifiers that are not derivatives
(``scale_grad_by_freq`` of ``nn.Embedding`` / ``nn.EmbeddingBag``) are switched
off while they run (:func:`plain_derivatives`).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.jacobians.layout import TensorSelection

__all__ = [
    "functional_jacobians",
    "autograd_jacobians",
    "autograd_vjp",
    "plain_derivatives",
]

_FREQ_SCALED = (nn.Embedding, nn.EmbeddingBag)


@contextmanager
def plain_derivatives(model: nn.Module) -> Iterator[None]:
    """Switch off ``scale_grad_by_freq`` (a training-gradient rescaling by token
    counts in the mini-batch, not a derivative) for the duration."""
    changed = [
        m
        for m in model.modules()
        if isinstance(m, _FREQ_SCALED) and getattr(m, "scale_grad_by_freq", False)
    ]
    for m in changed:
        m.scale_grad_by_freq = False
    try:
        yield
    finally:
        for m in changed:
            m.scale_grad_by_freq = True


def _flat_columns(jac: torch.Tensor, lead: int, sel: TensorSelection) -> torch.Tensor:
    """``(*lead_shape, numel)[..., local]``; works for 0-dim parameters too."""
    return jac.reshape(*jac.shape[:lead], -1)[..., sel.local]


def functional_jacobians(
    model: nn.Module,
    selections: list[TensorSelection],
    x: torch.Tensor | MutableMapping[str, Any],
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobian columns of ``selections`` for one chunk of inputs (``torch.func``);
    ``chunk_size``: cotangents per vectorised backward pass (``jacrev``'s; None:
    all at once).

    Returns
    -------
    Js : torch.Tensor
        ``(b, c, s)`` with ``s = sum(len(sel.local))``, in ``selections`` order.
    f : torch.Tensor
        ``(b, c)`` model output.
    """
    touched = {sel.name: sel.param.detach() for sel in selections}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in touched}

    def forward(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.func.functional_call(model, {**frozen, **p}, (x,), strict=False)
        return out, out

    with plain_derivatives(model):
        jac, f = torch.func.jacrev(forward, has_aux=True, chunk_size=chunk_size)(
            touched
        )
    cols = [_flat_columns(jac[sel.name], f.ndim, sel) for sel in selections]
    return torch.cat(cols, dim=-1), f


@contextmanager
def _own_grads(model: nn.Module) -> Iterator[None]:
    """Set every parameter's ``.grad`` aside and restore it afterwards."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def _read_grads(selections: list[TensorSelection]) -> torch.Tensor:
    cols = []
    for sel in selections:
        g = sel.param.grad
        flat = (
            torch.zeros_like(sel.param).reshape(-1)
            if g is None
            else g.detach().reshape(-1).clone()
        )
        cols.append(flat[sel.local])
    return torch.cat(cols)


def _zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def autograd_vjp(
    model: nn.Module,
    selections: list[TensorSelection],
    x: torch.Tensor | MutableMapping[str, Any],
    v: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One reverse pass of the unmodified model: :math:`\sum_{bc} v_{bc} J_{bcs}`.

    Parameters
    ----------
    v : torch.Tensor, optional
        ``(b, c)`` output weights; standard normal (``seed``) by default.

    Returns
    -------
    g : torch.Tensor
        ``(s,)`` the weighted gradient w.r.t. the selected entries.
    v : torch.Tensor
        ``(b, c)`` the weights used.
    f : torch.Tensor
        ``(b, c)`` the model output.
    """
    with _own_grads(model), plain_derivatives(model), torch.enable_grad():
        f = model(x)
        if v is None:
            gen = torch.Generator(device=f.device).manual_seed(seed)
            v = torch.randn(f.shape, dtype=f.dtype, device=f.device, generator=gen)
        # backward() rather than autograd.grad: reentrant checkpointing refuses .grad
        (f * v).sum().backward()
        return _read_grads(selections), v, f.detach()


def autograd_jacobians(
    model: nn.Module,
    selections: list[TensorSelection],
    x: torch.Tensor | MutableMapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobian columns of ``selections``, one ``backward()`` per (sample, output).

    Same returns as :func:`functional_jacobians`. The model runs once on the
    whole chunk, so samples that interact (batch statistics) are handled exactly.
    """
    with _own_grads(model), plain_derivatives(model), torch.enable_grad():
        f = model(x)
        if f.ndim != 2:
            return torch.empty(0), f.detach()  # the engine reports the shape
        b, c = f.shape
        n_sub = sum(int(sel.local.numel()) for sel in selections)
        Js = f.new_zeros(b, c, n_sub)
        for i in range(b):
            for k in range(c):
                _zero_grads(model)
                f[i, k].backward(retain_graph=(i, k) != (b - 1, c - 1))
                Js[i, k] = _read_grads(selections)
    return Js, f.detach()
