r"""The one seam through which the posterior gets its Jacobians.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``p`` all parameters,
``s`` subnetwork parameters.

:class:`SubnetJacobians` returns :math:`J_S(x)` ``(b, c, s)`` and :math:`f(x)`
``(b, c)``. Methods:

``"auto"`` (default)
    Fast activation-based path (:mod:`.fast`) for supported modules, generic
    ``torch.func`` path (:mod:`.functional`) for every other touched tensor.
``"functional"``
    Generic path for all touched tensors.
``"backend"``
    laplace-torch's backend Jacobians for all ``D`` parameters, then sliced:
    the reference this package replaces, kept for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch
from laplace_subnet_ext.jacobians.fast import (
    FastCapture,
    is_fast,
    prepare_input,
    selected_entries,
)
from laplace_subnet_ext.jacobians.functional import functional_jacobians
from laplace_subnet_ext.jacobians.layout import SubnetLayout

__all__ = ["SubnetJacobians", "JACOBIAN_METHODS"]

JACOBIAN_METHODS = ("auto", "functional", "backend")


class SubnetJacobians:
    """Jacobians of a model's outputs w.r.t. the subnetwork parameters only.

    Parameters
    ----------
    model : torch.nn.Module
    layout : SubnetLayout
    method : {"auto", "functional", "backend"}
    dict_key_x : str
        Key of the input tensor for dict-like inputs.
    generic_chunk_size : int, optional
        Batch chunk for the generic path; default chosen so one chunk's
        Jacobian w.r.t. the touched tensors stays below ~256 MB.
    backend_jacobians : callable, optional
        ``x -> (Js, f)`` of laplace's backend (full then sliced); required
        for ``method="backend"``.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: SubnetLayout,
        *,
        method: str = "auto",
        dict_key_x: str = "input_ids",
        generic_chunk_size: int | None = None,
        backend_jacobians: Callable | None = None,
    ) -> None:
        if method not in JACOBIAN_METHODS:
            raise ValueError(
                f"jacobian_method must be one of {JACOBIAN_METHODS}; got {method!r}."
            )
        if method == "backend" and backend_jacobians is None:
            raise ValueError("jacobian_method='backend' needs backend_jacobians.")
        self.model = model
        self.layout = layout
        self.method = method
        self.dict_key_x = dict_key_x
        self.generic_chunk_size = generic_chunk_size
        self.backend_jacobians = backend_jacobians

    def split(self) -> tuple[list, list]:
        """Touched tensors on the fast path, and on the generic path."""
        if self.method != "auto":
            return [], list(self.layout.selections)
        fast = [s for s in self.layout.selections if is_fast(s.module)]
        slow = [s for s in self.layout.selections if not is_fast(s.module)]
        return fast, slow

    def __call__(
        self, x: torch.Tensor | MutableMapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``Js`` ``(b, c, s)`` and ``f`` ``(b, c)``, both detached."""
        if self.method == "backend":
            Js, f = self.backend_jacobians(x)
            return Js.detach(), f.detach()
        fast, slow = self.split()
        with torch.enable_grad():
            if fast:
                Js, f = self._fast(fast, x)
            else:
                Js, f = None, None
            if slow:
                Js_slow, f_slow = self._generic(slow, x)
                if Js is None:
                    f = f_slow
                    Js = torch.empty(
                        *f.shape, self.layout.n_subnet, dtype=f.dtype, device=f.device
                    )
                for sel, cols in zip(slow, _split_cols(Js_slow, slow)):
                    Js[:, :, sel.positions] = cols
        return Js, f

    def _fast(self, fast: list, x) -> tuple[torch.Tensor, torch.Tensor]:
        modules = list(dict.fromkeys(sel.module for sel in fast))
        with FastCapture(modules) as cap:
            f = self.model(x)
        _check_output(f)
        b, c = f.shape
        Js = f.new_zeros(b, c, self.layout.n_subnet)
        outs = cap.outputs()
        # input-side factors once per forward pass, reused for all c outputs
        prepared = {
            (id(sel), j): prepare_input(sel, a)
            for sel in fast
            for j, (a, _) in enumerate(cap.records[sel.module])
        }
        for k in range(c):
            grads = torch.autograd.grad(
                f[:, k].sum(), outs, retain_graph=k < c - 1, allow_unused=True
            )
            grad_of = {id(z): g for z, g in zip(outs, grads)}
            for sel in fast:
                for j, (_, z) in enumerate(cap.records[sel.module]):
                    dz = grad_of[id(z)]
                    if dz is None:
                        continue
                    Js[:, k, sel.positions] += selected_entries(
                        sel, prepared[(id(sel), j)], dz.detach()
                    )
        return Js, f.detach()

    def _generic(self, slow: list, x) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_size(x, self.dict_key_x)
        chunk = self.generic_chunk_size or _default_chunk(slow, n)
        parts_J, parts_f = [], []
        for start in range(0, n, chunk):
            xc = slice_batch(x, start, min(start + chunk, n), n)
            Jc, fc = functional_jacobians(self.model, slow, xc)
            _check_output(fc)
            parts_J.append(Jc.detach())
            parts_f.append(fc.detach())
        return torch.cat(parts_J), torch.cat(parts_f)


def _split_cols(Js: torch.Tensor, selections: list) -> list[torch.Tensor]:
    sizes = [sel.local.numel() for sel in selections]
    return list(torch.split(Js, sizes, dim=-1))


def _default_chunk(selections: list, n: int, budget: int = 256 * 2**20) -> int:
    touched = sum(sel.param.numel() for sel in selections)
    itemsize = selections[0].param.element_size()
    # jacrev holds (chunk, c, touched); c is unknown here, assume up to 16 outputs
    per_sample = max(1, 16 * touched * itemsize)
    return int(max(1, min(n, budget // per_sample)))


def _check_output(f: torch.Tensor) -> None:
    if f.ndim != 2:
        raise ValueError(
            "the model output must be 2-D (batch, outputs); got shape "
            f"{tuple(f.shape)}. Reshape the output, e.g. with a final nn.Flatten()."
        )
