r"""The rule registry: module type -> :class:`~.base.Rule`, and the layout owners.

Built-in rules register themselves through :func:`register_rule`, the same
call a user makes (``tests/test_register_rule.py``): a user rule and a built-in
one are indistinguishable to the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from laplace_subnet_ext.jacobians.rules.base import Rule

__all__ = [
    "RULES",
    "LAYOUT_OWNERS",
    "register_rule",
    "unregister_rule",
    "register_layout_owner",
    "covered_modules",
    "rule_for",
    "is_fast",
    "sequence_first_modules",
]

#: module type -> rule (filled by :func:`register_rule`)
RULES: dict[type[nn.Module], Rule] = {}
#: the built-in rules, as registered at import (what :func:`unregister_rule`
#: restores after an overwrite)
_BUILTIN: dict[type[nn.Module], Rule] = {}


def _encoder_batch_first(m: nn.Module) -> bool | None:
    return m.layers[0].self_attn.batch_first if len(m.layers) else None


#: torch modules whose own ``forward`` fixes the layout of every descendant's
#: input: type -> ``batch_first`` of that layout (None: not known). A Linear or
#: LayerNorm whose nearest such ancestor is sequence-first gets
#: :meth:`Rule.sequence_first_uses`; the graph guard, the sample check and the
#: run-time check then prove or reject the crediting as for any other use.
#: Filled by :func:`register_layout_owner`.
LAYOUT_OWNERS: dict[type[nn.Module], Callable[[nn.Module], bool | None]] = {}


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
    module_type: type[nn.Module],
    rule: Rule | type[Rule] | None = None,
    *,
    overwrite: bool = False,
    builtin: bool = False,
):
    """Serve ``module_type`` (its exact ``forward``) with the fast ``rule``.

    A call (``register_rule(MyModule, MyRule())``) or a class decorator
    (``@register_rule(MyModule)`` above ``class MyRule(Rule)``, which registers
    an instance and returns the class). The built-in rules are registered the
    same way (``builtin=True`` only records them for :func:`unregister_rule`).

    A registered rule is held to the same proofs as the built-in ones: every
    edge of the parameter must lie in a recorded use (graph guard), every row
    must reach only the sample it is credited to (sample check), and the first
    live use is compared with plain autograd (run-time check); a wrong rule
    therefore demotes its tensors to the generic path, it never changes H.

    Raises
    ------
    TypeError
        ``module_type`` is not an ``nn.Module`` subclass or ``rule`` not a
        :class:`Rule` (instance, or class under the decorator).
    ValueError
        ``module_type`` already has a rule and ``overwrite`` is False.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"module_type must be an nn.Module subclass; got {module_type!r}."
        )
    if rule is None:  # decorator

        def decorate(cls: type[Rule]) -> type[Rule]:
            if not (isinstance(cls, type) and issubclass(cls, Rule)):
                raise TypeError(
                    "@register_rule(...) decorates a subclass of "
                    f"laplace_subnet_ext.jacobians.Rule; got {cls!r}."
                )
            register_rule(module_type, cls(), overwrite=overwrite, builtin=builtin)
            return cls

        return decorate
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
    if builtin:
        _BUILTIN[module_type] = rule
    return None


def register_layout_owner(
    module_type: type[nn.Module],
    batch_first: Callable[[nn.Module], bool | None],
    *,
    overwrite: bool = False,
) -> None:
    """Declare that ``module_type``'s own ``forward`` fixes the layout of every
    descendant's input; ``batch_first(module)`` says which (None: not known).

    Descendants of a sequence-first owner get :meth:`Rule.sequence_first_uses`
    (see :data:`LAYOUT_OWNERS`); the checks then prove or reject the crediting.

    Raises
    ------
    TypeError
        ``module_type`` is not an ``nn.Module`` subclass or ``batch_first`` not
        callable.
    ValueError
        ``module_type`` is already an owner and ``overwrite`` is False.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"module_type must be an nn.Module subclass; got {module_type!r}."
        )
    if not callable(batch_first):
        raise TypeError(
            f"batch_first must be callable (module -> bool or None); got "
            f"{type(batch_first).__name__}."
        )
    if module_type in LAYOUT_OWNERS and not overwrite:
        raise ValueError(
            f"{module_type.__name__} is already a layout owner; pass overwrite=True."
        )
    LAYOUT_OWNERS[module_type] = batch_first


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


for _owner, _batch_first in (
    (nn.TransformerEncoderLayer, lambda m: m.self_attn.batch_first),
    (nn.TransformerDecoderLayer, lambda m: m.self_attn.batch_first),
    (nn.TransformerEncoder, _encoder_batch_first),
    (nn.TransformerDecoder, _encoder_batch_first),
    (nn.Transformer, lambda m: m.batch_first),
):
    register_layout_owner(_owner, _batch_first)
