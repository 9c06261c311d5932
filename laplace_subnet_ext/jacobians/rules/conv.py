r"""Fast rule of ``nn.Conv2d`` (``groups=1``, zero padding)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from laplace_subnet_ext.jacobians.rules.base import (
    Outer,
    Rule,
    Use,
    bias_use,
    channels,
    leading,
)
from laplace_subnet_ext.jacobians.rules.registry import register_rule


@register_rule(nn.Conv2d, builtin=True)
class Conv2dRule(Rule):
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
                param=m.weight,
                z=output,
                inputs=(a,),
                n=n,
                factor=lambda local: unf.index_select(1, local % per_out),
                gradient=lambda dz, local: channels(dz).index_select(
                    1, local // per_out
                ),
                sample_rows=leading(n),
                outer=Outer(
                    out_rows=channels,
                    in_cols=lambda cols: unf.index_select(1, cols).transpose(1, 2),
                    in_features=per_out,
                ),
            )
        ]
        if m.bias is not None:
            out.append(
                bias_use(
                    m.bias,
                    output,
                    (a,),
                    n,
                    lambda dz, local: channels(dz)[:, local, :],
                    leading(n),
                )
            )
        return out
