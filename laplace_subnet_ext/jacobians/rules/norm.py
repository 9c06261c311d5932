r"""Fast rules of eval-mode ``nn.BatchNorm1d/2d/3d`` and ``nn.LayerNorm``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laplace_subnet_ext.jacobians.rules.base import (
    Rule,
    Use,
    bias_use,
    channels,
    feature_rows,
    leading,
)
from laplace_subnet_ext.jacobians.rules.registry import register_rule


@register_rule(nn.BatchNorm1d, builtin=True)
@register_rule(nn.BatchNorm2d, builtin=True)
@register_rule(nn.BatchNorm3d, builtin=True)
class BatchNormRule(Rule):
    def applies(self, module):
        return (not module.training) and module.running_mean is not None

    def uses(self, m, inputs, output):
        a = inputs[0]
        shape = [1, -1] + [1] * (a.ndim - 2)
        xhat = channels(
            (a.detach() - m.running_mean.reshape(shape))
            / torch.sqrt(m.running_var.reshape(shape) + m.eps)
        )
        return _affine_uses(m, a, output, a.shape[0], xhat, channels, by_channel=True)


@register_rule(nn.LayerNorm, builtin=True)
class LayerNormRule(Rule):
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
        rows = feature_rows(n, k, sequence_first)  # -> (n, t, prod(normalized))
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
    sample_rows = sample_rows or leading(n)

    def pick(u, local):
        return u[:, local, :] if by_channel else u[:, :, local].transpose(1, 2)

    out = []
    if m.weight is not None:
        out.append(
            Use(
                param=m.weight,
                z=output,
                inputs=(a,),
                n=n,
                factor=lambda local: pick(xhat, local),
                gradient=lambda dz, local: pick(rows(dz), local),
                sample_rows=sample_rows,
            )
        )
    if m.bias is not None:
        out.append(
            bias_use(
                m.bias,
                output,
                (a,),
                n,
                lambda dz, local: pick(rows(dz), local),
                sample_rows,
            )
        )
    return out
