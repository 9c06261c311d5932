"""laplace-torch's own subnetwork scenarios, run through laplace.Laplace with the
plugin registered (written anew here; same models, masks, likelihoods, backends).

Deliberate differences from laplace 0.3, documented in README.md: integer index
tensors of any dtype and sequences of ints are accepted (laplace rejects int32).
"""

from __future__ import annotations

import pytest
import torch
from laplace import FullSubnetLaplace, Laplace, SubnetLaplace
from laplace.baselaplace import DiagLaplace
from laplace.curvature import AsdlGGN, BackPackEF, BackPackGGN, CurvlinopsEF
from laplace.utils import (
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    LastLayerSubnetMask,
    ModuleNameSubnetMask,
    ParamNameSubnetMask,
    RandomSubnetMask,
)
from torch import nn
from torch.nn.utils import parameters_to_vector

from laplace_subnet_ext import DenseSubnetLaplace
from tests.cases import assert_close, loader

LIKS = ["classification", "regression"]


def upstream_model():
    return nn.Sequential(nn.Linear(3, 20), nn.Linear(20, 2))


def mask_for(cls, model, lik):
    if cls is LargestVarianceDiagLaplaceSubnetMask:
        return cls(
            model, n_params_subnet=32, diag_laplace_model=DiagLaplace(model, lik)
        )
    if cls is LargestVarianceSWAGSubnetMask:
        return cls(model, n_params_subnet=32, likelihood=lik)
    if cls is ParamNameSubnetMask:
        return cls(model, parameter_names=["0.weight", "1.bias"])
    if cls is ModuleNameSubnetMask:
        return cls(model, module_names=["0"])
    if cls is LastLayerSubnetMask:
        return cls(model)
    return cls(model, n_params_subnet=32)


MASKS = [
    RandomSubnetMask,
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    ParamNameSubnetMask,
    ModuleNameSubnetMask,
    LastLayerSubnetMask,
]
BACKENDS = [None, BackPackGGN, BackPackEF, AsdlGGN, CurvlinopsEF]


@pytest.mark.parametrize(
    "backend", BACKENDS, ids=lambda b: getattr(b, "__name__", "default")
)
@pytest.mark.parametrize("mask_cls", MASKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("lik", LIKS)
def test_mask_fit_predict_marglik_sample(lik, mask_cls, backend):
    model = upstream_model()
    dl = loader(lik, n=10, bs=3)
    X = dl.dataset.tensors[0]
    theta = parameters_to_vector(model.parameters()).detach().clone()
    mask = mask_for(mask_cls, model, lik)
    mask.select(dl)
    la = Laplace(
        model,
        lik,
        "subnetwork",
        "full",
        subnetwork_indices=mask.indices,
        backend=backend,
    )
    assert isinstance(la, (DenseSubnetLaplace, FullSubnetLaplace, SubnetLaplace))
    la.fit(dl)
    S = mask.n_params_subnet
    assert la.H.shape == (S, S) and la.prior_precision_diag.shape == (S,)
    assert torch.equal(la.backend.subnetwork_indices, mask.indices)
    assert torch.equal(parameters_to_vector(model.parameters()), theta)
    ref = FullSubnetLaplace(model, lik, mask.indices, backend=backend)
    ref.fit(dl)
    assert_close(la.H, ref.H, 1e-8, "H vs laplace FullSubnetLaplace")
    assert_close(
        la.log_marginal_likelihood(), ref.log_marginal_likelihood(), 1e-8, "marglik"
    )
    with pytest.raises(ValueError):
        la(X, pred_type="linear")
    if lik == "regression":
        f_mu, f_var = la(X, pred_type="glm")
        assert_close(f_mu, model(X), 1e-12, "GLM mean is the MAP output")
        assert f_var.shape == (10, 2, 2)
        m, v = la(X, pred_type="nn", link_approx="mc", n_samples=10)
        assert m.shape == v.shape == (10, 2)
    else:
        for link in ["mc", "probit", "bridge", "bridge_norm"]:
            p = la(X, pred_type="glm", link_approx=link, n_samples=20)
            assert_close(p.sum(-1), torch.ones(10), 1e-10, link)
        p = la(X, pred_type="nn", link_approx="mc", n_samples=20)
        assert_close(p.sum(-1), torch.ones(10), 1e-10, "nn")
    g = torch.Generator().manual_seed(123)
    s1 = la.sample(20, generator=g)
    g = torch.Generator().manual_seed(123)
    assert torch.equal(s1, la.sample(20, generator=g))
    assert s1.shape == (20, theta.numel())


@pytest.mark.parametrize("lik", LIKS)
def test_layer_masks_equal_last_layer_laplace(lik):
    model = upstream_model()
    dl = loader(lik, n=10, bs=3)
    lllap = Laplace(model, lik, "last_layer", "full")
    lllap.fit(dl)
    for mask in (
        ParamNameSubnetMask(model, parameter_names=["1.weight", "1.bias"]),
        ModuleNameSubnetMask(model, module_names=["1"]),
        LastLayerSubnetMask(model, last_layer_name="1"),
    ):
        mask.select(dl)
        la = Laplace(model, lik, "subnetwork", "full", subnetwork_indices=mask.indices)
        la.fit(dl)
        assert_close(la.H, lllap.H, 1e-8, type(mask).__name__)


@pytest.mark.parametrize("lik", LIKS)
def test_init_errors_as_upstream(lik):
    model = upstream_model()
    with pytest.raises(TypeError):
        Laplace(model, lik, "subnetwork", "full")
    for bad in [
        None,
        torch.LongTensor([]),
        torch.LongTensor([[0, 5], [11, 42]]),
        torch.DoubleTensor([0.0, 5.0]),
        torch.FloatTensor([0.0, 5.0]),
        torch.HalfTensor([0.0, 5.0]),
        torch.BoolTensor([0, 5, 11, 42]),
        torch.LongTensor([0, -1, -11]),
        torch.LongTensor([200, 242]),
        torch.LongTensor([0, 0, 5, 11, 11, 42]),
    ]:
        with pytest.raises(ValueError):
            Laplace(model, lik, "subnetwork", "full", subnetwork_indices=bad)
    for structure in ["kron", "lowrank"]:
        with pytest.raises(ValueError):
            Laplace(
                model, lik, "subnetwork", structure, subnetwork_indices=torch.arange(4)
            )
