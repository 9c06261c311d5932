"""One owner and one writer per piece of posterior state (issue 37).

The laplace-facing ``DenseSubnetLaplace`` keeps laplace's constants in its
``__dict__``; everything that changes lives in its ``DensePosterior`` and the
objects that owns (``SubnetPrior``, ``DensePrecision``), each written by its own
methods only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext
from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.posterior.accumulator import CurvatureAccumulator
from laplace_subnet_ext.posterior.dense_posterior import DensePosterior
from laplace_subnet_ext.prior.subnet_prior import SubnetPrior
from tests.cases import assert_close

ROOT = Path(laplace_subnet_ext.__file__).parent
OWNERS = {
    DensePosterior: "posterior/dense_posterior.py",
    SubnetPrior: "prior/subnet_prior.py",
    CurvatureAccumulator: "posterior/accumulator.py",
}


def _problem(lik: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )
    X = torch.randn(40, 3)
    y = torch.randint(2, (40,)) if lik == "classification" else torch.randn(40, 2)
    return model, DataLoader(TensorDataset(X, y), batch_size=16), X


@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_the_adapter_dict_is_frozen_after_init(lik):
    """A whole workflow (selection in fit, every prior structure, grid search,
    noise tuning, predictive, samples, laplace's backend, a state round trip)
    adds, removes or rebinds nothing in the adapter's ``__dict__``."""
    model, dl, X = _problem(lik)
    la = DenseSubnetLaplace(
        model, lik, subnetwork_mask="gradient_laplace", n_params_subnet=20
    )
    before = dict(vars(la))
    la.fit(dl)
    la(X[:5])
    la(X[:5], joint=True)
    la.optimize_prior_precision(method="marglik", n_steps=5)
    la.optimize_prior_precision(
        method="marglik", prior_structure="layerwise", n_steps=3
    )
    la.optimize_prior_precision(method="marglik", prior_structure="diag", n_steps=3)
    la.prior_precision = 1.0
    la.optimize_prior_precision(
        method="gridsearch", val_loader=dl, grid_size=3, link_approx="probit"
    )
    if lik == "regression":
        la.optimize_prior_and_noise(n_steps=3)
    la.sample(3)
    la.log_marginal_likelihood()
    _ = la.posterior_covariance, la.posterior_scale, la.eigendecompose()
    _ = la.backend  # laplace builds its backend lazily: stored by the posterior
    state = la.state_dict()
    la.load_state_dict(state)
    la.fit(dl, override=False)
    after = vars(la)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    rebound = [k for k in before if after[k] is not before[k]]
    assert not rebound, f"rebound after __init__: {rebound}"


def test_owners_have_no_ad_hoc_attributes():
    for cls in OWNERS:
        obj = cls.__new__(cls)
        with pytest.raises(AttributeError):
            obj.not_a_field = 1  # __slots__: the fields are declared


def _owned_fields() -> dict[str, set[Path]]:
    """private field name -> the owner modules that declare it"""
    out: dict[str, set[Path]] = {}
    for cls, rel in OWNERS.items():
        for name in cls.__slots__:
            if name.startswith("_"):
                out.setdefault(name, set()).add(ROOT / rel)
    return out


def test_each_owned_field_is_written_in_its_owner_only():
    """No module assigns an owner's private field except the owner's own (and
    then only through ``self``)."""
    fields = _owned_fields()
    bad = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in fields:
                        own = path in fields[sub.attr]
                        via_self = (
                            isinstance(sub.value, ast.Name) and sub.value.id == "self"
                        )
                        if not (own and via_self):
                            bad.append(
                                f"{path.relative_to(ROOT)}:{node.lineno} {sub.attr}"
                            )
    assert not bad, bad


def test_handed_out_tensors_do_not_alias_the_state():
    """Editing what a getter returned in place changes nothing in the posterior."""
    model, dl, X = _problem("classification")
    la = DenseSubnetLaplace(model, "classification", torch.arange(0, 42, 2))
    la.fit(dl)
    la.prior_precision = torch.tensor(0.5)
    ref_var = la(X[:4])
    la.prior_precision.mul_(100)
    la.prior_mean.add_(3)
    la.subnetwork_indices.zero_()
    g, V = la.eigendecompose()
    g.zero_()
    V.zero_()
    la.precision.eigvalsh().zero_()
    assert float(la.prior_precision) == 0.5
    assert_close(la(X[:4]), ref_var, 1e-12, "predictive after edits of copies")
