"""prior_sweep: every grid value equals a posterior re-fitted at that prior; marks
equal the tuned prior precisions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_calibration_error

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.diagnostics import (
    glm_along_priors,
    plot_prior_sweep,
    prior_sweep,
)
from tests.cases import assert_close, mlp

GRID = [10.0**k for k in (-2.0, -1.25, -0.5, 0.25, 1.0, 1.75, 2.5, 3.25, 4.0)]


def _ece(p, y, n_bins=10):
    """Plain-loop reference: equal-width bins (lo, hi] of the top-class confidence."""
    total = 0.0
    conf, pred = p.max(-1)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(y)) if lo < conf[i] <= hi]
        if members:
            acc = sum(float(pred[i] == y[i]) for i in members) / len(members)
            avg = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / len(y) * abs(avg - acc)
    return total


def _problem(lik: str):
    torch.manual_seed(5)
    model = mlp(3, 3, 12).eval()
    X = torch.randn(60, 3)
    y = torch.randint(3, (60,)) if lik == "classification" else torch.randn(60, 3)
    Xv, yv = X[:20] * 1.1, y[:20]
    Xs = X[20:40] * 3.0  # "shifted": scaled inputs
    return model, (X, y), (Xv, yv), (Xs, y[20:40])


def _fitted(model, train, lik, prior=1.0):
    la = DenseSubnetLaplace(
        model,
        lik,
        torch.arange(5, 45),
        prior_precision=prior,
        prior_rescaling=True,
        sigma_noise=0.7 if lik == "regression" else 1.0,
    )
    la.fit(DataLoader(TensorDataset(*train), batch_size=16))
    return la


def _refit_metrics(model, train, lik, lam, data):
    """Independent: a new posterior with this prior, laplace's predictive, metrics
    from torchmetrics / closed forms."""
    la = _fitted(model, train, lik)
    la.prior_precision = lam
    X, y = data
    if lik == "regression":
        mean, var = la(X, pred_type="glm")
        var = var.diagonal(dim1=-2, dim2=-1) + 0.7**2
        nll = torch.distributions.Normal(mean, var.sqrt()).log_prob(y).sum(-1).mean()
        return {"nll": -float(nll), "rmse": float((mean - y).pow(2).mean().sqrt())}
    p = la(X, pred_type="glm", link_approx="probit")
    tm = float(multiclass_calibration_error(p, y, num_classes=3, n_bins=10))
    assert math.isclose(tm, _ece(p, y), rel_tol=1e-5)  # torchmetrics (float32)
    return {
        "nll": -float(p[torch.arange(len(y)), y].log().mean()),
        "acc": float((p.argmax(-1) == y).double().mean()),
        "ece": _ece(p, y),
        "brier": float((p - torch.eye(3)[y]).pow(2).sum(-1).mean()),
    }


@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_sweep_equals_refitting_at_every_prior(lik):
    model, train, val, shifted = _problem(lik)
    la = _fitted(model, train, lik)
    before = la.prior_precision.clone()
    sweep = prior_sweep(la, val, {"shifted": shifted}, prior_precisions=GRID)
    assert torch.equal(la.prior_precision, before)  # left as it was
    assert len(sweep.rows) == 2 * len(GRID)
    for row in sweep.rows:
        data = val if row["set"] == "val" else shifted
        ref = _refit_metrics(model, train, lik, row["prior_precision"], data)
        for k, v in ref.items():
            assert_close(row[k], v, 1e-8, f"{lik} {row['set']} {k} at {row}")
        D, S = la.n_params, la.n_params_subnet
        assert math.isclose(
            row["full_network_prior_precision"], row["prior_precision"] * D / S
        )


def test_marks_equal_the_tuned_prior_precisions():
    model, train, val, shifted = _problem("classification")
    sweep = prior_sweep(
        _fitted(model, train, "classification"), DataLoader(TensorDataset(*val), 7)
    )
    by_marglik = _fitted(model, train, "classification")
    by_marglik.optimize_prior_precision(method="marglik")
    assert_close(
        sweep.marks["marglik"], by_marglik.prior_precision[0], 1e-12, "marglik"
    )
    by_grid = _fitted(model, train, "classification")
    by_grid.optimize_prior_precision(
        method="gridsearch",
        val_loader=DataLoader(TensorDataset(*val), batch_size=7),
        log_prior_prec_min=-2,
        log_prior_prec_max=4,
        grid_size=25,
    )
    assert_close(sweep.marks["gridsearch"], by_grid.prior_precision[0], 1e-12, "grid")
    nll = sweep.column("nll", "val")
    assert min(nll) == sweep.at(sweep.marks["gridsearch"], "val")["nll"]


def test_sweep_refuses_non_scalar_priors_and_bad_grids():
    model, train, val, _ = _problem("classification")
    la = _fitted(model, train, "classification")
    with pytest.raises(ValueError, match="prior_precisions must be non-empty"):
        prior_sweep(la, val, prior_precisions=torch.tensor([1.0, -1.0]))
    la.prior_precision = torch.ones(len(la.jacobians.layout.selections))
    with pytest.raises(ValueError, match="needs a scalar prior precision"):
        prior_sweep(la, val)


def test_plot_draws_every_set_and_mark(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    model, train, val, shifted = _problem("classification")
    sweep = prior_sweep(
        _fitted(model, train, "classification"),
        val,
        {"shifted": shifted},
        prior_precisions=GRID,
    )
    axes = plot_prior_sweep(sweep)
    assert len(axes) == 3  # nll, ece, trade-off
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels[:2] == ["val", "shifted"] and any("marglik" in t for t in labels)
    axes[0].figure.savefig(tmp_path / "sweep.png")


@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_glm_along_priors_equals_the_predictive_at_each_prior(lik):
    """One Jacobian pass + eigendecomposition vs laplace's GLM predictive of the
    same posterior re-set to each prior (Cholesky route), float64."""
    model, train, _, (Xs, _) = _problem(lik)
    model = model.double()
    train = (train[0].double(), train[1].double() if lik == "regression" else train[1])
    la = _fitted(model, train, lik, prior=2.0)
    grid = [0.05, 1.0, 30.0]
    f, f_var = glm_along_priors(la, Xs.double(), grid, batch_size=7)
    assert f_var.shape == (3, len(Xs), 3, 3)
    for i, lam in enumerate(grid):
        ref = _fitted(model, train, lik, prior=1.0)
        ref.prior_precision = lam
        f_ref, var_ref = ref._glm_predictive_distribution(Xs.double())
        assert_close(f, f_ref, 1e-12, "mean")
        assert_close(f_var[i], var_ref, 1e-9, f"variance at {lam}")
    assert float(la.prior_precision) == pytest.approx(2.0 * 40 / la.n_params)
    with pytest.raises(ValueError, match="non-empty and positive"):
        glm_along_priors(la, Xs.double(), [1.0, 0.0])


def test_sweep_reads_dict_batches_like_tuples():
    """Hugging Face style loaders (dict batches, targets under "labels") give the
    same sweep as the (X, y) tuple."""

    class DictModel(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, batch):
            return self.net(batch["input_ids"])

    model, train, val, _ = _problem("classification")
    la = _fitted(model, train, "classification")
    ref = prior_sweep(la, val, prior_precisions=GRID)
    dmodel = DictModel(model)
    dla = DenseSubnetLaplace(
        dmodel, "classification", torch.arange(5, 45), prior_rescaling=True
    )
    rows = [{"input_ids": x, "labels": y} for x, y in zip(*train)]
    dla.fit(DataLoader(rows, batch_size=16))
    vrows = [{"input_ids": x, "labels": y} for x, y in zip(*val)]
    got = prior_sweep(dla, DataLoader(vrows, batch_size=7), prior_precisions=GRID)
    for a, b in zip(got.rows, ref.rows):
        for k in ("nll", "acc", "ece", "brier"):
            assert_close(a[k], b[k], 1e-6, k)
    assert got.marks["gridsearch"] == ref.marks["gridsearch"]


def test_grid_walk_finds_the_grid_minimum_of_a_unimodal_curve():
    from laplace_subnet_ext.diagnostics import grid_walk

    values = [5.0, 3.0, 2.0, 1.5, 1.2, 1.4, 2.0, 3.5]
    for start in range(len(values)):
        calls = []
        i, seen = grid_walk(
            lambda j, calls=calls: calls.append(j) or values[j], len(values), start
        )
        assert i == 4 and len(calls) == len(set(calls)) == len(seen)
        assert len(calls) <= abs(start - 4) + 3
    # two valleys: the walk stops in the one it starts in (a local minimum)
    bimodal = [1.0, 2.0, 3.0, 2.5, 0.5, 2.0]
    assert grid_walk(lambda j: bimodal[j], 6, 1)[0] == 0
    assert grid_walk(lambda j: bimodal[j], 6, 3)[0] == 4


def test_large_s_tuning_by_factorisation_equals_the_eigendecomposition_path(
    monkeypatch,
):
    """The large-S grid walk (one factorisation per value visited) gives the
    validation NLLs and predictive of the eigendecomposition path (prior_sweep,
    glm_along_priors)."""
    from laplace_subnet_ext import DenseSubnetLaplace
    from laplace_subnet_ext.diagnostics import (
        glm_along_priors,
        glm_predict_sets,
        gridsearch_walk,
        prior_sweep,
        probit,
    )

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
    ).double()
    X, y = torch.randn(60, 5, dtype=torch.float64), torch.randint(4, (60,))
    Xv, yv = torch.randn(30, 5, dtype=torch.float64), torch.randint(4, (30,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=20
    )
    la = DenseSubnetLaplace(
        model, "classification", torch.randperm(164)[:70], prior_precision=1.0
    )
    la.fit(loader)
    grid = torch.logspace(-2, 4, 13, dtype=torch.float64)
    sweep = prior_sweep(la, (Xv, yv), prior_precisions=grid)
    lam_grid, visited = gridsearch_walk(la, (Xv, yv), grid, start=1.0)
    for lam, nll in visited.items():
        assert nll == pytest.approx(sweep.at(lam, "val")["nll"], rel=1e-9)
    col = sweep.column("nll", "val")
    k = col.index(min(col))  # one valley here, so the walk ends at the grid's choice
    assert all(a >= b for a, b in zip(col[:k], col[1 : k + 1]))
    assert all(a <= b for a, b in zip(col[k:], col[k + 1 :]))
    assert lam_grid == pytest.approx(sweep.marks["gridsearch"])
    assert len(visited) < len(grid)  # and it did not visit the whole grid
    f, f_var = glm_along_priors(la, Xv, [0.3, 30.0])
    for k, lam in enumerate([0.3, 30.0]):
        (p,) = glm_predict_sets(la, [Xv], lam, batch_size=7)
        torch.testing.assert_close(p, probit(f, f_var[k]), rtol=1e-10, atol=1e-12)
    # without a cached eigendecomposition: one Cholesky per prior serves every set
    fresh = DenseSubnetLaplace(
        model, "classification", la.subnetwork_indices, prior_precision=1.0
    )
    fresh.fit(loader)
    cholesky, calls = torch.linalg.cholesky_ex, []
    monkeypatch.setattr(
        torch.linalg,
        "cholesky_ex",
        lambda *a, **k: calls.append(1) or cholesky(*a, **k),
    )
    p_val, p_train = glm_predict_sets(fresh, [Xv, X], 30.0, batch_size=7)
    assert len(calls) == 1
    torch.testing.assert_close(p_val, probit(f, f_var[1]), rtol=1e-10, atol=1e-12)
    f_tr, f_var_tr = glm_along_priors(la, X, [30.0])
    torch.testing.assert_close(
        p_train, probit(f_tr, f_var_tr[0]), rtol=1e-10, atol=1e-12
    )


def test_gridsearch_walk_refuses_a_bad_start_and_a_matrix_prior():
    from laplace_subnet_ext import DenseSubnetLaplace
    from laplace_subnet_ext.diagnostics import grid_walk, gridsearch_walk

    with pytest.raises(ValueError, match="start must be in"):
        grid_walk(lambda j: 0.0, 3, 3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(2, (10,))
    la = DenseSubnetLaplace(model, "classification", torch.arange(8),
                            prior_precision=torch.ones(8))  # fmt: skip
    la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y)))
    with pytest.raises(ValueError, match="scalar prior precision"):
        gridsearch_walk(la, (X, y))
