r"""Record the uses of tracked parameters during one forward pass.

Forward hooks on every module that has a rule (:mod:`.rules`) and holds a
tracked parameter call the rule, which returns :class:`~.rules.Use` records.
``nn.MultiheadAttention`` applies its projections inside
``F.multi_head_attention_forward``; while such a module runs, the name
``torch.nn.functional.linear`` is bound to a recorder that notes every call whose
weight or bias is a tracked parameter (and is restored when the module returns,
or when the capture exits on an error).

Each hook returns a copy of the module output, so that later in-place
operations (``ReLU(inplace=True)``, ``x += ...``) cannot change the recorded
tensor. The hooks are *prepended*, so they see the module's own output before
any forward hook of the user's can change it; global forward hooks
(``nn.modules.module.register_module_forward_hook``) run before every module
hook, so while one is registered nothing takes the fast path
(:attr:`FastCapture.foreign_hooks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laplace_subnet_ext.jacobians.rules import MultiheadAttentionRule, Use, rule_for

__all__ = ["FastCapture", "holders"]


def holders(model: nn.Module, params: list[torch.Tensor]) -> list[nn.Module]:
    """Modules with a rule whose rule covers one of ``params`` (tied weights: all)."""
    wanted = {id(p) for p in params}
    out = []
    for m in model.modules():
        rule = rule_for(m)
        if rule is not None and any(id(p) in wanted for p in rule.params(m)):
            out.append(m)
    return out


def _global_forward_hooks() -> bool:
    """Whether global module forward hooks are registered (torch keeps them in a
    private dict; read defensively)."""
    from torch.nn.modules import module as _module

    return bool(getattr(_module, "_global_forward_hooks", None))


class FastCapture:
    """Context manager: ``uses[id(param)]`` lists the recorded uses of each param.

    Parameters
    ----------
    model : torch.nn.Module
    params : list of torch.Tensor
        The tracked parameters.
    """

    def __init__(self, model: nn.Module, params: list[torch.Tensor]) -> None:
        self.params = {id(p): p for p in params}
        self.modules = holders(model, params)
        self.uses: dict[int, list[Use]] = {k: [] for k in self.params}
        self._handles: list = []
        self._saved_linear = None
        self._attention_batch: int | None = None
        #: why no use can be trusted in this pass (global forward hooks), or ""
        self.foreign_hooks = (
            "a global forward hook is registered (it runs before the capture "
            "hooks and may change module outputs)"
            if _global_forward_hooks()
            else ""
        )

    def __enter__(self) -> FastCapture:
        for m in self.modules:
            if isinstance(m, nn.MultiheadAttention):
                self._handles.append(
                    m.register_forward_pre_hook(
                        self._enter_attention, with_kwargs=True, prepend=True
                    )
                )
                self._handles.append(
                    m.register_forward_hook(self._leave_attention, prepend=True)
                )
            else:
                self._handles.append(m.register_forward_hook(self._hook, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._restore_linear()

    # ------------------------------------------------------------------ modules
    def _add(self, uses: list[Use]) -> None:
        for u in uses:
            if id(u.param) in self.uses:
                self.uses[id(u.param)].append(u)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if not inputs or not isinstance(output, torch.Tensor):
            return None
        self._add(rule_for(module).uses(module, inputs, output))
        return output.clone()

    # ---------------------------------------------------------------- attention
    def _enter_attention(self, module, args, kwargs):
        query = args[0] if args else kwargs.get("query")
        self._attention_batch = MultiheadAttentionRule.batch_size(module, query)
        if self._saved_linear is None:
            self._saved_linear = F.linear
            F.linear = self._recording_linear
        return None

    def _leave_attention(self, module, inputs, output):
        self._restore_linear()
        self._attention_batch = None
        return None

    def _restore_linear(self) -> None:
        if self._saved_linear is not None:
            F.linear = self._saved_linear
            self._saved_linear = None

    def _recording_linear(self, input, weight, bias=None):
        out = self._saved_linear(input, weight, bias)
        n = self._attention_batch
        w = weight if id(weight) in self.params else None
        b = bias if bias is not None and id(bias) in self.params else None
        if n is None or (w is None and b is None):
            return out
        self._add(MultiheadAttentionRule.linear_call_uses(w, b, input, out, n))
        return out.clone()
