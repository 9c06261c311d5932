"""A custom module on the fast Jacobian path: ``register_rule``.

The fast path knows ``nn.Linear``, ``nn.Conv2d``, norms, embeddings and attention
projections; any other module's parameters go through ``torch.func`` (exact,
slower). A rule tells the engine, for each *use* of a parameter in the forward
pass, the input-side factor and the output gradient at each selected entry:
here ``y = x * w`` over the last dimension, so the derivative of output row r
with respect to ``w[i]`` is ``x[r, i]`` times the gradient at ``y[r, i]``. The
engine proves every rule from the autograd graph and checks it at run time
against plain autograd; a wrong rule is demoted with a warning, never trusted.

    python examples/tutorials/custom_rule.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from common import digits, loader, train_map  # registers the plugin
from torch import nn

from laplace_subnet_ext import DenseSubnetLaplace, register_rule
from laplace_subnet_ext.jacobians import Rule, Use, unregister_rule


class Scale(nn.Module):
    """Learned per-feature gain: ``y = x * w``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class ScaleRule(Rule):
    """``dy[r, i] / dw[i] = x[r, i]``: one use of ``w`` per forward call."""

    def uses(self, module, inputs, output):
        x = inputs[0]
        n = x.shape[0]  # samples lead; any other dims are positions t
        X = x.detach().reshape(n, -1, x.shape[-1])  # (n, t, i)

        def per_sample(u):  # a tensor laid out like y -> (n, t, i)
            return u.reshape(n, -1, u.shape[-1])

        return [
            Use(
                param=module.w,
                z=output,
                inputs=(x,),
                n=n,
                # (n, s, t): input factor of each selected entry
                factor=lambda local: X[:, :, local].transpose(1, 2),
                # (n, s, t): output gradient at each selected entry's unit
                gradient=lambda dz, local: per_sample(dz)[:, :, local].transpose(1, 2),
                # how the rule credits rows of y to samples (checked every pass)
                sample_rows=lambda dz: dz.reshape(n, -1),
            )
        ]


def fit(model, train, rule: bool) -> DenseSubnetLaplace:
    D = sum(p.numel() for p in model.parameters())
    la = DenseSubnetLaplace(model, "classification", torch.arange(D))  # S = D
    la.fit(loader(train))
    print(f"rule registered: {rule}; tensors off the fast path: {la.generic_reasons}")
    return la


def main(quick: bool = False) -> float:
    torch.manual_seed(0)
    train, _, _ = digits(seed=0)
    width = 8 if quick else 32
    model = nn.Sequential(
        nn.Linear(64, width), Scale(width), nn.Tanh(), nn.Linear(width, 10)
    )
    model = train_map(model, train, epochs=5 if quick else 20)

    generic = fit(model, train, rule=False)  # torch.func for Scale.w
    register_rule(Scale, ScaleRule())
    try:
        fast = fit(model, train, rule=True)
    finally:
        unregister_rule(Scale)
    err = float((fast.H - generic.H).abs().max() / generic.H.abs().max())
    print(f"H from the rule vs torch.func: relative difference {err:.1e}")
    return err


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (tests)")
    main(ap.parse_args().quick)
