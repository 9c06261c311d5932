"""No silent wrong answer: planted fast-path bug, graph guard, non-finite batches,
state mismatch, half precision."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.jacobians import RULES, SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.rules import LinearRule, Use
from tests.cases import assert_close
from tests.test_zoo import full_jacobian, reference
from tests.zoo import FunctionalParent, build


class OffByOnePercent(LinearRule):
    """A planted bug: the weight's Jacobian entries of every Linear 1 % too large."""

    def uses(self, module, inputs, output):
        out = []
        for u in super().uses(module, inputs, output):
            if u.param is module.weight:
                g = u.gradient
                u = Use(
                    param=u.param,
                    z=u.z,
                    inputs=u.inputs,
                    n=u.n,
                    factor=u.factor,
                    gradient=lambda dz, loc, g=g: 1.01 * g(dz, loc),
                    sample_rows=u.sample_rows,
                )
            out.append(u)
        return out


def _mlp_problem():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    X, y = torch.randn(16, 4), torch.randint(3, (16,))
    idx = torch.randperm(51)[:20]
    return model, X, y, idx


@pytest.fixture
def planted_bug(monkeypatch):
    monkeypatch.setitem(RULES, nn.Linear, OffByOnePercent())


def test_planted_wrong_rule_is_caught_named_and_repaired(planted_bug):
    model, X, y, idx = _mlp_problem()
    la = DenseSubnetLaplace(model, "classification", idx)
    with pytest.warns(
        RuntimeWarning, match=r"disagree with plain autograd for 0\.weight"
    ):
        la.fit(DataLoader(TensorDataset(X, y), batch_size=8))  # two batches
    J, f = full_jacobian(model, X)
    H_ref, _ = reference(J, f, idx)
    assert_close(la.H, H_ref, 1e-8, "H after the run-time check repaired the path")
    assert set(la.jacobians.generic_reasons) == {"0.weight", "2.weight"}


def test_without_the_check_the_planted_bug_is_wrong(planted_bug):
    """The check, not luck, is what repaired the test above."""
    model, X, y, idx = _mlp_problem()
    la = DenseSubnetLaplace(model, "classification", idx, verify_jacobians=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    J, f = full_jacobian(model, X)
    H_ref, _ = reference(J, f, idx)
    rel = ((la.H - H_ref).abs().max() / H_ref.abs().max()).item()
    assert rel > 1e-3


def test_check_runs_for_a_predictive_without_fit(planted_bug):
    model, X, _, idx = _mlp_problem()
    jac = SubnetJacobians(model, SubnetLayout(model, idx))
    with pytest.warns(RuntimeWarning, match="0.weight"):
        Js, _ = jac(X)
    J, _ = full_jacobian(model, X)
    assert_close(Js, J[:, :, idx], 1e-10, "repaired columns")


@pytest.mark.parametrize("verify", [True, False])
def test_planted_bug_in_the_diagonal_pass(planted_bug, verify):
    """``SubnetJacobians.diagonal`` never forms J; its run-time check compares a
    random combination of the per-sample gradients with plain autograd: with it
    the planted bug is named and repaired, without it the diagonal is wrong."""
    from laplace_subnet_ext.numerics.curvature import output_hessian_root

    model, X, _, idx = _mlp_problem()
    jac = SubnetJacobians(model, SubnetLayout(model, idx), verify=verify)
    root = lambda f: output_hessian_root(f, "classification")  # noqa: E731
    J, f = full_jacobian(model, X)
    p = torch.softmax(f, -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    Js = J[:, :, idx]
    ref = torch.einsum("bcs,bck,bks->s", Js, Lam, Js)
    if verify:
        with pytest.warns(RuntimeWarning, match=r"0\.weight"):
            got, _ = jac.diagonal(X, root)
        assert_close(got, ref, 1e-10, "repaired diagonal")
        assert set(jac.generic_reasons) == {"0.weight", "2.weight"}
    else:
        got, _ = jac.diagonal(X, root)
        assert ((got - ref).abs().max() / ref.abs().max()).item() > 1e-3


def test_graph_guard_routes_a_functionally_reused_weight_without_warning():
    model = FunctionalParent().eval()
    x = torch.randn(3, 5, 8)
    D = sum(p.numel() for p in model.parameters())
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Js, _ = jac(x)
    assert "lin.weight" in jac.generic_reasons
    assert (
        "2 use(s) in the autograd graph, 1 explained"
        in jac.generic_reasons["lin.weight"]
    )
    assert "head.weight" not in jac.generic_reasons
    J, _ = full_jacobian(model, x)
    assert_close(Js, J, 1e-10, "functional reuse")


def test_attention_projections_are_fast_and_exact_at_s_equals_d():
    from tests.zoo import ZOO

    case = next(c for c in ZOO if c.id == "encoder_layer_pre_norm")
    model, x = build(case)
    D = sum(p.numel() for p in model.parameters())
    idx = torch.randperm(D)
    jac = SubnetJacobians(model, SubnetLayout(model, idx))
    Js, _ = jac(x)
    assert jac.generic_reasons == {}
    J, _ = full_jacobian(model, x)
    assert_close(Js, J[:, :, idx], 1e-10, "encoder layer, S = D")


@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_non_finite_batch_raises_naming_it(where):
    model, X, y, idx = _mlp_problem()
    y = torch.randn(16, 3)
    if where == "inputs":
        X[11, 2] = float("nan")
    else:
        y[12, 0] = float("inf")
    la = DenseSubnetLaplace(model, "regression", idx)
    with pytest.raises(
        ValueError, match=r"batch 1 \(0-based\) gives a non-finite loss"
    ):
        la.fit(DataLoader(TensorDataset(X, y), batch_size=8))


def test_non_finite_curvature_raises():
    """Finite outputs, overflowing curvature: a huge hidden unit the head ignores."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[0].weight[0] = 1e200
        model[2].weight[:, 0] = 0.0
    idx = 30 + 6 * torch.arange(3)  # the head's weights from that unit
    X = torch.rand(16, 4) + 0.1
    la = DenseSubnetLaplace(model, "regression", idx)
    with pytest.raises(
        ValueError, match=r"batch 0 \(0-based\) .* non-finite curvature"
    ):
        la.fit(DataLoader(TensorDataset(X, torch.randn(16, 3)), batch_size=8))


def test_load_state_dict_warns_about_another_subnetwork():
    model, X, y, idx = _mlp_problem()
    la = DenseSubnetLaplace(model, "classification", idx)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    other = DenseSubnetLaplace(model, "classification", torch.arange(5, 25))
    only_state = len(set(idx.tolist()) - set(range(5, 25)))
    only_this = len(set(range(5, 25)) - set(idx.tolist()))
    msg = f"{only_state} indices only in the state, {only_this} only in this object"
    with pytest.warns(UserWarning, match=msg):
        other.load_state_dict(la.state_dict())
    assert torch.equal(other.subnetwork_indices, la.subnetwork_indices)
    same = DenseSubnetLaplace(model, "classification", idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(la.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_half_precision_model_float32_curvature(dtype, lik):
    """Jacobians in the model's dtype; curvature, prior tuning, predictive in float32;
    within the dtype's resolution of the float64 posterior of the same weights."""
    model, X, y, idx = _mlp_problem()
    if lik == "regression":
        y = torch.randn(16, 3)
    ref = DenseSubnetLaplace(model, lik, idx)
    ref.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    half = copy.deepcopy(model).to(dtype)
    y_half = y.to(dtype) if lik == "regression" else y
    la = DenseSubnetLaplace(half, lik, idx, curvature_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the run-time check passes
        la.fit(DataLoader(TensorDataset(X.to(dtype), y_half), batch_size=8))
    eps = torch.finfo(dtype).eps
    assert la.H.dtype == torch.float32
    assert_close(la.H, ref.H, eps, f"H of a {dtype} model")
    la.optimize_prior_precision(method="marglik")
    ref.optimize_prior_precision(method="marglik")
    assert_close(la.prior_precision, ref.prior_precision, 4 * eps, "tuned prior")
    pred, pred_ref = la(X[:4].to(dtype)), ref(X[:4])
    if lik == "regression":
        assert_close(pred[0], pred_ref[0], 4 * eps, "mean")
        assert_close(pred[1], pred_ref[1], 8 * eps, "variance")
    else:
        assert_close(pred, pred_ref, 4 * eps, "probabilities")


def test_half_precision_curvature_dtype_is_refused():
    model, _, _, idx = _mlp_problem()
    with pytest.raises(ValueError, match="curvature_dtype must be torch.float32 or"):
        DenseSubnetLaplace(model, "classification", idx, curvature_dtype=torch.float16)


def test_grid_search_never_selects_a_non_finite_score():
    """argmin over a tensor with NaN returns the NaN's index: a NaN validation loss
    at one prior must be skipped (with a warning), never selected."""
    model, X, y, idx = _mlp_problem()
    la = DenseSubnetLaplace(model, "classification", idx)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    calls = []

    def loss(p, t):  # NaN for the first grid value (the smallest prior)
        calls.append(1)
        nll = torch.nn.functional.nll_loss(p.log(), t)
        return nll * float("nan") if len(calls) == 1 else nll

    val = DataLoader(TensorDataset(X, y), batch_size=16)
    with pytest.warns(RuntimeWarning, match="not finite for prior precision"):
        la.optimize_prior_precision(
            method="gridsearch", val_loader=val, loss=loss, grid_size=5
        )
    assert float(la.prior_precision) != 1e-4
    with pytest.raises(FloatingPointError, match="not finite for any prior"):
        la.optimize_prior_precision(
            method="gridsearch",
            val_loader=val,
            loss=lambda p, t: torch.tensor(float("nan")),
            grid_size=3,
        )


def test_non_finite_predictive_raises_instead_of_returning_nan():
    model, X, y, idx = _mlp_problem()
    la = DenseSubnetLaplace(model, "classification", idx)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
    X_bad = X[:4].clone()
    X_bad[2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="GLM predictive is not finite"):
        la(X_bad, pred_type="glm", link_approx="probit")
