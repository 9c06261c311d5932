r"""Fast rule of ``nn.MultiheadAttention`` (its projections)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from laplace_subnet_ext._compat import swap_functional_linear
from laplace_subnet_ext.jacobians.rules.base import Rule, Use, linear_uses
from laplace_subnet_ext.jacobians.rules.registry import register_rule


@register_rule(nn.MultiheadAttention, builtin=True)
class MultiheadAttentionRule(Rule):
    """Projections of ``nn.MultiheadAttention``, recorded at their ``linear`` calls.

    ``F.multi_head_attention_forward`` applies the in- and out-projections with
    ``torch.nn.functional.linear``; during the module's forward that name is
    bound to a recorder (:class:`_AttentionRecorder`, installed by
    :meth:`attach`). Inside, tensors are sequence-first: ``(L, n, E)`` for the
    in-projections and ``(L * n, E)`` for the out-projection, mapped to
    ``(n, L, E)`` here.
    """

    def params(self, m):
        names = ("in_proj_weight", "in_proj_bias", "q_proj_weight")
        names += ("k_proj_weight", "v_proj_weight")
        own = [getattr(m, k) for k in names if getattr(m, k, None) is not None]
        return own + [p for p in (m.out_proj.weight, m.out_proj.bias) if p is not None]

    def uses(self, module, inputs, output):  # recorded by the linear recorder
        return []

    def attach(self, module, capture):
        rec = _AttentionRecorder(capture)
        return [
            module.register_forward_pre_hook(rec.enter, with_kwargs=True, prepend=True),
            module.register_forward_hook(rec.leave, prepend=True),
            rec,  # remove(): unbinds F.linear if an error skipped leave()
        ]

    @staticmethod
    def batch_size(module: nn.MultiheadAttention, query: torch.Tensor) -> int | None:
        if query.ndim != 3:
            return None
        return query.shape[0] if module.batch_first else query.shape[1]

    @staticmethod
    def linear_call_uses(weight, bias, a, z, n) -> list[Use]:
        """Uses of one ``linear(a, weight, bias)`` call inside attention."""
        if a.ndim == 3 and a.shape[1] == n:  # (L, n, E)

            def rows(u):
                return u.transpose(0, 1)

        elif a.ndim == 2 and a.shape[0] % n == 0:  # (L * n, E), row = l * n + b

            def rows(u):
                return u.reshape(-1, n, u.shape[-1]).transpose(0, 1)

        else:
            return []
        return linear_uses(weight, bias, a, z, n, rows)


class _AttentionRecorder:
    """While one ``nn.MultiheadAttention`` runs, ``F.linear`` records every call
    whose weight or bias the capture tracks (``capture.tracks`` /
    ``capture.record``); the name is restored when the module returns."""

    def __init__(self, capture) -> None:
        self.capture = capture
        self.saved: Callable | None = None
        self.n: int | None = None

    def enter(self, module, args, kwargs):
        query = args[0] if args else kwargs.get("query")
        self.n = MultiheadAttentionRule.batch_size(module, query)
        if self.saved is None:
            self.saved = swap_functional_linear(self.linear)
        return None

    def leave(self, module, inputs, output):
        self.remove()
        return None

    def remove(self) -> None:
        if self.saved is not None:
            swap_functional_linear(self.saved)
            self.saved = None
        self.n = None

    def linear(self, input, weight, bias=None):
        out = self.saved(input, weight, bias)
        w = weight if self.capture.tracks(weight) else None
        b = bias if bias is not None and self.capture.tracks(bias) else None
        if self.n is None or (w is None and b is None):
            return out
        self.capture.record(
            MultiheadAttentionRule.linear_call_uses(w, b, input, out, self.n)
        )
        return out.clone()
