r"""Parameters used directly in a module's own ``forward``: three shapes of use.

Index conventions: ``n`` samples, ``s`` selected entries of the parameter,
``t`` positions that share an entry.

Position tables, class / register tokens, learned queries, layer-scale gammas
and learned temperatures are ``nn.Parameter``\ s that a model uses in its own
``forward`` (``x + self.pos_embedding``, ``torch.cat([self.cls.expand(n, -1,
-1), x], 1)``, ``self.gamma * x``), outside any module with a rule. While the
fast path's forward pass runs, :class:`DirectUses` (a ``TorchFunctionMode``)
records those calls as :class:`~.rules.Use`\ s:

``x + P`` / ``P + x``
    ``torch.add`` / ``Tensor.add`` / ``+`` (``alpha`` 1), ``P`` broadcast over
    the batch (its padded shape has 1 on the batch dimension and 1 or the
    output's size elsewhere): :math:`\partial z_{b\ldots}/\partial P_j = 1` at
    every position that broadcasts to :math:`j`, so the Jacobian entry is the
    output gradient summed over those positions (factor: ones).
``x * P`` / ``P * x``
    ``torch.mul`` / ``Tensor.mul`` / ``*``, the same broadcast: factor
    :math:`x` at those positions (a 0-dim ``P`` - a learned temperature - is
    broadcast over everything).
``torch.cat([P.expand(n, ...), x], dim)``
    a batch expansion of ``P`` (``Tensor.expand``) concatenated along a
    dimension other than the batch: the gradient of the output's slice that
    holds ``P`` (factor: ones). ``x + P.expand(...)`` is read as ``x + P``.

Every other use (a slice ``P[:, :t]``, an interpolation, an in-place op, a
function of ``P``) is recorded by nothing, so the graph guard finds the
parameter's edge unexplained and the parameter takes the generic path, as
before. The recorded uses are held to the same proofs as a module rule's: the
graph guard (every edge into ``P`` inside a recorded use), the per-pass sample
check and the run-time check against plain autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from laplace_subnet_ext.jacobians.rules import Use, leading

__all__ = ["DirectUses", "DIRECT_SHAPES"]

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_MUL = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_EXPAND = {torch.Tensor.expand, torch.Tensor.expand_as}

#: the shapes of direct use that are recorded (for messages and docs)
DIRECT_SHAPES = "broadcast add, token concatenation, elementwise scale"


def _entries(p_shape: tuple, out_shape: tuple) -> Callable | None:
    """``u -> (n, numel(P), t)`` for tensors laid out like the output, if ``P``
    broadcasts to it over the batch; else None."""
    k = len(out_shape)
    if k < 1 or len(p_shape) > k:
        return None
    pad = (1,) * (k - len(p_shape)) + tuple(p_shape)
    if pad[0] != 1 or any(p not in (1, o) for p, o in zip(pad[1:], out_shape[1:])):
        return None
    pdims = [i for i in range(1, k) if pad[i] != 1]
    perm = [0] + pdims + [i for i in range(1, k) if pad[i] == 1]
    numel = math.prod(pad)

    def to_entries(u: torch.Tensor) -> torch.Tensor:
        return u.permute(perm).reshape(u.shape[0], numel, -1)

    return to_entries


class DirectUses(TorchFunctionMode):
    """Record the direct uses (module docstring) of ``params`` while active.

    Parameters
    ----------
    params : dict
        ``id(param) -> param``: the parameters no module rule covers.
    record : callable
        Receives each list of recorded uses (``FastCapture.record``).
    """

    def __init__(self, params: dict[int, torch.Tensor], record: Callable) -> None:
        super().__init__()
        self.params = params
        self.record = record
        #: id(expanded view) -> (view, param): batch expansions of a parameter
        self.expanded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _param(self, t) -> torch.Tensor | None:
        """The tracked parameter ``t`` is, or is a batch expansion of."""
        if not isinstance(t, torch.Tensor):
            return None
        if id(t) in self.params and self.params[id(t)] is t:
            return t
        hit = self.expanded.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            if func in _EXPAND:
                p = self._param(args[0])
                if p is not None:
                    self.expanded[id(out)] = (out, p)
            elif (func in _ADD or func in _MUL) and self._binary(
                func in _MUL, args, kwargs, out
            ):
                return out.clone()  # later in-place ops cannot change the use's z
            elif func in _CAT and self._cat(args, kwargs, out):
                return out.clone()
        return out

    def _binary(self, scale: bool, args, kwargs, out: torch.Tensor) -> bool:
        """Record ``x + P`` / ``x * P``; whether it was recorded."""
        if len(args) != 2 or kwargs.get("alpha", 1) != 1 or "out" in kwargs:
            return False
        a, b = args
        pa, pb = self._param(a), self._param(b)
        if (pa is None) == (pb is None):  # neither, or both parameters
            return False
        p, x = (pa, b) if pa is not None else (pb, a)
        if not isinstance(x, torch.Tensor) or x.shape != out.shape:
            return False  # x itself must carry the batch and the output's shape
        to_entries = _entries(tuple(p.shape), tuple(out.shape))
        if to_entries is None:
            return False
        n = out.shape[0]
        if scale:
            X = to_entries(x.detach())  # (n, numel, t)

            def factor(local, X=X):
                return X.index_select(1, local)
        else:

            def factor(local):
                return None

        self.record(
            [
                Use(
                    param=p,
                    z=out,
                    inputs=(x,),
                    n=n,
                    factor=factor,
                    gradient=lambda dz, local: to_entries(dz).index_select(1, local),
                    sample_rows=leading(n),
                )
            ]
        )
        return True

    def _cat(self, args, kwargs, out: torch.Tensor) -> bool:
        """Record batch expansions of parameters in a concatenation."""
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if (
            not isinstance(tensors, (list, tuple))
            or not isinstance(dim, int)
            or out.ndim < 2
            or any(
                not isinstance(t, torch.Tensor) or t.ndim != out.ndim for t in tensors
            )
        ):
            return False  # (legacy empty tensors, named dims: not recorded)
        dim = dim % out.ndim
        if dim == 0:
            return False  # along the batch: not a token axis
        n, offset, uses = out.shape[0], 0, []
        for t in tensors:
            size = t.shape[dim]
            hit = self.expanded.get(id(t)) if isinstance(t, torch.Tensor) else None
            p = hit[1] if hit is not None and hit[0] is t else None
            if p is not None and t.shape[0] == n:
                to_entries = _entries(tuple(p.shape), tuple(t.shape))
                if to_entries is not None:
                    others = tuple(
                        o for o in tensors if o is not t and isinstance(o, torch.Tensor)
                    )

                    def gradient(dz, local, f=to_entries, off=offset, size=size):
                        return f(dz.narrow(dim, off, size)).index_select(1, local)

                    uses.append(
                        Use(
                            param=p,
                            z=out,
                            inputs=others,
                            n=n,
                            factor=lambda local: None,
                            gradient=gradient,
                            sample_rows=leading(n),
                        )
                    )
            offset += size
        if uses:
            self.record(uses)
        return bool(uses)
