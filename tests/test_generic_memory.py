"""The generic (torch.func) path is bounded in memory: inputs are chunked, and
outputs too when one input alone would pass the bound; the Jacobians do not
change (float64, against the unchunked path and torch.func over all weights)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.jacobians import engine
from tests.cases import assert_close


class Tokens(nn.Module):
    """A learned position table used through a function of it in the model's
    own forward (no rule, and not a direct use the engine records)."""

    def __init__(self, t: int = 6, d: int = 8, c: int = 4) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(t, d))
        self.inp = nn.Linear(3, d)
        self.head = nn.Linear(d, c)

    def forward(self, x):  # x: (b, t, 3)
        h = torch.tanh(self.inp(x) + 2 * self.pos)
        return self.head(h.mean(1))


def _fit(block_bytes: int, method: str = "auto"):
    torch.manual_seed(0)
    model = Tokens()
    X, y = torch.randn(10, 6, 3), torch.randint(4, (10,))
    D = sum(p.numel() for p in model.parameters())
    la = DenseSubnetLaplace(
        model, "classification", torch.arange(D), jacobian_method=method,
        predictive_block_bytes=block_bytes,
    )  # fmt: skip
    la.fit(DataLoader(TensorDataset(X, y), batch_size=5))
    return la, X


def test_chunked_generic_path_equals_the_unchunked_one(monkeypatch):
    calls = []
    real = engine.functional_jacobians

    def record(model, sels, x, chunk_size=None):
        calls.append((len(x), chunk_size))
        return real(model, sels, x, chunk_size)

    monkeypatch.setattr(engine, "functional_jacobians", record)
    wide, X = _fit(2**30)
    assert "pos" in wide.generic_reasons
    assert calls and all(m == 5 and k is None for m, k in calls)  # whole batches
    # the activations are measured once per input shape, not per batch
    measured = []
    real_bytes = engine._activation_bytes
    monkeypatch.setattr(
        engine,
        "_activation_bytes",
        lambda m, x: measured.append(len(x)) or real_bytes(m, x),
    )
    calls.clear()
    tight, _ = _fit(2_000)
    assert (
        measured == [2]
    )  # two batches of one shape: one measurement  # below one input's activations: outputs chunked too
    assert calls and all(m == 1 and k is not None and k >= 1 for m, k in calls)
    assert_close(tight.H, wide.H, 1e-12, "H, chunked vs whole")
    reference, _ = _fit(2**30, method="functional")  # torch.func over every tensor
    assert_close(wide.H, reference.H, 1e-10, "H vs torch.func")
    f_var = tight.functional_variance(tight.jacobians(X[:3])[0])
    assert_close(f_var, wide.functional_variance(wide.jacobians(X[:3])[0]), 1e-12)


def test_plan_stays_within_the_bound():
    la, X = _fit(2**30)
    jac = la.jacobians
    slow = jac.split()[1]
    A, c = engine._activation_bytes(la.model, X[:2])
    A //= 2
    assert A >= 6 * 8 * 8 and c == 4  # at least the (t, d) float64 tanh output
    touched = sum(s.param.numel() for s in slow) * 8
    for budget in (10**9, 40 * ((1 + c) * A + c * touched), 3 * A):
        jac.block_bytes = budget
        chunk, k = jac.generic_plan(slow, X)
        if k is None:
            assert chunk == 10 or chunk * ((1 + c) * A + c * touched) <= budget
        else:  # one input per call, k cotangents per vectorised backward
            assert chunk == 1
            assert k == 1 or (1 + k) * A + c * touched <= budget


def test_generic_chunk_size_overrides_the_plan():
    la, X = _fit(2**30)
    la.jacobians.generic_chunk_size = 3
    assert la.jacobians.generic_plan(la.jacobians.split()[1], X) == (3, None)
