r"""Record the uses of tracked parameters during one forward pass.

Every module that has a rule (:mod:`.rules`) and holds a tracked parameter gets
the hooks its rule installs (``Rule.attach``): by default a forward hook that
calls the rule, which returns :class:`~.rules.Use` records.
``nn.MultiheadAttention`` applies its projections inside
``F.multi_head_attention_forward``; its rule binds the name
``torch.nn.functional.linear`` to a recorder while the module runs (restored when
the module returns, or when the capture exits on an error).

Inside a sequence-first layer (``nn.TransformerEncoderLayer(batch_first=False)``
and the other :data:`~.rules.LAYOUT_OWNERS`), a module's input is ``(t, n, ...)``
by that layer's own ``forward``; its rule's ``sequence_first_uses`` reads the
batch from dimension 1.

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
from torch import nn

from laplace_subnet_ext._compat import global_forward_hooks
from laplace_subnet_ext.jacobians.direct import DirectUses
from laplace_subnet_ext.jacobians.rules import Use, rule_for, sequence_first_modules

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


class _ModeHandle:
    """``remove()`` leaves a ``TorchFunctionMode`` (with the hook handles)."""

    def __init__(self, mode) -> None:
        self.mode = mode

    def remove(self) -> None:
        self.mode.__exit__(None, None, None)


class FastCapture:
    """Context manager: ``uses[id(param)]`` lists the recorded uses of each param.

    Parameters
    ----------
    model : torch.nn.Module
    params : list of torch.Tensor
        The tracked parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        direct: list[torch.Tensor] = (),
    ) -> None:
        self.params = {id(p): p for p in params}
        #: the parameters no module rule covers: their direct uses
        #: (:mod:`.direct`) are recorded while the capture is active
        self.direct = (
            DirectUses({id(p): p for p in direct}, self.record) if direct else None
        )
        self.modules = holders(model, params)
        #: ids of the modules inside a sequence-first layer (inputs ``(t, n, ...)``)
        self.sequence_first = sequence_first_modules(model)
        self.uses: dict[int, list[Use]] = {k: [] for k in self.params}
        self._handles: list = []
        #: why no use can be trusted in this pass (global forward hooks), or ""
        self.foreign_hooks = (
            "a global forward hook is registered (it runs before the capture "
            "hooks and may change module outputs)"
            if global_forward_hooks()
            else ""
        )

    def __enter__(self) -> FastCapture:
        try:
            for m in self.modules:
                self._handles += rule_for(m).attach(m, self)
            if self.direct is not None:
                self.direct.__enter__()
                self._handles.append(_ModeHandle(self.direct))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------- used by the rules
    def tracks(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is one of the tracked parameters."""
        return id(tensor) in self.params

    def record(self, uses: list[Use]) -> None:
        """Keep the uses of tracked parameters."""
        for u in uses:
            if id(u.param) in self.uses:
                self.uses[id(u.param)].append(u)

    def module_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        """The default forward hook (``Rule.attach``): record the rule's uses and
        return a copy of the output (later in-place ops cannot change it)."""
        if not inputs or not isinstance(output, torch.Tensor):
            return None
        rule = rule_for(module)
        if id(module) in self.sequence_first:
            self.record(rule.sequence_first_uses(module, inputs, output))
        else:
            self.record(rule.uses(module, inputs, output))
        return output.clone()
