r"""Fast Jacobian rules: one rule per module type, looked up in :data:`RULES`.

A package in the style of BackPACK's module extensions: the rule-writing kit in
:mod:`.base` (:class:`Use` built by keyword, :class:`Outer`, :class:`Rule`, the
row helpers :func:`leading`, :func:`feature_rows`, :func:`channels`,
:func:`bias_use`, :func:`linear_uses`), the registry in :mod:`.registry`
(:func:`register_rule`, also a class decorator; :func:`register_layout_owner`),
and one module per family of built-in rules (:mod:`.linear`, :mod:`.conv`,
:mod:`.norm`, :mod:`.embedding`, :mod:`.attention`), each registered through the
same :func:`register_rule` a user calls.

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

from laplace_subnet_ext.jacobians.rules.base import (
    Outer,
    Rule,
    Use,
    bias_use,
    channels,
    feature_rows,
    leading,
    linear_uses,
)
from laplace_subnet_ext.jacobians.rules.registry import (
    LAYOUT_OWNERS,
    RULES,
    covered_modules,
    is_fast,
    register_layout_owner,
    register_rule,
    rule_for,
    sequence_first_modules,
    unregister_rule,
)

# the built-in rules register themselves on import (register_rule(..., builtin=True))
from laplace_subnet_ext.jacobians.rules import (  # noqa: E402, F401  isort: skip
    attention,
    conv,
    embedding,
    linear,
    norm,
)
from laplace_subnet_ext.jacobians.rules.attention import MultiheadAttentionRule  # noqa: E402
from laplace_subnet_ext.jacobians.rules.conv import Conv2dRule  # noqa: E402
from laplace_subnet_ext.jacobians.rules.embedding import EmbeddingRule  # noqa: E402
from laplace_subnet_ext.jacobians.rules.linear import LinearRule  # noqa: E402
from laplace_subnet_ext.jacobians.rules.norm import (  # noqa: E402
    BatchNormRule,
    LayerNormRule,
)

__all__ = [
    "Use",
    "Outer",
    "Rule",
    "RULES",
    "LAYOUT_OWNERS",
    "covered_modules",
    "register_rule",
    "unregister_rule",
    "register_layout_owner",
    "rule_for",
    "is_fast",
    "sequence_first_modules",
    "leading",
    "bias_use",
    "linear_uses",
    "feature_rows",
    "channels",
    "LinearRule",
    "Conv2dRule",
    "BatchNormRule",
    "LayerNormRule",
    "EmbeddingRule",
    "MultiheadAttentionRule",
]
