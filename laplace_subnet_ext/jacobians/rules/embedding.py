r"""Fast rule of ``nn.Embedding``."""

from __future__ import annotations

from torch import nn

from laplace_subnet_ext.jacobians.rules.base import Rule, Use, leading
from laplace_subnet_ext.jacobians.rules.registry import register_rule


@register_rule(nn.Embedding, builtin=True)
class EmbeddingRule(Rule):
    """Rows looked up by the tokens.

    ``max_norm``: ``F.embedding`` renormalises the looked-up rows in place, under
    ``no_grad``, before the lookup; autograd (and this rule) differentiate the
    lookup at the renormalised values. ``scale_grad_by_freq`` rescales the
    *training gradient* by token counts in the mini-batch; it is not a
    derivative of the function, and this rule ignores it (the generic path and
    the run-time check switch it off while they differentiate).
    """

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
                param=m.weight,
                z=output,
                inputs=(),
                n=n,
                factor=factor,
                gradient=lambda dz, local: dz.reshape(n, -1, E)[
                    :, :, local % E
                ].transpose(1, 2),
                sample_rows=leading(n),
            )
        ]
