r"""The rule-writing kit: :class:`Use`, :class:`Outer`, :class:`Rule` and the
row helpers a rule builds its uses with.

Index conventions: ``n`` samples (the batch), ``s`` selected entries of one
tensor, ``t`` positions that share a weight, ``i`` input features, ``o`` output
features. See :mod:`laplace_subnet_ext.jacobians.rules` for the maths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Use",
    "Outer",
    "Rule",
    "leading",
    "bias_use",
    "linear_uses",
    "feature_rows",
    "channels",
]


@dataclass(eq=False, kw_only=True)
class Use:
    r"""One use of a parameter tensor inside a recognised operation.

    Attributes
    ----------
    param : torch.Tensor
        The parameter (by identity).
    z : torch.Tensor
        The operation's output, a node of the autograd graph.
    inputs : tuple of torch.Tensor
        The operation's differentiable inputs; the guard's graph walk stops there.
    n : int
        Number of samples in the rows of ``z``.
    factor : callable
        ``local -> (n, s, t)`` input-side factor, or ``None`` for ones.
    gradient : callable
        ``(dz, local) -> (n, s, t)`` output gradient at each entry's unit.
    sample_rows : callable
        ``dz -> (n, m)``: a tensor laid out like ``z``, samples leading, the
        layout under which the rule credits the rows of ``z`` to samples.
        The engine checks this crediting on every forward pass
        (:func:`.guard.misattributed`).
    outer : Outer or None
        The same entries written as a matrix product, for a weight ``(o, i)``
        used as :math:`\sum_t g_{ot} h_{it}`: lets the engine form a dense
        block of per-sample gradients with one batched matmul where the
        selected entries fill enough of their rows and columns. ``None``: the
        engine uses ``factor`` and ``gradient`` only.
    """

    param: torch.Tensor
    z: torch.Tensor
    inputs: tuple
    n: int
    factor: Callable[[torch.Tensor], torch.Tensor | None]
    gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sample_rows: Callable[[torch.Tensor], torch.Tensor]
    outer: Outer | None = None


@dataclass(eq=False, kw_only=True)
class Outer:
    r"""A weight use :math:`\partial f/\partial W_{oi} = \sum_t g_{ot} h_{it}`.

    Entry ``local`` of the flattened weight is row ``local // in_features``,
    column ``local % in_features`` (a Linear weight; a Conv2d weight with its
    input channels and kernel offsets flattened into columns).

    Attributes
    ----------
    out_rows : callable
        ``dz -> (n, o, t)``: the output gradient by weight row.
    in_cols : callable
        ``cols -> (n, t, len(cols))``: the input factor of the given columns.
    in_features : int
        Columns of the weight.
    """

    out_rows: Callable[[torch.Tensor], torch.Tensor]
    in_cols: Callable[[torch.Tensor], torch.Tensor]
    in_features: int


def leading(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Samples are the leading dimension: ``(n, ...) -> (n, m)``."""
    return lambda u: u.reshape(n, -1)


def bias_use(bias, z, inputs, n, gradient, sample_rows) -> Use:
    r"""A use whose input factor is ones (a bias): :math:`\sum_t g_{st}`."""
    return Use(
        param=bias,
        z=z,
        inputs=inputs,
        n=n,
        factor=lambda local: None,
        gradient=gradient,
        sample_rows=sample_rows,
    )


def linear_uses(
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    z: torch.Tensor,
    n: int,
    rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Use]:
    r"""Uses of ``z = a W^T + b``: :math:`\partial f/\partial W_{oi} = \sum_t g_{to} a_{ti}`.

    ``rows`` maps a tensor laid out like ``a`` / ``z`` to ``(n, t, features)``
    (default: samples lead).
    """
    rows = rows or feature_rows(n)
    A = rows(a.detach())  # (n, t, i)

    def flat(u: torch.Tensor) -> torch.Tensor:
        return rows(u).reshape(n, -1)

    uses = []
    if weight is not None:
        in_f = weight.shape[1]
        uses.append(
            Use(
                param=weight,
                z=z,
                inputs=(a,),
                n=n,
                factor=lambda local: A.index_select(2, local % in_f).transpose(1, 2),
                gradient=lambda dz, local: (
                    rows(dz).index_select(2, local // in_f).transpose(1, 2)
                ),
                sample_rows=flat,
                outer=Outer(
                    out_rows=lambda dz: rows(dz).transpose(1, 2),
                    in_cols=lambda cols: A.index_select(2, cols),
                    in_features=in_f,
                ),
            )
        )
    if bias is not None:
        uses.append(
            bias_use(
                bias,
                z,
                (a,),
                n,
                lambda dz, local: rows(dz)[:, :, local].transpose(1, 2),
                flat,
            )
        )
    return uses


def feature_rows(
    n: int, k: int = 1, sequence_first: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(n, ..., *features)``, or sequence-first ``(t0, n, ..., *features)``, with
    ``k`` trailing feature dims -> ``(n, t, f)``."""

    def rows(u: torch.Tensor) -> torch.Tensor:
        if sequence_first:
            u = u.movedim(1, 0)
        return u.reshape(n, -1, *u.shape[u.ndim - k :]).flatten(2)

    return rows


def channels(u: torch.Tensor) -> torch.Tensor:
    """``(n, ch, ...)`` -> ``(n, ch, t)``."""
    return u.flatten(2) if u.ndim > 2 else u.unsqueeze(-1)


class Rule:
    """A fast Jacobian rule for one module type (subclasses fill the two hooks)."""

    #: module class served (exact ``forward`` of this class only)
    cls: type[nn.Module] = nn.Module

    def applies(self, module: nn.Module) -> bool:
        """Whether ``module``'s configuration is covered."""
        return True

    def params(self, module: nn.Module) -> list[torch.Tensor]:
        """Parameters for which this rule can produce uses."""
        return [p for _, p in module.named_parameters(recurse=False)]

    def uses(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> list[Use]:
        """Uses recorded from one call (called by a forward hook)."""
        raise NotImplementedError

    def attach(self, module: nn.Module, capture) -> list:
        """Install the hooks that record ``module``'s uses during one capture.

        Returns handles (objects with ``remove()``), removed when the capture
        exits, also on an error. Default: one prepended forward hook,
        ``capture.module_hook``, which calls :meth:`uses` (or
        :meth:`sequence_first_uses`) and hands the uses to ``capture.record``.
        A rule whose module applies its parameters inside a functional call
        overrides this (see :class:`MultiheadAttentionRule`)."""
        return [module.register_forward_hook(capture.module_hook, prepend=True)]

    def sequence_first_uses(
        self, module: nn.Module, inputs: tuple, output: torch.Tensor
    ) -> list[Use]:
        """Uses of one call inside a sequence-first layer (:data:`LAYOUT_OWNERS`):
        the input is ``(t, n, ...)``, samples on dimension 1. Default: none (the
        module's tensors take the generic path there)."""
        return []
