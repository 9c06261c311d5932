r"""Fast Jacobian rules: one entry per module type, looked up in :data:`RULES`.

Index conventions: ``n`` samples (the batch), ``s`` selected entries of one
tensor, ``t`` positions that share a weight (sequence positions, spatial
locations), ``i`` input features, ``o`` output features.

Each rule turns one call of a module into :class:`Use` records: "this parameter
entered the operation whose output is ``z``, with this input". For every use the
Jacobian entry of a selected weight is a sum over positions of two factors,

.. math:: \partial f_k / \partial \theta_s = \sum_t g_{ks t}\, h_{s t},

with :math:`g` gathered from :math:`\partial f_k / \partial z` (``Use.gradient``)
and :math:`h` from the op's input (``Use.factor``; ``None`` means ones, e.g. a
bias). A parameter used several times (a module called twice, tied weights,
an attention block's projections) gets one use per call; the engine sums them.

A rule only *proposes* uses. Whether they account for every use of the
parameter in the forward pass is decided afterwards from the autograd graph
(:mod:`.guard`); a parameter with an unexplained use takes the generic path.

Coverage (``forward`` not overridden by a subclass or on the instance):

==========================  =====================================================
``nn.Linear``               weight, bias; input ``(n, ..., i)``
``nn.Conv2d``               ``groups=1``, ``padding_mode="zeros"``, numeric padding
``nn.BatchNorm1d/2d/3d``    eval mode with running statistics
``nn.LayerNorm``            weight, bias
``nn.Embedding``            ``max_norm`` and ``scale_grad_by_freq``: see the rule
``nn.MultiheadAttention``   batched inputs; ``in_proj_weight`` / ``in_proj_bias``
                            for self-attention (query is key is value),
                            ``q/k/v_proj_weight`` (``kdim``/``vdim``), ``out_proj``
==========================  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Use",
    "Outer",
    "Rule",
    "RULES",
    "covered_modules",
    "register_rule",
    "unregister_rule",
    "rule_for",
    "is_fast",
    "linear_uses",
    "LAYOUT_OWNERS",
    "sequence_first_modules",
]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(eq=False)
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


@dataclass(eq=False)
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


def _leading(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Samples are the leading dimension: ``(n, ...) -> (n, m)``."""
    return lambda u: u.reshape(n, -1)


def _bias_use(bias, z, inputs, n, gradient, sample_rows) -> Use:
    r"""A use whose input factor is ones (a bias): :math:`\sum_t g_{st}`."""
    return Use(bias, z, inputs, n, lambda local: None, gradient, sample_rows)


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
    rows = rows or _feature_rows(n)
    A = rows(a.detach())  # (n, t, i)

    def flat(u: torch.Tensor) -> torch.Tensor:
        return rows(u).reshape(n, -1)

    uses = []
    if weight is not None:
        in_f = weight.shape[1]
        uses.append(
            Use(
                weight,
                z,
                (a,),
                n,
                lambda local: A.index_select(2, local % in_f).transpose(1, 2),
                lambda dz, local: (
                    rows(dz).index_select(2, local // in_f).transpose(1, 2)
                ),
                flat,
                Outer(
                    lambda dz: rows(dz).transpose(1, 2),
                    lambda cols: A.index_select(2, cols),
                    in_f,
                ),
            )
        )
    if bias is not None:
        uses.append(
            _bias_use(
                bias,
                z,
                (a,),
                n,
                lambda dz, local: rows(dz)[:, :, local].transpose(1, 2),
                flat,
            )
        )
    return uses


def _feature_rows(
    n: int, k: int = 1, sequence_first: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(n, ..., *features)``, or sequence-first ``(t0, n, ..., *features)``, with
    ``k`` trailing feature dims -> ``(n, t, f)``."""

    def rows(u: torch.Tensor) -> torch.Tensor:
        if sequence_first:
            u = u.movedim(1, 0)
        return u.reshape(n, -1, *u.shape[u.ndim - k :]).flatten(2)

    return rows


def _channels(u: torch.Tensor) -> torch.Tensor:
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


class LinearRule(Rule):
    cls = nn.Linear

    def uses(self, module, inputs, output):
        return self._uses(module, inputs[0], output, sequence_first=False)

    def sequence_first_uses(self, module, inputs, output):
        return self._uses(module, inputs[0], output, sequence_first=True)

    @staticmethod
    def _uses(module, a, output, sequence_first: bool) -> list[Use]:
        b = int(sequence_first)  # the batch dimension
        if a.ndim < 2 + b:  # unbatched: leave it to the generic path
            return []
        n = a.shape[b]
        rows = _feature_rows(n, 1, sequence_first)
        return linear_uses(module.weight, module.bias, a, output, n, rows)


class Conv2dRule(Rule):
    cls = nn.Conv2d

    def applies(self, module):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )

    def uses(self, m, inputs, output):
        a = inputs[0]
        if a.ndim != 4:
            return []
        n = a.shape[0]
        unf = F.unfold(a.detach(), m.kernel_size, m.dilation, m.padding, m.stride)
        per_out = m.weight[0].numel()
        out = [
            Use(
                m.weight,
                output,
                (a,),
                n,
                lambda local: unf.index_select(1, local % per_out),
                lambda dz, local: _channels(dz).index_select(1, local // per_out),
                _leading(n),
                Outer(
                    _channels,
                    lambda cols: unf.index_select(1, cols).transpose(1, 2),
                    per_out,
                ),
            )
        ]
        if m.bias is not None:
            out.append(
                _bias_use(
                    m.bias,
                    output,
                    (a,),
                    n,
                    lambda dz, local: _channels(dz)[:, local, :],
                    _leading(n),
                )
            )
        return out


class BatchNormRule(Rule):
    cls = nn.BatchNorm2d

    def applies(self, module):
        return (not module.training) and module.running_mean is not None

    def uses(self, m, inputs, output):
        a = inputs[0]
        shape = [1, -1] + [1] * (a.ndim - 2)
        xhat = _channels(
            (a.detach() - m.running_mean.reshape(shape))
            / torch.sqrt(m.running_var.reshape(shape) + m.eps)
        )
        return _affine_uses(m, a, output, a.shape[0], xhat, _channels, by_channel=True)


class LayerNormRule(Rule):
    cls = nn.LayerNorm

    def uses(self, m, inputs, output):
        return self._uses(m, inputs[0], output, sequence_first=False)

    def sequence_first_uses(self, m, inputs, output):
        return self._uses(m, inputs[0], output, sequence_first=True)

    @staticmethod
    def _uses(m, a, output, sequence_first: bool) -> list[Use]:
        k = len(m.normalized_shape)
        b = int(sequence_first)  # the batch dimension
        if a.ndim < k + 1 + b:
            return []
        n = a.shape[b]
        rows = _feature_rows(n, k, sequence_first)  # -> (n, t, prod(normalized))
        xhat = F.layer_norm(a.detach(), m.normalized_shape, None, None, m.eps)
        return _affine_uses(
            m,
            a,
            output,
            n,
            rows(xhat),
            rows,
            by_channel=False,
            sample_rows=lambda u: rows(u).reshape(n, -1),
        )


def _affine_uses(
    m, a, output, n, xhat, rows, by_channel: bool, sample_rows=None
) -> list[Use]:
    """Elementwise affine ``z = w * xhat + b`` (BatchNorm: ``(n, ch, t)``, LayerNorm:
    ``(n, t, features)``)."""
    sample_rows = sample_rows or _leading(n)

    def pick(u, local):
        return u[:, local, :] if by_channel else u[:, :, local].transpose(1, 2)

    out = []
    if m.weight is not None:
        out.append(
            Use(
                m.weight,
                output,
                (a,),
                n,
                lambda local: pick(xhat, local),
                lambda dz, local: pick(rows(dz), local),
                sample_rows,
            )
        )
    if m.bias is not None:
        out.append(
            _bias_use(
                m.bias,
                output,
                (a,),
                n,
                lambda dz, local: pick(rows(dz), local),
                sample_rows,
            )
        )
    return out


class EmbeddingRule(Rule):
    """Rows looked up by the tokens.

    ``max_norm``: ``F.embedding`` renormalises the looked-up rows in place, under
    ``no_grad``, before the lookup; autograd (and this rule) differentiate the
    lookup at the renormalised values. ``scale_grad_by_freq`` rescales the
    *training gradient* by token counts in the mini-batch; it is not a
    derivative of the function, and this rule ignores it (the generic path and
    the run-time check switch it off while they differentiate).
    """

    cls = nn.Embedding

    def uses(self, m, inputs, output):
        tokens = inputs[0]
        if tokens.ndim < 1:
            return []
        n = tokens.shape[0]
        tok = tokens.reshape(n, -1)  # (n, t)
        E = m.embedding_dim

        def factor(local):
            row = local // E
            hit = (tok[:, None, :] == row[None, :, None]).to(m.weight.dtype)
            if m.padding_idx is not None:
                hit = hit * (row != m.padding_idx).to(hit.dtype)[None, :, None]
            return hit  # (n, s, t)

        return [
            Use(
                m.weight,
                output,
                (),
                n,
                factor,
                lambda dz, local: dz.reshape(n, -1, E)[:, :, local % E].transpose(1, 2),
                _leading(n),
            )
        ]


class MultiheadAttentionRule(Rule):
    """Projections of ``nn.MultiheadAttention``, recorded at their ``linear`` calls.

    ``F.multi_head_attention_forward`` applies the in- and out-projections with
    ``torch.nn.functional.linear``; during the module's forward that name is
    bound to a recorder (:class:`_AttentionRecorder`, installed by
    :meth:`attach`). Inside, tensors are sequence-first: ``(L, n, E)`` for the
    in-projections and ``(L * n, E)`` for the out-projection, mapped to
    ``(n, L, E)`` here.
    """

    cls = nn.MultiheadAttention

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
            self.saved = F.linear
            F.linear = self.linear
        return None

    def leave(self, module, inputs, output):
        self.remove()
        return None

    def remove(self) -> None:
        if self.saved is not None:
            F.linear = self.saved
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


#: module type -> rule; BatchNorm1d/3d share BatchNorm2d's rule
RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: LinearRule(),
    nn.Conv2d: Conv2dRule(),
    nn.LayerNorm: LayerNormRule(),
    nn.Embedding: EmbeddingRule(),
    nn.MultiheadAttention: MultiheadAttentionRule(),
    **{cls: BatchNormRule() for cls in _BATCHNORMS},
}


_BUILTIN = dict(RULES)


def _encoder_batch_first(m: nn.Module) -> bool | None:
    return m.layers[0].self_attn.batch_first if len(m.layers) else None


#: torch modules whose own ``forward`` fixes the layout of every descendant's
#: input: type -> ``batch_first`` of that layout (None: not known). A Linear or
#: LayerNorm whose nearest such ancestor is sequence-first gets
#: :meth:`Rule.sequence_first_uses`; the graph guard, the sample check and the
#: run-time check then prove or reject the crediting as for any other use.
LAYOUT_OWNERS: dict[type[nn.Module], Callable[[nn.Module], bool | None]] = {
    nn.TransformerEncoderLayer: lambda m: m.self_attn.batch_first,
    nn.TransformerDecoderLayer: lambda m: m.self_attn.batch_first,
    nn.TransformerEncoder: _encoder_batch_first,
    nn.TransformerDecoder: _encoder_batch_first,
    nn.Transformer: lambda m: m.batch_first,
}


def sequence_first_modules(model: nn.Module) -> set[int]:
    """ids of the modules whose nearest :data:`LAYOUT_OWNERS` ancestor (with its
    own ``forward``, not a subclass's) is sequence-first."""
    out: set[int] = set()

    def walk(m: nn.Module, seq_first: bool) -> None:
        owner = LAYOUT_OWNERS.get(type(m))
        if owner is not None and "forward" not in vars(m):
            batch_first = owner(m)
            seq_first = batch_first is False
        for child in m.children():
            if seq_first:
                out.add(id(child))
            walk(child, seq_first)

    walk(model, False)
    return out


def register_rule(
    module_type: type[nn.Module], rule: Rule, *, overwrite: bool = False
) -> None:
    """Serve ``module_type`` (its exact ``forward``) with the fast ``rule``.

    A registered rule is held to the same proofs as the built-in ones: every
    edge of the parameter must lie in a recorded use (graph guard), every row
    must reach only the sample it is credited to (sample check), and the first
    live use is compared with plain autograd (run-time check); a wrong rule
    therefore demotes its tensors to the generic path, it never changes H.

    Raises
    ------
    TypeError
        ``module_type`` is not an ``nn.Module`` subclass or ``rule`` not a
        :class:`Rule` instance.
    ValueError
        ``module_type`` already has a rule and ``overwrite`` is False.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"module_type must be an nn.Module subclass; got {module_type!r}."
        )
    if not isinstance(rule, Rule):
        raise TypeError(
            "rule must be an instance of laplace_subnet_ext.jacobians.Rule (with "
            f"uses() implemented); got {type(rule).__name__}."
        )
    if module_type in RULES and not overwrite:
        raise ValueError(
            f"{module_type.__name__} already has the rule "
            f"{type(RULES[module_type]).__name__}; pass overwrite=True to replace it. "
            f"Covered: {', '.join(covered_modules())}."
        )
    RULES[module_type] = rule


def unregister_rule(module_type: type[nn.Module]) -> None:
    """Remove a registered rule; a built-in rule that was overwritten comes back."""
    if module_type not in RULES:
        raise ValueError(
            f"{getattr(module_type, '__name__', module_type)} has no rule; covered: "
            f"{', '.join(covered_modules())}."
        )
    if module_type in _BUILTIN:
        RULES[module_type] = _BUILTIN[module_type]
    else:
        del RULES[module_type]


def covered_modules() -> list[str]:
    """Names of the module types with a fast rule (the one list README checks)."""
    return sorted(
        f"nn.{cls.__name__}"
        if cls.__module__.startswith("torch.nn.")
        else f"{cls.__module__}.{cls.__name__}"
        for cls in RULES
    )


def rule_for(module: nn.Module) -> Rule | None:
    """The rule serving ``module``, or None (subclass with its own ``forward``,
    uncovered configuration, or no rule)."""
    if "forward" in vars(module):  # forward replaced on the instance
        return None
    for cls in type(module).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            plain = type(module).forward is cls.forward
            return rule if plain and rule.applies(module) else None
    return None


def is_fast(module: nn.Module) -> bool:
    """Whether ``module`` has a fast rule (its parameters may take the fast path)."""
    return rule_for(module) is not None
