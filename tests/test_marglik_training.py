"""marglik_training with a subnetwork: at S = D the same trajectory as laplace's
own marglik_training with a full Hessian (float64); a subnetwork tunes the prior
of the whole network from its evidence; bad input is refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
from laplace import marglik_training as laplace_marglik_training
from laplace.curvature import CurvlinopsGGN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace, marglik_training
from tests.cases import assert_close

LIKS = ["classification", "regression"]


def _problem(lik: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    X = torch.randn(40, 3)
    y = torch.randint(2, (40,)) if lik == "classification" else torch.randn(40, 2)
    return model, DataLoader(TensorDataset(X, y), batch_size=16)  # no shuffle


@pytest.mark.parametrize("structure", ["scalar", "layerwise", "diag"])
@pytest.mark.parametrize("lik", LIKS)
def test_s_equal_d_follows_laplace_marglik_training(lik, structure):
    model, dl = _problem(lik)
    D = sum(p.numel() for p in model.parameters())
    kw = dict(
        n_epochs=6, n_hypersteps=3, lr_hyp=0.1, prior_structure=structure,
        marglik_frequency=2, optimizer_kwargs={"lr": 1e-2}, prior_prec_init=2.0,
        sigma_noise_init=0.7,
    )  # fmt: skip
    m_ref = copy.deepcopy(model)
    la_ref, _, ml_ref, loss_ref = laplace_marglik_training(
        m_ref, dl, lik, hessian_structure="full", backend=CurvlinopsGGN, **kw
    )
    m_ours = copy.deepcopy(model)
    la, _, ml, loss = marglik_training(
        m_ours, dl, lik, subnetwork_indices=torch.arange(D), **kw
    )
    assert len(ml) == len(ml_ref) == 9
    assert_close(torch.tensor(loss), torch.tensor(loss_ref), 1e-6, "losses")
    assert_close(torch.tensor(ml), torch.tensor(ml_ref), 1e-6, "neg. log marglik")
    assert_close(la.prior_precision, la_ref.prior_precision, 1e-6, "prior")
    assert_close(la.sigma_noise, la_ref.sigma_noise, 1e-6, "noise")
    for a, b in zip(m_ours.parameters(), m_ref.parameters()):
        assert_close(a, b, 1e-6, "weights")
    assert_close(la.posterior_precision, la_ref.posterior_precision, 1e-6, "P")


def test_a_subnetwork_tunes_the_whole_networks_prior():
    model, dl = _problem("classification")
    D = sum(p.numel() for p in model.parameters())
    idx = torch.arange(D - 14, D)  # the last layer: weight 12 + bias 2
    la, model, ml, loss = marglik_training(
        model, dl, "classification", subnetwork_indices=idx, n_epochs=4,
        n_hypersteps=5, prior_structure="layerwise", prior_prec_init=1.0,
    )  # fmt: skip
    assert isinstance(la, DenseSubnetLaplace) and len(loss) == 4 and len(ml) == 20
    assert torch.equal(la.subnetwork_indices, idx)
    # one precision per touched tensor, tuned away from the initial value; the
    # untouched first layer keeps prior_prec_init as its weight decay
    assert la.prior_precision.shape == (2,)
    assert (la.prior_precision - 1.0).abs().min() > 1e-3
    # the returned posterior is fitted at the best state: its evidence is the best
    assert -float(la.log_marginal_likelihood()) <= min(ml) + 1e-6


def test_default_selection_and_reselection():
    model, dl = _problem("regression")
    la, *_ = marglik_training(
        model, dl, "regression", n_params_subnet=10, n_epochs=3, n_hypersteps=2,
        reselect_every=1, prior_structure="scalar",
    )  # fmt: skip
    assert la.n_params_subnet == 10 and la.prior_precision.shape == (1,)


def test_trains_in_train_mode_and_fits_the_eval_mode_network():
    """Dropout and BatchNorm: every training batch runs in train mode (laplace's
    fit leaves the model in eval mode, and laplace's loop never switches back),
    every posterior in eval mode; the returned posterior equals a fresh fit of
    the returned network."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)
    ).double()
    X, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(2, (40,))
    dl = DataLoader(TensorDataset(X, y), batch_size=16)
    D = sum(p.numel() for p in model.parameters())
    idx = torch.arange(D - 18, D)
    modes = []
    model[3].register_forward_hook(lambda m, i, o: modes.append(m.training))
    la, model, _, _ = marglik_training(
        model, dl, "classification", subnetwork_indices=idx, n_epochs=3,
        n_hypersteps=2, prior_structure="scalar",
    )  # fmt: skip
    assert not model.training
    assert sum(modes) == 3 * len(dl)  # the 3 epochs' batches, all in train mode
    assert len(modes) > sum(modes)  # the fits ran in eval mode
    ref = DenseSubnetLaplace(model, "classification", subnetwork_indices=idx,
                             prior_precision=la.prior_precision)  # fmt: skip
    ref.fit(dl)
    assert_close(la.H, ref.H, 1e-10, "H of the eval-mode network")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({}, "give exactly one of"),
        ({"n_params_subnet": 3, "likelihood": "reward_modeling"}, "likelihood must be"),
        ({"n_params_subnet": 3, "prior_structure": "full"}, "prior_structure must"),
        ({"n_params_subnet": 3, "reselect_every": 0}, "reselect_every must"),
        (
            {"subnetwork_indices": torch.arange(3), "subnetwork_mask": "random"},
            "give exactly one of",
        ),
    ],
)
def test_bad_arguments_are_named(kw, match):
    model, dl = _problem("classification")
    with pytest.raises(ValueError, match=match):
        marglik_training(model, dl, **{"likelihood": "classification", **kw})
