"""A user's fast Jacobian rule via register_rule: exact, refused when it
duplicates, and held to the same proofs as the built-in rules (a wrong rule is
demoted, H stays exact)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplace_subnet_ext import DenseSubnetLaplace, register_rule
from laplace_subnet_ext.jacobians import Rule, Use, covered_modules, unregister_rule
from tests.cases import assert_close, loader


class Scale(nn.Module):
    """``x * w`` over the last dimension, written as an einsum: no built-in rule,
    and not one of the direct uses the engine records (a plain ``x * w`` is)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return torch.einsum("...i,i->...i", x, self.w)


class ScaleRule(Rule):
    def __init__(self, wrong: float = 1.0) -> None:
        self.wrong = wrong

    def uses(self, m, inputs, output):
        a = inputs[0]
        n = a.shape[0]
        A = a.detach().reshape(n, -1, a.shape[-1]) * self.wrong  # (n, t, i)

        def rows(u):
            return u.reshape(n, -1, u.shape[-1])

        return [
            Use(
                param=m.w,
                z=output,
                inputs=(a,),
                n=n,
                factor=lambda local: A[:, :, local].transpose(1, 2),
                gradient=lambda dz, local: rows(dz)[:, :, local].transpose(1, 2),
                sample_rows=lambda u: u.reshape(n, -1),
            )
        ]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), Scale(5), nn.Tanh(), nn.Linear(5, 2)).double()


def _fit(method="auto"):
    model = _model()
    dl = loader("classification", n=12, bs=5)
    dl.dataset.tensors = (dl.dataset.tensors[0].double(), dl.dataset.tensors[1])
    D = sum(p.numel() for p in model.parameters())  # 37: S = all weights
    la = DenseSubnetLaplace(
        model, "classification", torch.arange(D), jacobian_method=method
    )
    la.fit(dl)
    return la


@pytest.fixture
def scale_rule():
    yield
    from laplace_subnet_ext.jacobians import RULES

    if Scale in RULES:
        unregister_rule(Scale)


def test_registered_rule_is_fast_and_exact(scale_rule):
    def generic(la):
        return [s.name for s in la.jacobians.split()[1]]

    before = _fit()
    assert generic(before) == ["1.w"]
    # generic_reasons names every generic tensor, covered by a rule or not
    assert list(before.generic_reasons) == ["1.w"]
    assert (
        "no fast rule covers it (held by Scale as 'w', and none of its uses"
        in before.generic_reasons["1.w"]
    )
    assert _fit("functional").generic_reasons == dict.fromkeys(
        [f"{i}.{w}" for i in (0, 3) for w in ("weight", "bias")][:2]
        + ["1.w"]
        + [f"3.{w}" for w in ("weight", "bias")],
        "jacobian_method='functional'",
    )
    register_rule(Scale, ScaleRule())
    assert f"{__name__}.Scale" in covered_modules()
    la = _fit()
    assert generic(la) == [] and la.generic_reasons == {}
    assert_close(la.H, _fit("functional").H, 1e-10, "H with the user's rule")


def test_wrong_rule_is_demoted_and_h_stays_exact(scale_rule):
    register_rule(Scale, ScaleRule(wrong=2.0))
    with pytest.warns(RuntimeWarning, match="1.w"):
        la = _fit()
    assert "1.w" in la.generic_reasons
    assert_close(la.H, _fit("functional").H, 1e-10, "H with a wrong rule")


def test_register_rule_refuses_duplicates_and_bad_input(scale_rule):
    register_rule(Scale, ScaleRule())
    with pytest.raises(ValueError, match="overwrite=True"):
        register_rule(Scale, ScaleRule())
    register_rule(Scale, ScaleRule(), overwrite=True)
    with pytest.raises(ValueError, match="overwrite=True"):
        register_rule(nn.Linear, ScaleRule())
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_rule(int, ScaleRule())
    with pytest.raises(TypeError, match="Rule"):
        register_rule(Scale, object())
    unregister_rule(Scale)
    with pytest.raises(ValueError, match="has no rule"):
        unregister_rule(Scale)


def test_overwritten_builtin_comes_back():
    from laplace_subnet_ext.jacobians import RULES

    builtin = RULES[nn.Linear]
    register_rule(nn.Linear, ScaleRule(), overwrite=True)
    unregister_rule(nn.Linear)
    assert RULES[nn.Linear] is builtin


class PairScale(Scale):
    """``(x * w, x.sum())``: a tuple output, which the default hook skips."""

    def forward(self, x):
        return torch.einsum("...i,i->...i", x, self.w), x.sum(-1)


class PairScaleRule(ScaleRule):
    """Owns its capture hook (``Rule.attach``): records on the tuple's first part."""

    def attach(self, module, capture):
        def hook(m, inputs, output):
            capture.record(self.uses(m, inputs, output[0]))
            return (output[0].clone(), output[1])

        return [module.register_forward_hook(hook, prepend=True)]


class PairHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.pair, self.out = nn.Linear(3, 5), PairScale(5), nn.Linear(5, 2)

    def forward(self, x):
        z, s = self.pair(self.inp(x))
        return self.out(torch.tanh(z)) + s[:, None]


def test_rule_with_its_own_capture_hook_is_fast_and_exact():
    from laplace_subnet_ext.jacobians import RULES

    def fit(method="auto"):
        torch.manual_seed(0)
        model = PairHead().double()
        dl = loader("classification", n=12, bs=5)
        dl.dataset.tensors = (dl.dataset.tensors[0].double(), dl.dataset.tensors[1])
        D = sum(p.numel() for p in model.parameters())
        la = DenseSubnetLaplace(
            model, "classification", torch.arange(D), jacobian_method=method
        )
        la.fit(dl)
        return la

    assert [s.name for s in fit().jacobians.split()[1]] == ["pair.w"]  # no rule
    register_rule(PairScale, PairScaleRule())
    try:
        la = fit()
        assert la.jacobians.split()[1] == [] and la.generic_reasons == {}
        assert_close(la.H, fit("functional").H, 1e-10, "H with an attach() rule")
    finally:
        if PairScale in RULES:
            unregister_rule(PairScale)


def test_register_rule_as_a_decorator_is_the_same_registration(scale_rule):
    """``@register_rule(Module)`` registers an instance of the class, exactly as
    the call does; the built-in rules went through the same function."""
    from laplace_subnet_ext.jacobians import RULES
    from laplace_subnet_ext.jacobians.rules import LinearRule
    from laplace_subnet_ext.jacobians.rules.registry import _BUILTIN

    @register_rule(Scale)
    class DecoratedScaleRule(ScaleRule):
        pass

    assert isinstance(RULES[Scale], DecoratedScaleRule)
    la = _fit()
    assert la.generic_reasons == {}
    assert_close(la.H, _fit("functional").H, 1e-10, "H with the decorated rule")
    assert (
        isinstance(RULES[nn.Linear], LinearRule)
        and RULES[nn.Linear] is _BUILTIN[nn.Linear]
    )
    with pytest.raises(TypeError, match="decorates a subclass"):
        register_rule(nn.Tanh)(object)


def test_use_is_built_by_keyword():
    with pytest.raises(TypeError):
        Use(torch.zeros(1), torch.zeros(1), (), 1, None, None, None)  # positional


def test_register_layout_owner_validates_and_refuses_duplicates():
    from laplace_subnet_ext.jacobians import register_layout_owner
    from laplace_subnet_ext.jacobians.rules import LAYOUT_OWNERS

    with pytest.raises(ValueError, match="already a layout owner"):
        register_layout_owner(nn.TransformerEncoderLayer, lambda m: True)
    with pytest.raises(TypeError, match="must be callable"):
        register_layout_owner(Scale, True)
    register_layout_owner(Scale, lambda m: False)
    try:
        from laplace_subnet_ext.jacobians.rules import sequence_first_modules

        model = nn.Sequential(Scale(3))
        model[0].inner = nn.Linear(3, 3)
        assert id(model[0].inner) in sequence_first_modules(model)
    finally:
        del LAYOUT_OWNERS[Scale]
