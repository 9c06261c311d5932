"""laplace's reward-modeling workflow and laplace's saved states, against laplace's
own ``FullSubnetLaplace`` in float64; and no bare ``assert`` on a user's path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from laplace import FullSubnetLaplace, Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext
from laplace_subnet_ext import DenseSubnetLaplace
from tests.cases import assert_close, loader, mlp


class RewardModel(nn.Module):
    """laplace's reward-modeling example: pairs (B, 2, d) give two-class logits
    (B, 2) at fit; single items (B, d) give one reward (B, 1) at prediction."""

    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 10), nn.Tanh(), nn.Linear(10, 1))

    def forward(self, x):
        if x.dim() == 3:
            b, _, d = x.shape
            return self.net(x.reshape(-1, d)).reshape(b, 2)
        return self.net(x)


def _reward_setup():
    torch.manual_seed(0)
    model = RewardModel().double()
    X = torch.randn(24, 2, 3, dtype=torch.float64)
    y = torch.randint(2, (24,))
    dl = DataLoader(TensorDataset(X, y), batch_size=8)
    idx = torch.tensor([0, 3, 7, 12, 20, 25, 33, 40, 45, 50])
    return model, dl, idx


def test_reward_modeling_matches_laplace():
    model, dl, idx = _reward_setup()
    ours = Laplace(
        model, "reward_modeling", "subnetwork", "full", subnetwork_indices=idx
    )
    ref = FullSubnetLaplace(model, "reward_modeling", subnetwork_indices=idx)
    assert isinstance(ours, DenseSubnetLaplace)
    ours.fit(dl)
    ref.fit(dl)
    assert_close(ours.H, ref.H, what="H (classification curvature)")
    assert_close(ours.loss, ref.loss, what="loss")
    for prior in (0.3, 2.0):
        ours.prior_precision = prior
        ref.prior_precision = prior
        assert_close(
            ours.log_marginal_likelihood(),
            ref.log_marginal_likelihood(),
            what="marglik",
        )
    xs = torch.randn(5, 3, dtype=torch.float64)
    (m1, v1), (m2, v2) = ours(xs), ref(xs)  # regression predictive: (5, 1), (5, 1, 1)
    assert m1.shape == (5, 1) and v1.shape == (5, 1, 1)
    assert_close(m1, m2, what="predictive mean")
    assert_close(v1, v2, what="predictive variance")
    p1, p2 = (
        ours(dl.dataset.tensors[0][:4], fitting=True),
        ref(dl.dataset.tensors[0][:4], fitting=True),
    )
    assert_close(p1, p2, what="pair probabilities (fitting=True)")


def _fitted_pair(prior=0.7):
    torch.manual_seed(1)
    model = mlp().double()
    dl = loader("classification", n=20)
    dl = DataLoader(
        TensorDataset(dl.dataset.tensors[0].double(), dl.dataset.tensors[1]),
        batch_size=7,
    )
    idx = torch.arange(5, 40, 3)
    ref = FullSubnetLaplace(model, "classification", subnetwork_indices=idx)
    ref.fit(dl)
    ref.prior_precision = prior
    return model, dl, idx, ref


def test_laplace_state_loads_into_ours_and_predicts_identically():
    model, dl, idx, ref = _fitted_pair()
    ours = Laplace(
        model, "classification", "subnetwork", "full", subnetwork_indices=idx
    )
    ours.load_state_dict(ref.state_dict())
    xs = torch.randn(6, 3, dtype=torch.float64)
    assert_close(ours(xs), ref(xs), what="probit predictive")
    assert_close(ours.posterior_covariance, ref.posterior_covariance, what="Sigma")
    assert_close(
        ours.log_marginal_likelihood(), ref.log_marginal_likelihood(), what="marglik"
    )


def test_laplace_state_needs_the_subnetwork():
    model, _, idx, ref = _fitted_pair()
    other = DenseSubnetLaplace(model, "classification", idx[:-1])
    with pytest.raises(ValueError, match="subnetwork_indices the state was fitted"):
        other.load_state_dict(ref.state_dict())


def test_our_state_loads_into_laplace_and_predicts_identically():
    model, dl, idx, _ = _fitted_pair()
    ours = DenseSubnetLaplace(model, "classification", idx)
    ours.fit(dl)
    ours.prior_precision = 0.4
    ref = FullSubnetLaplace(model, "classification", subnetwork_indices=idx)
    ref.load_state_dict(ours.laplace_state_dict())
    xs = torch.randn(6, 3, dtype=torch.float64)
    assert_close(ref(xs), ours(xs), what="probit predictive")
    assert_close(
        ref.log_marginal_likelihood(), ours.log_marginal_likelihood(), what="marglik"
    )


def test_laplace_state_dict_refuses_non_scalar_prior():
    model, dl, idx, _ = _fitted_pair()
    ours = DenseSubnetLaplace(
        model, "classification", idx, prior_precision=torch.ones(len(idx))
    )
    ours.fit(dl)
    with pytest.raises(ValueError, match="scalar prior precision"):
        ours.laplace_state_dict()


def _bare_asserts(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_no_bare_assert_in_the_package(tmp_path):
    root = Path(laplace_subnet_ext.__file__).parent
    assert _bare_asserts(root) == []
    # the scan itself can fail: a planted assert is found
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f(x):\n    assert x > 0\n")
    assert _bare_asserts(tmp_path / "pkg") == ["pkg/m.py:2"]
