"""Captured share of the full-network predictive variance, against a dense
torch.func reference (float64); Gradient-/Greedy-Laplace against brute force;
zero-curvature filtering of every score strategy."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace, selection
from laplace_subnet_ext.diagnostics import (
    FullNetworkReference,
    estimate_full_variance,
    gaussian_w2,
    selection_quality,
)
from laplace_subnet_ext.selection.greedy import greedy_schur, subset_objective
from tests.cases import assert_close
from tests.test_zoo import full_jacobian

LIKS = ["classification", "regression"]


def _problem(lik: str, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    X = torch.randn(30, 3, dtype=torch.float64)
    y = (
        torch.randint(3, (30,))
        if lik == "classification"
        else torch.randn(30, 3, dtype=torch.float64)
    )
    return model, DataLoader(TensorDataset(X, y), batch_size=8), X


def _dense(model, lik, X, Xt, prior, sigma):
    """H, P and test Jacobians from torch.func over all weights."""
    J, f = full_jacobian(model, X)
    if lik == "classification":
        p = f.softmax(-1)
        Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        H = torch.einsum("bcp,bck,bkq->pq", J, Lam, J)
    else:
        H = torch.einsum("bcp,bcq->pq", J, J)
    P = H / sigma**2 + prior * torch.eye(len(H), dtype=H.dtype)
    return H, P, full_jacobian(model, Xt)[0]


def _cov(Jt, P, idx=None):
    if idx is not None:
        Jt, P = Jt[..., idx], P[idx][:, idx]
    return Jt @ torch.linalg.inv(P) @ Jt.mT


@pytest.mark.parametrize("lik", LIKS)
def test_share_and_w2_match_dense_reference(lik):
    model, dl, _ = _problem(lik)
    Xt = torch.randn(9, 3, dtype=torch.float64)
    sigma = 0.6 if lik == "regression" else 1.0
    ref = FullNetworkReference(
        model, lik, dl, Xt, prior_precision=0.8, sigma_noise=sigma
    )
    H, P, Jt = _dense(model, lik, dl.dataset.tensors[0], Xt, 0.8, sigma)
    assert_close(ref.H, H, what="full GGN")
    full = _cov(Jt, P)
    assert_close(ref.full_covariance, full, what="full predictive covariance")
    idx = torch.tensor([0, 4, 9, 17, 22, 30, 41, 50])
    sub = _cov(Jt, P, idx)
    tr = lambda A: A.diagonal(dim1=-2, dim2=-1).sum()  # noqa: E731
    res = ref.evaluate(idx)
    assert_close(res.share, tr(sub) / tr(full), what="captured share")
    # W2 of Gaussians with one mean, from eigendecompositions written out here
    ea, va = torch.linalg.eigh(full)
    root = va @ torch.diag_embed(ea.sqrt()) @ va.mT
    em = torch.linalg.eigvalsh(root @ sub @ root).clamp_min(0).sqrt().sum(-1)
    trs = full.diagonal(dim1=-2, dim2=-1).sum(-1) + sub.diagonal(dim1=-2, dim2=-1).sum(
        -1
    )
    assert_close(res.wasserstein, (trs - 2 * em).sqrt().mean(), what="W2")
    # the subnetwork posterior of the package, same prior, no rescaling
    la = DenseSubnetLaplace(model, lik, idx, prior_precision=0.8, sigma_noise=sigma)
    la.fit(dl)
    assert_close(
        la.functional_variance(la.jacobians(Xt)[0]), sub, what="vs DenseSubnetLaplace"
    )


@pytest.mark.parametrize("lik", LIKS)
def test_region_shares_match_the_dense_reference(lik):
    """The share within a region of the test inputs (e.g. between and beyond the
    data), centred logits for classification, against the dense covariances."""
    model, dl, _ = _problem(lik, seed=6)
    near = torch.randn(5, 3, dtype=torch.float64)
    far = 4 * torch.randn(7, 3, dtype=torch.float64)
    Xt = torch.cat([near, far])
    ref = FullNetworkReference(model, lik, dl, Xt, prior_precision=0.8)
    _, P, Jt = _dense(model, lik, dl.dataset.tensors[0], Xt, 0.8, 1.0)
    if lik == "classification":
        Jt = Jt - Jt.mean(1, keepdim=True)  # centred logits
    idx = torch.tensor([1, 3, 8, 13, 21, 34, 40])
    sub, full = _cov(Jt, P, idx), _cov(Jt, P)
    tr = lambda A: A.diagonal(dim1=-2, dim2=-1).sum()  # noqa: E731
    far_mask = torch.arange(12) >= 5
    res = ref.evaluate(
        idx, {"far": far_mask, "near": torch.arange(5), "first": torch.tensor([0])}
    )
    assert_close(
        res.region_shares["first"], tr(sub[:1]) / tr(full[:1]), what="index 0 alone"
    )
    assert_close(res.region_shares["far"], tr(sub[5:]) / tr(full[5:]), what="far")
    assert_close(res.region_shares["near"], tr(sub[:5]) / tr(full[:5]), what="near")
    assert all(0 < v <= 1 for v in res.region_shares.values())
    D = ref.H.shape[0]
    assert_close(
        ref.evaluate(torch.arange(D), {"far": far_mask}).region_shares["far"], 1.0
    )
    rows = selection_quality(
        model, lik, dl, Xt, strategies={"random": "random"}, sizes=[7],
        reference=ref, regions={"far": far_mask},
    )  # fmt: skip
    assert 0 < rows[0]["share_far"] <= 1
    with pytest.raises(ValueError, match="selects no test input"):
        ref.evaluate(idx, {"none": torch.zeros(12, dtype=torch.bool)})
    with pytest.raises(ValueError, match="boolean mask of the 12 test inputs"):
        ref.evaluate(idx, {"bad": torch.ones(3, dtype=torch.bool)})


@pytest.mark.parametrize("lik", LIKS)
def test_share_never_exceeds_one_and_grows_with_nesting(lik):
    model, dl, X = _problem(lik, seed=1)
    ref = FullNetworkReference(model, lik, dl, X[:10], prior_precision=0.3)
    D = ref.H.shape[0]
    perm = torch.randperm(D, generator=torch.Generator().manual_seed(0))
    shares = [ref.evaluate(perm[:s]).share for s in (1, 5, 20, 40, D - 1)]
    assert all(0 < s <= 1 for s in shares)
    assert shares == sorted(shares)  # nested subnetworks: monotone
    assert_close(ref.evaluate(torch.arange(D)).share, 1.0, what="S = D")
    assert ref.evaluate(torch.arange(D)).wasserstein < 1e-6


def test_w2_is_zero_for_equal_and_trace_for_point_mass():
    A = torch.randn(4, 3, 3, dtype=torch.float64)
    A = A @ A.mT + 0.1 * torch.eye(3)
    assert gaussian_w2(A, A).abs().max() < 1e-7
    assert_close(
        gaussian_w2(A, torch.zeros_like(A)), A.diagonal(0, 1, 2).sum(-1).sqrt()
    )


@pytest.mark.parametrize("lik", LIKS)
def test_stochastic_estimate_against_exact(lik):
    model, dl, X = _problem(lik, seed=2)
    dl = DataLoader(dl.dataset, batch_size=30)
    Xt = X[:6]
    ref = FullNetworkReference(model, lik, dl, Xt, prior_precision=0.5)
    exact = float(ref.full_covariance.diagonal(dim1=-2, dim2=-1).sum())
    basis, se0 = estimate_full_variance(
        model, lik, dl, Xt, prior_precision=0.5, n_probes=None, cg_tol=1e-12
    )
    assert se0 == 0.0
    assert_close(basis, exact, 1e-8, "unit-vector probes (CG only)")
    est, se = estimate_full_variance(
        model, lik, dl, Xt, prior_precision=0.5, n_probes=32, seed=3
    )
    assert 0 < se < 0.3 * exact
    assert abs(est - exact) < 4 * se


@pytest.mark.parametrize(
    "lik,center",
    [("classification", True), ("classification", False), ("regression", False)],
)
def test_greedy_equals_brute_force_greedy(lik, center):
    model, dl, X = _problem(lik, seed=3)
    ref = FullNetworkReference(model, lik, dl, X, prior_precision=0.5)
    P, J = ref.precision(), ref.J
    if center:  # the objective counts the centred logits only
        J = J - J.mean(1, keepdim=True)

    def F(S):
        if not S:
            return 0.0
        idx = torch.tensor(S, dtype=torch.long)
        return float(_cov(J, P, idx).diagonal(dim1=-2, dim2=-1).sum())

    chosen: list[int] = []
    for _ in range(7):
        rest = [j for j in range(len(P)) if j not in chosen]
        chosen.append(max(rest, key=lambda j: F(chosen + [j])))
    mask = selection.get("greedy_laplace")(
        model,
        7,
        likelihood=lik,
        prior_precision=0.5,
        candidates=1000,
        center_logits=center,
        eval_inputs=None,  # the 2026 objective: the training inputs
        compare_scores=False,  # the greedy path itself
    )
    mask.select(dl)
    # the same objective after every step (ties, e.g. symmetric output biases,
    # may be broken either way)
    got = mask.order.tolist()
    assert_close(
        torch.tensor([F(got[: k + 1]) for k in range(7)]),
        torch.tensor([F(chosen[: k + 1]) for k in range(7)]),
        what="objective along the greedy path",
    )
    gains = [F(got[: k + 1]) - F(got[:k]) for k in range(7)]
    assert_close(mask.gains, torch.tensor(gains), what="greedy gains")


def test_greedy_subsample_stands_for_the_whole_training_set():
    """max_data < N: the subsample's curvature is scaled by N / n, so the choice
    equals the greedy choice on the subsample's H scaled up."""
    model, dl, X = _problem("regression", seed=4)
    sub = DataLoader(TensorDataset(*[t[:16] for t in dl.dataset.tensors]), 16)
    ref = FullNetworkReference(model, "regression", sub, X[:16], prior_precision=0.5)
    P = ref.H * (30 / 16)
    P.diagonal().add_(0.5)
    J = ref.J

    def F(S):
        idx = torch.tensor(S, dtype=torch.long)
        return float(_cov(J, P, idx).diagonal(dim1=-2, dim2=-1).sum())

    chosen: list[int] = []
    for _ in range(5):
        rest = [j for j in range(len(P)) if j not in chosen]
        chosen.append(max(rest, key=lambda j: F(chosen + [j])))
    mask = selection.get("greedy_laplace")(
        model, 5, likelihood="regression", prior_precision=0.5, max_data=16,
        candidates=1000, eval_inputs=None, compare_scores=False,
    )  # fmt: skip
    mask.select(DataLoader(dl.dataset, batch_size=16))
    assert_close(
        torch.tensor([F(mask.order.tolist()[: k + 1]) for k in range(5)]),
        torch.tensor([F(chosen[: k + 1]) for k in range(5)]),
        what="objective with the scaled subsample",
    )


def test_greedy_eval_inputs_change_the_target():
    model, dl, X = _problem("regression", seed=5)
    far = 4 * torch.randn(40, 3, dtype=torch.float64)
    ref = FullNetworkReference(model, "regression", dl, far, prior_precision=0.5)
    kw = dict(likelihood="regression", prior_precision=0.5, candidates=1000)
    inside = selection.get("greedy_laplace")(model, 6, eval_inputs=None, **kw)
    inside = inside.select(dl)
    outside = selection.get("greedy_laplace")(model, 6, eval_inputs=far, **kw)
    outside = outside.select(dl)
    assert ref.evaluate(outside).share >= ref.evaluate(inside).share


def _objective(J, Lam, E, lam, sigma):
    """F(S) by brute force: sum_x tr E_S P_SS^-1 E_S^T with P = H / sigma^2 + lam I."""
    n, c, q = J.shape
    H = torch.einsum("ncp,nck,nkq->pq", J, Lam, J) if Lam is not None else None
    if H is None:
        H = torch.einsum("ncp,ncq->pq", J, J)
    P = H / sigma**2 + lam * torch.eye(q, dtype=J.dtype)

    def F(order):
        if len(order) == 0:
            return 0.0
        return float(_cov(E, P, torch.as_tensor(order)).diagonal(0, -2, -1).sum())

    return F


def _random_problem(seed=0, n=12, c=3, q=40):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(n, c, q, generator=g, dtype=torch.float64)
    J = J * torch.rand(q, generator=g, dtype=torch.float64) ** 2  # uneven columns
    A = torch.randn(n, c, c, generator=g, dtype=torch.float64)
    Lam = A @ A.mT / c
    E = torch.randn(7, 2, q, generator=g, dtype=torch.float64)
    return J, Lam, E


@pytest.mark.parametrize("block", [1, 3, 8])
def test_blocked_greedy_gains_are_the_exact_increments_of_the_objective(block):
    """The BLAS-3 block updates (Cholesky rows, residuals, Schur complements of
    the whole pool) are exact: every reported gain equals F(S + j) - F(S) by brute
    force along the chosen path, and each block's first choice is the exact
    argmax over the whole pool."""
    J, Lam, E = _random_problem()
    F = _objective(J, Lam, E, 0.7, 0.8)
    order, gains = greedy_schur(J, Lam, 20, 0.7, 0.8, E=E, block=block, shortlist=2)
    assert len(set(order.tolist())) == 20
    path = order.tolist()
    inc = [F(path[: k + 1]) - F(path[:k]) for k in range(20)]
    assert_close(
        gains, torch.tensor(inc), 1e-8, f"gains along the path (block {block})"
    )
    # the first choice is the global argmax of the first gain
    first = [F([j]) for j in range(J.shape[-1])]
    assert path[0] == max(range(len(first)), key=first.__getitem__)


def test_greedy_overwrites_the_evaluation_jacobians_only_when_allowed():
    """``overwrite_eval=True`` (the mask's own, freshly built E) reuses E's memory
    for the residuals and gives the same path; the default leaves E intact."""
    J, Lam, E = _random_problem()
    kept = E.clone()
    ref = greedy_schur(J, Lam, 10, 0.7, E=E, block=3)
    assert torch.equal(E, kept)
    got = greedy_schur(J, Lam, 10, 0.7, E=E, block=3, overwrite_eval=True)
    assert torch.equal(got[0], ref[0])
    assert_close(got[1], ref[1], 1e-12, "gains")
    assert not torch.equal(E, kept)  # E held the residuals


def test_block_one_is_brute_force_greedy_and_blocks_keep_the_objective():
    J, Lam, E = _random_problem(seed=1, q=60)
    F = _objective(J, Lam, E, 0.5, 1.0)
    chosen: list[int] = []
    for _ in range(12):
        rest = [j for j in range(60) if j not in chosen]
        chosen.append(max(rest, key=lambda j: F(chosen + [j])))
    exact = greedy_schur(J, Lam, 12, 0.5, E=E, block=1)[0].tolist()
    assert_close(F(exact), F(chosen), 1e-10, "block 1 = brute-force greedy")
    blocked = greedy_schur(J, Lam, 12, 0.5, E=E, block=6, shortlist=2)[0].tolist()
    assert F(blocked) >= 0.98 * F(chosen)  # lazy blocks: close, not identical


def test_augmented_eval_inputs_are_the_explicit_ones_and_exact():
    """eval_inputs="augmented" counts the variance at the training inputs plus
    interpolations and perturbations of them: the same choice and gains as
    passing those inputs, and the gains are the brute-force increments of F."""
    from laplace_subnet_ext.selection.greedy import augmented_inputs

    model, dl, X = _problem("regression", seed=7)
    kw = dict(likelihood="regression", prior_precision=0.5, candidates=1000)
    aug = selection.get("greedy_laplace")(model, 6, eval_inputs="augmented", **kw)
    aug.select(dl)
    batches = [b[0] for b in dl]
    inputs = augmented_inputs(batches, 1024)
    assert [len(t) for t in inputs] == [30, 30, 30]
    assert torch.equal(inputs[0], X)
    lo, hi = X.min(0).values, X.max(0).values  # interpolations stay in the box
    assert bool(((inputs[1] >= lo - 1e-12) & (inputs[1] <= hi + 1e-12)).all())
    explicit = selection.get("greedy_laplace")(
        model, 6, eval_inputs=torch.cat(inputs), **kw
    )
    explicit.select(dl)
    assert torch.equal(aug.order, explicit.order)
    assert_close(aug.gains, explicit.gains, 1e-12, "same objective")
    ref = FullNetworkReference(
        model, "regression", dl, torch.cat(inputs), prior_precision=0.5
    )
    P, E = ref.precision(), ref.J
    F = [0.0] + [
        float(_cov(E, P, aug.order[: k + 1]).diagonal(0, -2, -1).sum())
        for k in range(6)
    ]
    assert_close(aug.gains, torch.tensor(F).diff(), 1e-8, "brute-force increments")
    equal = augmented_inputs(batches, 1024, equal_budget=True)
    assert [len(t) for t in equal] == [10, 10, 10]  # the default's 30 in all
    assert torch.equal(equal[0], X[:10]) and torch.equal(equal[1], inputs[1][:10])
    aug_eq = selection.get("greedy_laplace")(
        model, 6, eval_inputs="augmented_equal", **kw
    )
    aug_eq.select(dl)
    explicit_eq = selection.get("greedy_laplace")(
        model, 6, eval_inputs=torch.cat(equal), **kw
    )
    explicit_eq.select(dl)
    assert torch.equal(aug_eq.order, explicit_eq.order)
    with pytest.raises(ValueError, match="eval_inputs must be inputs, None"):
        selection.get("greedy_laplace")(model, 6, eval_inputs="mixup", **kw)
    with pytest.raises(TypeError, match="floating-point tensor inputs"):
        augmented_inputs([torch.arange(6).reshape(3, 2)], 10)


def test_subset_objective_gives_the_brute_force_increments_in_any_order():
    """F along an arbitrary order of columns: each increment F(S_1:k) - F(S_1:k-1)
    by brute force (float64, 1e-8), with and without separate evaluation
    Jacobians, classification output Hessians and regression."""
    J, Lam, E = _random_problem(seed=3)
    order = torch.randperm(J.shape[-1], generator=torch.Generator().manual_seed(0))[:9]
    for lam_out, ev in [(Lam, E), (None, None), (Lam, None)]:
        F = _objective(J, lam_out, J if ev is None else ev, 0.6, 0.9)
        got = subset_objective(J, lam_out, order, 0.6, 0.9, E=ev)
        path = order.tolist()
        inc = [F(path[: k + 1]) - F(path[:k]) for k in range(len(path))]
        assert_close(got, torch.tensor(inc, dtype=got.dtype), 1e-8, "increments")


@pytest.mark.parametrize("lik", LIKS)
def test_default_objective_keeps_the_better_candidate_and_is_exact(lik):
    """The default (eval_inputs="auto", compare_scores=True): the variance is
    counted at the training inputs with interpolations and perturbations
    (here all three sets whole: 3 x 30 inputs <= max_data); the kept subset's F is
    the brute-force F of those inputs (dense torch.func reference, float64), it
    is at least the greedy path's and the Gradient-Laplace top S's, and its
    captured share of the full network's variance there is at most 1."""
    from laplace_subnet_ext.selection.greedy import augmented_inputs

    model, dl, X = _problem(lik, seed=8)
    inputs = torch.cat(augmented_inputs([b[0] for b in dl], 1024))
    kw = dict(likelihood=lik, prior_precision=0.5, candidates=1000)
    mask = selection.get("greedy_laplace")(model, 6, **kw)
    idx = mask.select(dl)
    assert mask.eval_used == "augmented"
    assert set(mask.objective) == {"greedy", "gradient_laplace"}
    greedy = selection.get("greedy_laplace")(
        model, 6, eval_inputs="augmented", compare_scores=False, **kw
    )
    greedy.select(dl)
    assert_close(mask.objective["greedy"], float(greedy.gains.sum()), 1e-10, "greedy")
    ref = FullNetworkReference(model, lik, dl, inputs, prior_precision=0.5)
    P, E = ref.precision(), ref.J
    if lik == "classification":
        E = E - E.mean(1, keepdim=True)

    def F(order):
        return float(_cov(E, P, torch.as_tensor(order)).diagonal(0, -2, -1).sum())

    assert_close(F(mask.order), mask.objective[mask.chosen_by], 1e-8, "kept F")
    assert_close(F(greedy.order), mask.objective["greedy"], 1e-8, "greedy F")
    assert F(mask.order) >= max(mask.objective.values()) * (1 - 1e-10)
    assert_close(mask.gains.sum(), F(mask.order), 1e-8, "gains sum to F")
    res = ref.evaluate(idx)
    share = res.share_centered if lik == "classification" else res.share
    assert 0 < share <= 1


def test_default_objective_budget_and_fallback(caplog):
    """ "auto" keeps the evaluation within max_data inputs (all three sets while
    3n <= max_data, else a third each) and keeps the training inputs for token
    ids, saying so; compare_scores is skipped (logged) where S x S would exceed
    the pool's Jacobians."""
    model, dl, X = _problem("regression", seed=9)
    kw = dict(likelihood="regression", prior_precision=0.5, candidates=1000)
    for max_data, used in [
        (1024, "augmented"),
        (90, "augmented"),
        (60, "augmented_equal"),
    ]:
        mask = selection.get("greedy_laplace")(model, 4, max_data=max_data, **kw)
        mask.select(dl)
        assert mask.eval_used == used, max_data
    tok = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.Linear(12, 2)).double()
    ids = torch.randint(11, (20, 3))
    tdl = DataLoader(TensorDataset(ids, torch.randint(2, (20,))), batch_size=5)
    with caplog.at_level("INFO", logger="laplace_subnet_ext"):
        mask = selection.get("greedy_laplace")(model=tok, n_params_subnet=5)
        mask.select(tdl)
    assert mask.eval_used == "training inputs"
    assert "cannot be interpolated" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="laplace_subnet_ext"):
        mask = selection.get("greedy_laplace")(model, 40, max_data=2, **kw)
        mask.select(DataLoader(dl.dataset, batch_size=2))
    assert "compare_scores skipped" in caplog.text
    assert set(mask.objective) == {"greedy"} and mask.chosen_by == "greedy"


def test_greedy_block_rule(monkeypatch, caplog):
    from laplace_subnet_ext.selection import greedy

    model, dl, _ = _problem("classification")
    kw = dict(likelihood="classification", prior_precision=0.5, candidates=1000)
    mask = selection.get("greedy_laplace")(model, 6, **kw)
    mask.select(dl)
    assert mask.block_used == 1  # small work: exact greedy
    monkeypatch.setattr(greedy, "EXACT_GREEDY_WORK", 0)
    with caplog.at_level("INFO", logger="laplace_subnet_ext"):
        big = selection.get("greedy_laplace")(model, 6, **kw)
        big.select(dl)
    assert big.block_used == greedy.GREEDY_BLOCK
    assert "blocked greedy" in caplog.text
    fixed = selection.get("greedy_laplace")(model, 6, block=2, **kw)
    fixed.select(dl)
    assert fixed.block_used == 2
    with pytest.raises(ValueError, match="block must be 'auto' or a positive int"):
        selection.get("greedy_laplace")(model, 6, block=0, **kw)


def test_greedy_work_and_memory_bound(monkeypatch, caplog):
    """Over max_greedy_work (or the memory bound) the default keeps the
    Gradient-Laplace top S, decided before the pool's Jacobians, and says why;
    the work estimate counts the rows the greedy steps would use."""
    from laplace_subnet_ext.selection import greedy

    model, dl, X = _problem("classification")
    kw = dict(likelihood="classification", prior_precision=0.5, candidates=1000)
    ref = selection.get("gradient_laplace")(model, 6)
    ref_idx = ref.select(dl)
    with caplog.at_level("INFO", logger="laplace_subnet_ext"):
        mask = selection.get("greedy_laplace")(model, 6, max_greedy_work=1.0, **kw)
        idx = mask.select(dl)
    assert mask.chosen_by == "gradient_laplace" and mask.gains is None
    # S x C x (rows + S/2 + eval rows): 30 inputs x 3 classes, 90 evaluation
    # inputs x 2 centred rows, C = the 45 weights with curvature
    C = sum(p.numel() for p in model.parameters()) - mask.n_zero_curvature
    assert f"6 x {C} x (90 + 3 + 180)" in mask.greedy_skipped
    assert "over their bound" in caplog.text
    assert torch.equal(idx.sort().values, ref_idx.sort().values)
    assert set(mask.stage_seconds) == {"screening"}
    # under the bound: the greedy steps, nothing skipped
    mask = selection.get("greedy_laplace")(model, 6, **kw)
    mask.select(dl)
    assert mask.greedy_skipped is None and mask.chosen_by in (
        "greedy",
        "gradient_laplace",
    )
    # the memory bound
    monkeypatch.setattr(greedy, "available_bytes", lambda device: 1000)
    mask = selection.get("greedy_laplace")(model, 6, **kw)
    mask.select(dl)
    assert "of the free memory" in mask.greedy_skipped
    assert mask.chosen_by == "gradient_laplace"
    off = selection.get("greedy_laplace")(model, 6, max_greedy_work=None, **kw)
    off.select(dl)
    assert off.greedy_skipped is None and off.gains is not None
    with pytest.raises(ValueError, match="max_greedy_work must be a positive"):
        selection.get("greedy_laplace")(model, 6, max_greedy_work=0, **kw)


def test_centred_rows_keep_the_gram_of_the_centred_jacobians():
    from laplace_subnet_ext.selection.greedy import centred, column_dots

    E = torch.randn(7, 4, 5, dtype=torch.float64)
    Ec = E - E.mean(1, keepdim=True)
    Er = centred(E)
    assert Er.shape == (7, 3, 5)
    G = Ec.reshape(-1, 5).T @ Ec.reshape(-1, 5)
    assert_close(Er.reshape(-1, 5).T @ Er.reshape(-1, 5), G, 1e-12, "Gram")
    X = torch.randn(600, 9, dtype=torch.float64)  # more rows than one chunk
    assert_close(column_dots(X), X.pow(2).sum(0), 1e-12, "column norms")


def test_greedy_first_step_is_the_closed_form():
    """Identity output Hessian: the first gain is ||J_q||^2 / (||J_q||^2 + lambda)."""
    J = torch.randn(5, 2, 4, dtype=torch.float64)
    order, gains = greedy_schur(J, None, 1, prior_precision=2.0)
    col = J.pow(2).sum((0, 1))
    assert int(order[0]) == int((col / (col + 2.0)).argmax())
    assert_close(gains[0], (col / (col + 2.0)).max())


def test_gradient_laplace_scores_are_mean_squared_output_gradients():
    model, dl, X = _problem("classification")
    mask = selection.get("gradient_laplace")(model, 10)
    idx = mask.select(dl)
    J, _ = full_jacobian(model, X)
    score = J.pow(2).sum(1).mean(0)
    assert_close(mask.scores, score, what="Gradient-Laplace score")
    assert set(idx.tolist()) == set(score.topk(10).indices.tolist())


def _dead_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # three dead units: 12 + 3 + 6 weights
    X, y = torch.randn(20, 3), torch.randint(2, (20,))
    return model, DataLoader(TensorDataset(X, y), batch_size=7)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("random", {}),
        ("magnitude", {}),
        ("obd", {"likelihood": "classification"}),
        ("gradient_energy", {"likelihood": "classification"}),
        ("wasserstein", {"likelihood": "classification"}),
        ("gradient_laplace", {}),
        ("greedy_laplace", {"likelihood": "classification"}),
    ],
)
def test_every_strategy_drops_zero_curvature(name, kw):
    model, dl = _dead_relu()
    J, _ = full_jacobian(model, dl.dataset.tensors[0])
    zero = J.pow(2).sum((0, 1)) == 0
    n_zero = int(zero.sum())
    assert n_zero == 18  # 3 dead units: 3 x (3 + 1) inputs, 3 x 2 outputs
    D = len(zero)
    mask = selection.get(name)(model, D - n_zero, **kw)
    idx = mask.select(dl)
    assert mask.n_zero_curvature == n_zero
    assert not zero[idx].any()
    with pytest.raises(ValueError, match="nonzero curvature"):
        selection.get(name)(model, D - n_zero + 1, **kw).select(dl)


def test_zero_curvature_filter_can_be_switched_off():
    model, dl = _dead_relu()
    mask = selection.get("magnitude")(model, 30, filter_zero_curvature=False)
    assert len(mask.select(dl)) == 30 and mask.n_zero_curvature == 0


def test_selection_quality_rows():
    model, dl, X = _problem("classification")
    rows = selection_quality(
        model,
        "classification",
        dl,
        X[:5],
        strategies={"random": "random", "greedy": "greedy_laplace"},
        sizes=[0.1, 12],
        prior_precision=1.0,
    )
    assert [(r["strategy"], r["S"]) for r in rows] == [
        ("random", 5),
        ("greedy", 5),
        ("random", 12),
        ("greedy", 12),
    ]
    assert all(0 < r["share"] <= 1 and r["seconds"] >= 0 for r in rows)


def test_selection_quality_records_only_not_applicable_errors():
    model, dl, X = _problem("classification")

    def refuses(S):
        raise ValueError("n_params_subnet: too large for this strategy")

    def broken(S):
        raise RuntimeError("a bug, not a measurement")

    kw = dict(sizes=[5], prior_precision=1.0)
    rows = selection_quality(
        model, "classification", dl, X[:5], strategies={"r": refuses}, **kw
    )
    assert rows == [
        {
            "strategy": "r",
            "S": 5,
            "error": "ValueError: n_params_subnet: too large for this strategy",
        }
    ]
    with pytest.raises(RuntimeError, match="a bug"):
        selection_quality(
            model, "classification", dl, X[:5], strategies={"b": broken}, **kw
        )


def test_backpack_route_is_decided_from_the_model():
    from laplace_subnet_ext.selection.variance import (
        backpack_applies,
        blocked_diag_curvature,
        diag_curvature,
    )
    from tests.cases import Residual

    model, dl, _ = _problem("classification")
    assert backpack_applies(model)
    assert_close(
        diag_curvature(model, "classification", dl),
        blocked_diag_curvature(model, "classification", dl),
        what="BackPACK vs blocked",
    )
    assert not backpack_applies(Residual())  # functional ops outside modules
    assert not backpack_applies(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
