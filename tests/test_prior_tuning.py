"""Prior restriction / rescaling and marginal-likelihood tuning on the subnetwork."""

from __future__ import annotations

import copy

import pytest
import torch
from laplace import FullLaplace
from laplace.utils import RandomSubnetMask
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from tests.cases import D_MLP, assert_close, loader, make, mlp


# ------------------------------------------------------------------- prior
def test_prior_rescaling_uses_lambda_S_over_D():
    la = make(torch.arange(20), prior_precision=3.0, prior_rescaling=True)
    assert_close(
        la.prior_precision, torch.tensor([3.0 * 20 / D_MLP]), 1e-15, "rescaled"
    )
    assert_close(la.prior_precision_full_network, torch.tensor([3.0]), 0, "full")
    off = make(torch.arange(20), prior_precision=3.0)
    assert off.prior_precision.item() == 3.0


def test_rescaling_with_a_mask_happens_at_selection():
    la = DenseSubnetLaplace(
        mlp(),
        "classification",
        subnetwork_mask=RandomSubnetMask,
        n_params_subnet=37,
        prior_precision=2.0,
        prior_rescaling=True,
    )
    la.fit(loader("classification"))
    assert_close(
        la.prior_precision, torch.tensor([2.0 * 37 / D_MLP]), 1e-15, "rescaled"
    )


def test_prior_precision_structures_restrict_to_subnetwork():
    idx = torch.tensor(
        [0, 40, 73, 38, 1]
    )  # tensors 0 (0.weight), 1 (0.bias), 3 (2.bias)
    per_layer = torch.tensor([1.0, 2.0, 3.0, 4.0])
    la = make(idx, prior_precision=per_layer)
    assert la.prior_structure == "layerwise"
    assert_close(la.prior_precision, torch.tensor([1.0, 2.0, 4.0]), 0, "touched")
    assert_close(
        la.prior_precision_diag, torch.tensor([1.0, 2.0, 4.0, 2.0, 1.0]), 0, "diag"
    )
    full_diag = torch.arange(1.0, D_MLP + 1)
    la = make(idx, prior_precision=full_diag)
    assert_close(la.prior_precision_diag, full_diag[idx], 0, "D->S")
    la = make(idx, prior_precision=torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0]))
    assert la.prior_structure == "diag"
    with pytest.raises(ValueError, match="got length 6"):
        make(idx, prior_precision=torch.ones(6))
    with pytest.raises(ValueError, match="positive"):
        make(idx, prior_precision=-1.0)


@pytest.mark.parametrize("prior_mean_len", ["S", "D"])
def test_prior_mean_of_length_S_or_D_matches_frozen_full_laplace(prior_mean_len):
    model = mlp()
    dl = loader("regression")
    idx = torch.arange(D_MLP - 26, D_MLP)  # last layer
    mu_D = torch.randn(D_MLP) * 0.1
    mu = mu_D if prior_mean_len == "D" else mu_D[idx]
    la = DenseSubnetLaplace(
        model, "regression", idx, prior_mean=mu, prior_precision=2.0
    )
    la.fit(dl)
    frozen = copy.deepcopy(model)
    frozen[0].requires_grad_(False)
    ref = FullLaplace(frozen, "regression", prior_mean=mu_D[idx], prior_precision=2.0)
    ref.fit(dl)
    assert_close(
        la.log_marginal_likelihood(), ref.log_marginal_likelihood(), 1e-8, "marglik"
    )


# ------------------------------------------------------- marginal likelihood
@pytest.mark.parametrize("structure", ["scalar", "layerwise", "diag"])
@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_marglik_tuning_every_structure_improves_evidence(structure, lik):
    la = make(torch.randperm(D_MLP)[:30], lik=lik, prior_precision=1.0)
    la.fit(loader(lik))
    before = la.log_marginal_likelihood().item()
    la.optimize_prior_precision(method="marglik", prior_structure=structure, n_steps=50)
    n = {"scalar": 1, "layerwise": 4, "diag": 30}[structure]
    assert la.prior_precision.shape == (n,)
    assert la.log_marginal_likelihood().item() > before


def test_layerwise_marglik_equals_full_laplace_layerwise_when_S_is_D():
    model = mlp()
    dl = loader("regression")
    la = make(torch.arange(D_MLP), lik="regression", model=model)
    la.fit(dl)
    ref = FullLaplace(copy.deepcopy(model), "regression")
    ref.fit(dl)
    prior = torch.tensor([0.5, 2.0, 3.0, 0.1])
    assert_close(
        la.log_marginal_likelihood(prior),
        ref.log_marginal_likelihood(prior),
        1e-8,
        "lw",
    )


def test_sigma_noise_tunable_by_marglik_gradient():
    la = make(torch.arange(D_MLP), lik="regression", sigma_noise=1.0)
    la.fit(loader("regression"))
    log_sigma = torch.zeros(1, requires_grad=True)
    log_prior = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([log_sigma, log_prior], lr=0.1)
    first = None
    for _ in range(60):
        opt.zero_grad()
        nlml = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
        first = first if first is not None else nlml.item()
        nlml.backward()
        opt.step()
    assert nlml.item() < first - 1.0
    assert log_sigma.grad is not None and torch.isfinite(log_sigma.grad).all()


def test_gridsearch_on_subnetwork():
    la = make(torch.arange(30), prior_precision=1.0)
    dl = loader("classification")
    la.fit(dl)
    la.optimize_prior_precision(
        method="gridsearch", val_loader=dl, grid_size=5, pred_type="glm"
    )
    assert la.prior_precision.numel() == 1


def test_tuning_arguments_are_validated():
    la = make()
    la.fit(loader("classification"))
    with pytest.raises(ValueError, match="prior_structure"):
        la.optimize_prior_precision(prior_structure="kron")
    with pytest.raises(ValueError, match="method"):
        la.optimize_prior_precision(method="cv")


def test_joint_prior_and_noise_tuning_reaches_a_stationary_point():
    la = make(torch.arange(D_MLP), lik="regression", sigma_noise=1.0)
    la.fit(loader("regression", n=40))
    before = la.log_marginal_likelihood().item()
    lam, sigma = la.optimize_prior_and_noise(n_steps=300, lr=0.05)
    after = la.log_marginal_likelihood().item()
    assert after > before
    log_lam = lam.log().detach().clone().requires_grad_(True)
    log_sig = sigma.log().detach().clone().requires_grad_(True)
    la.log_marginal_likelihood(log_lam.exp(), log_sig.exp()).backward()
    assert log_lam.grad.abs().max() < 0.05 and log_sig.grad.abs().max() < 0.05
    with pytest.raises(ValueError, match="regression"):
        make().optimize_prior_and_noise()


def test_gridsearch_scores_every_value_on_its_own():
    """laplace 0.3 never resets its torchmetrics NLL between grid values, so value i
    is scored by the running mean over values 0..i; here that would pick the last
    grid value (1e4) although the validation NLL is smallest at 1e-1."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def data(n):
        X = torch.randn(n, 3, generator=g)
        return X, ((X[:, 0] + 0.2 * torch.randn(n, generator=g)) > 0).long()

    (Xt, yt), (Xv, yv) = data(40), data(60)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    la = DenseSubnetLaplace(model, "classification", torch.arange(D_MLP))
    la.fit(DataLoader(TensorDataset(Xt, yt), batch_size=20))
    grid = torch.logspace(-6, 4, 11)
    nll = []
    for value in grid:
        la.prior_precision = float(value)
        p = la(Xv, pred_type="glm", link_approx="probit")
        nll.append(torch.nn.functional.nll_loss(p.log(), yv).item())
    nll = torch.tensor(nll)
    running = nll.cumsum(0) / torch.arange(1, len(nll) + 1)
    assert int(running.argmin()) != int(nll.argmin())  # the case discriminates
    la.optimize_prior_precision(
        method="gridsearch",
        pred_type="glm",
        link_approx="probit",
        val_loader=DataLoader(TensorDataset(Xv, yv), batch_size=25),
        log_prior_prec_min=-6,
        log_prior_prec_max=4,
        grid_size=11,
    )
    assert_close(la.prior_precision, grid[nll.argmin()].reshape(1), what="λ")
