"""Selection strategies: registry, sizing, scores against dense references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from laplace import FullLaplace
from laplace.utils import RandomSubnetMask
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace, selection
from laplace_subnet_ext.selection import (
    MagnitudeMask,
    OBDMask,
    WassersteinSubnetMask,
    resolve_n_params_subnet,
)
from laplace_subnet_ext.selection.variance import diag_curvature
from tests.cases import assert_close, loader, mlp

D = 74


def test_registry_refuses_duplicates_and_lists_names():
    assert {"wasserstein", "random", "magnitude", "obd", "gradient_energy"} <= set(
        selection.available()
    )
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        selection.register("random", RandomSubnetMask)
    with pytest.raises(
        ValueError, match="unknown selection strategy 'nope'.*wasserstein"
    ):
        selection.get("nope")
    with pytest.raises(TypeError, match="select"):
        selection.register("bad", int)


@pytest.mark.parametrize(
    "spec, expected",
    [(10, 10), (0.5, 37), (10.0, 10), ("auto", math.isqrt(4_000_000 // (2 * 8)))],
)
def test_n_params_subnet_forms(spec, expected):
    budget = "4MB" if spec == "auto" else None
    n_total = 10**6 if spec == "auto" else D
    assert resolve_n_params_subnet(spec, n_total, budget) == expected


@pytest.mark.parametrize("bad", [0, D + 1, 1.5, -0.2, "many", None])
def test_n_params_subnet_errors(bad):
    with pytest.raises((ValueError, TypeError), match="n_params_subnet"):
        resolve_n_params_subnet(bad, D)


def test_magnitude_keeps_largest_and_min_per_layer_reaches_every_tensor():
    model = mlp()
    theta = parameters_to_vector(model.parameters()).detach()
    idx = MagnitudeMask(model, 8).select()
    assert set(idx.tolist()) == set(theta.abs().topk(8).indices.tolist())
    idx = MagnitudeMask(model, 8, min_per_layer=0.5).select()
    starts = [0, 36, 48, 72, 74]
    for lo, hi in zip(starts[:-1], starts[1:]):
        assert ((idx >= lo) & (idx < hi)).sum() >= 1


def test_obd_saliency_matches_dense_ggn_diagonal():
    model = mlp()
    dl = loader("regression")
    mask = OBDMask(model, 10, likelihood="regression")
    mask.select(dl)
    ref = FullLaplace(copy.deepcopy(model), "regression")
    ref.fit(dl)
    theta = parameters_to_vector(model.parameters()).detach()
    assert_close(mask.scores, 0.5 * theta**2 * ref.H.diagonal(), 1e-8, "OBD")


@pytest.mark.parametrize(
    "variance", ["function_space", "diag_laplace", "kfac", "exact", "swag"]
)
def test_wasserstein_variants_select_and_report(variance):
    model = mlp()
    theta = parameters_to_vector(model.parameters()).detach().clone()
    dl = loader("classification")
    mask = WassersteinSubnetMask(
        model,
        12,
        variance=variance,
        likelihood="classification",
        prior_precision=2.0,
        swag_kwargs=dict(n_epochs=3, n_snapshots_per_epoch=3),
    )
    idx = mask.select(dl)
    assert idx.numel() == 12
    assert 0 < mask.retained_variance_fraction <= 1
    assert torch.equal(parameters_to_vector(model.parameters()), theta)  # untouched
    la = DenseSubnetLaplace(model, "classification", subnetwork_mask=mask)
    la.fit(dl)
    assert la.H.shape == (12, 12)


def test_exact_variances_equal_full_laplace_covariance_diagonal():
    model = mlp()
    dl = loader("regression")
    mask = WassersteinSubnetMask(
        model, 5, variance="exact", likelihood="regression", prior_precision=0.5
    )
    mask.select(dl)
    ref = FullLaplace(copy.deepcopy(model), "regression", prior_precision=0.5)
    ref.fit(dl)
    var = ref.posterior_covariance.diagonal()
    assert_close(mask.variances, var, 1e-8, "exact variances")
    assert set(mask.indices.tolist()) == set(var.topk(5).indices.tolist())


def test_diag_laplace_excludes_zero_curvature_weights():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
    )
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # three dead units
    dl = loader("regression")
    h = diag_curvature(model, "regression", dl)
    mask = WassersteinSubnetMask(
        model, 10, variance="diag_laplace", likelihood="regression"
    )
    idx = mask.select(dl)
    assert mask.n_excluded == int((h == 0).sum()) > 0
    assert (h[idx] > 0).all()


def test_swag_welford_matches_two_pass_variance():
    from laplace_subnet_ext.selection import variance as v

    torch.manual_seed(0)
    model = mlp()
    dl = loader("regression", n=21, bs=7)
    torch.manual_seed(5)
    var = v.swag_variance(model, "regression", dl, n_epochs=4, n_snapshots_per_epoch=3)
    # two-pass reference over the same SGD trajectory
    torch.manual_seed(5)
    work = copy.deepcopy(model)
    opt = torch.optim.SGD(work.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    snaps = []
    for _ in range(4):
        for X, y in dl:
            opt.zero_grad()
            torch.nn.MSELoss()(work(X), y).backward()
            opt.step()
            snaps.append(parameters_to_vector(work.parameters()).detach().clone())
    ref = torch.stack(snaps).var(0, unbiased=False)
    assert_close(var, ref, 1e-8, "SWAG variance")


def test_name_mask_includes_nonleaf_owned_parameters():
    from laplace_subnet_ext.selection import NameMask
    from tests.cases import NonLeafParam

    model = NonLeafParam()
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    idx = NameMask(model, module_names=[""]).select()  # root module owns scale/out_w
    assert idx.numel() == sum(sizes)
    idx = NameMask(model, parameter_names=["scale"]).select()
    start = sum(sizes[: names.index("scale")])
    assert idx.tolist() == list(range(start, start + 6))
    with pytest.raises(ValueError, match="unknown names"):
        NameMask(model, parameter_names=["nope"])


def test_last_layer_mask_equals_laplace_last_layer():
    from laplace.utils import LastLayerSubnetMask

    from laplace_subnet_ext.selection import LastLayerMask

    model = mlp()
    dl = loader("regression")
    ours = LastLayerMask(model).select(dl)
    theirs = LastLayerSubnetMask(model).select(dl)
    assert torch.equal(ours, theirs)


def test_structured_mask_keeps_whole_units_by_summed_score():
    from laplace_subnet_ext.selection import StructuredMask

    model = mlp()  # Linear(3,12): units of 4 weights; Linear(12,2): units of 13
    theta = parameters_to_vector(model.parameters()).detach().abs()
    mask = StructuredMask(model, 17, score="magnitude")
    idx = mask.select()
    units = mask.units()
    scores = torch.stack([theta[u].sum() for u in units])
    chosen = set(idx.tolist())
    kept = [k for k, u in enumerate(units) if set(u.tolist()) <= chosen]
    assert sum(units[k].numel() for k in kept) == idx.numel() <= 17
    # greedy by score: the best unit is always kept
    assert int(scores.argmax()) in kept
    for u in units:  # no partial units
        inter = len(chosen & set(u.tolist()))
        assert inter in (0, u.numel())


def test_size_curve_follows_one_ranking_and_matches_direct_fits():
    from laplace_subnet_ext.diagnostics import subnet_size_curve

    model = mlp()
    dl = loader("regression")
    mask = WassersteinSubnetMask(model, 10, variance="exact", likelihood="regression")
    mask.select(dl)
    rows = subnet_size_curve(
        model, "regression", dl, mask, [5, 20, 74], tune_prior=False
    )
    assert [r["S"] for r in rows] == [5, 20, 74]
    fr = [r["retained_fraction"] for r in rows]
    assert fr[0] < fr[1] < fr[2] and abs(fr[2] - 1) < 1e-12
    top20 = mask.variances.argsort(descending=True)[:20]
    la = DenseSubnetLaplace(model, "regression", top20)
    la.fit(dl)
    assert_close(rows[1]["log_marglik"], la.log_marginal_likelihood(), 1e-10, "S=20")


@pytest.mark.parametrize(
    "name, kw",
    [
        ("magnitude", {}),
        ("random", {}),
        ("wasserstein", {"likelihood": "classification"}),
        ("structured", {}),
    ],
)
def test_selection_indexes_the_trainable_parameters_of_a_partly_frozen_model(name, kw):
    """The posterior's vector holds the tensors that require grad (as in every LoRA
    setup); selection must index that vector, not all parameters."""
    from torch.utils.data import DataLoader, TensorDataset

    from laplace_subnet_ext import DenseSubnetLaplace, selection

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )
    model[0].requires_grad_(False)  # frozen "backbone": 32 weights
    D = 8 * 2 + 2
    loader = DataLoader(
        TensorDataset(torch.randn(20, 3), torch.randint(2, (20,))), batch_size=10
    )
    mask = selection.get(name)(model, 10, **kw)  # a head unit holds 9 weights
    idx = mask.select(loader)
    assert idx.max() < D and len(idx) <= 10
    if name == "magnitude":
        head = torch.cat([model[2].weight.flatten(), model[2].bias]).abs()
        assert set(idx.tolist()) == set(head.topk(10).indices.tolist())
    la = DenseSubnetLaplace(model, "classification", subnetwork_mask=mask)
    la.fit(loader)
    assert torch.equal(la.subnetwork_indices, idx.sort().values)


def test_naming_a_frozen_tensor_is_refused():
    from laplace_subnet_ext import selection

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"must require grad; frozen: \['0.weight'\]"):
        selection.get("by_name")(model, parameter_names=["0.weight"])


@pytest.mark.parametrize("kind", ["ggn", "ef"])
@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_blocked_diagonal_equals_backpack(lik, kind):
    """The memory-bounded fallback (our Jacobians, column blocks) equals laplace's
    BackPACK diagonal, block boundaries included."""
    from laplace import DiagLaplace
    from laplace.curvature import BackPackEF, BackPackGGN
    from torch.utils.data import DataLoader, TensorDataset

    from laplace_subnet_ext.selection.variance import blocked_diag_curvature
    from tests.cases import assert_close

    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).eval()
    X = torch.randn(25, 3)
    y = torch.randint(3, (25,)) if lik == "classification" else torch.randn(25, 3)
    loader = DataLoader(TensorDataset(X, y), batch_size=10)
    ref = DiagLaplace(
        copy.deepcopy(model),
        lik,
        backend=BackPackGGN if kind == "ggn" else BackPackEF,
    )
    ref.fit(loader)
    # 8 bytes * 10 samples * 3 outputs * 5 columns: blocks of 5 of the 52 weights
    got = blocked_diag_curvature(model, lik, loader, kind, block_bytes=8 * 10 * 3 * 5)
    assert_close(got, ref.H, 1e-10, f"{lik} {kind} diagonal")


def test_wasserstein_on_attention_uses_the_exact_fallback():
    """BackPACK cannot handle attention; the function-space score still comes from the
    exact diagonal GGN (here against torch.func over all weights)."""
    from torch.utils.data import DataLoader, TensorDataset

    from tests.cases import assert_close
    from tests.test_zoo import full_jacobian
    from tests.zoo import ZOO, build

    case = next(c for c in ZOO if c.id == "encoder_layer_pre_norm")
    model, x = build(case)
    y = torch.randint(3, (len(x),))
    mask = selection.get("wasserstein")(model, 20, likelihood="classification")
    mask.select(DataLoader(TensorDataset(x, y), batch_size=len(y)))
    J, f = full_jacobian(model, x)
    p = torch.softmax(f, -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    h = torch.einsum("bcp,bck,bkp->p", J, Lam, J)
    sigma2 = 1.0 / (h + 1.0)  # diagonal Laplace, prior precision 1
    assert_close(mask.scores, sigma2 * h / len(y), 1e-8, "function-space scores")


def test_small_real_curvature_is_kept_and_exact_zero_dropped():
    """Float64: input 0 scaled by 1e-10 (curvature ~1e-20 of the largest, far
    below eps but real, as a LoRA factor beside its head), input 1 always zero
    (structurally no curvature)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    X = torch.randn(40, 3)
    X[:, 0] *= 1e-10
    X[:, 1] = 0.0
    dl = DataLoader(TensorDataset(X, torch.randint(2, (40,))), batch_size=8)
    mask = selection.get("wasserstein")(model, 2, likelihood="classification")
    mask.select(dl)
    # weight (2, 3): column 1 of each row -> flat indices 1 and 4
    assert mask.n_zero_curvature == 2
    assert not torch.isfinite(mask.drop_zero_curvature(torch.ones(8), dl)[[1, 4]]).any()
    kept = mask.drop_zero_curvature(torch.ones(8), dl)
    assert bool(torch.isfinite(kept[[0, 3]]).all())  # the 1e-20 weights stay
