r"""Fast rule of ``nn.Linear``."""

from __future__ import annotations

from torch import nn

from laplace_subnet_ext.jacobians.rules.base import Rule, Use, feature_rows, linear_uses
from laplace_subnet_ext.jacobians.rules.registry import register_rule


@register_rule(nn.Linear, builtin=True)
class LinearRule(Rule):
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
        rows = feature_rows(n, 1, sequence_first)
        return linear_uses(module.weight, module.bias, a, output, n, rows)
