"""A new user's first hour: not-fitted calls, messages that name what was passed,
progress and summaries, and no warnings we cause (issue 38, item 4)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from laplace_subnet_ext import DenseSubnetLaplace, NotFittedError
from laplace_subnet_ext.posterior import dense
from tests.cases import loader, make, mlp


def x() -> torch.Tensor:
    return torch.randn(4, 3)  # in the fixture's float64


@pytest.mark.parametrize(
    "call",
    [
        lambda la: la(x()),
        lambda la: la(x(), pred_type="nn", n_samples=3),
        lambda la: la.predictive_samples(x(), n_samples=3),
        lambda la: la.optimize_prior_precision(),
        lambda la: la.optimize_prior_precision(method="gridsearch", val_loader=None),
        lambda la: la.optimize_prior_and_noise(tune_sigma_noise=False),
        lambda la: la.sample(2),
        lambda la: la.posterior_covariance,
        lambda la: la.log_marginal_likelihood(),
        lambda la: la.state_dict(),
    ],
    ids=[
        "glm",
        "nn",
        "predictive_samples",
        "marglik",
        "gridsearch",
        "prior_and_noise",
        "sample",
        "covariance",
        "evidence",
        "state_dict",
    ],
)
def test_every_call_before_fit_with_indices_names_fit(call):
    la = make()  # indices given: the subnetwork is known, the posterior is not
    with pytest.raises(NotFittedError, match=r"la\.fit\(train_loader\)"):
        call(la)


def test_after_fit_the_same_calls_work_and_fit_override_resets():
    la = make()
    la.fit(loader("classification"))
    assert la(x()).shape == (4, 2)
    la.fit(loader("classification"), override=False)  # adds to the fitted state
    assert la(x()).shape == (4, 2)


def test_a_wrong_likelihood_lists_the_valid_values():
    with pytest.raises(
        ValueError, match="'regression', 'classification', 'reward_modeling'"
    ) as err:
        DenseSubnetLaplace(mlp(), "clasification", torch.arange(3))
    assert "'clasification'" in str(err.value)


def test_the_memory_error_names_the_argument_the_user_passed():
    with pytest.raises(ValueError, match=r"^subnetwork_indices \(S=60\) needs"):
        make(torch.arange(60), memory_budget=1000)
    with pytest.raises(ValueError, match=r"^n_params_subnet=60 needs"):
        DenseSubnetLaplace(  # refused at once, not after a selection in fit()
            mlp(),
            "classification",
            subnetwork_mask="magnitude",
            n_params_subnet=60,
            memory_budget=1000,
        )


def test_importing_the_package_warns_nothing():
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import laplace_subnet_ext"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_fit_tune_and_predict_warn_nothing():
    la = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        la.fit(loader("classification"))
        la.optimize_prior_precision()  # laplace's link_approx notice is moot here
        la(x(), link_approx="probit")
    assert [str(w.message) for w in caught] == []


def test_slow_selection_and_fit_print_one_line_each(monkeypatch, capsys):
    monkeypatch.setattr(dense, "SLOW_STAGE_SECONDS", -1.0)
    la = DenseSubnetLaplace(mlp(), "classification", n_params_subnet=5)
    la.fit(loader("classification"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "selected S=5 of D=74 weights with 'greedy_laplace'" in err[0]
    assert "fit: the 5 x 5 curvature over 20 inputs" in err[1]
    la = DenseSubnetLaplace(mlp(), "classification", n_params_subnet=5, verbose=False)
    la.fit(loader("classification"))
    assert capsys.readouterr().err == ""


def test_progress_bar_reaches_the_default_selection(capsys):
    la = DenseSubnetLaplace(mlp(), "classification", n_params_subnet=5)
    la.fit(loader("classification"), progress_bar=True)
    err = capsys.readouterr().err
    assert "[Greedy-Laplace]" in err and "[Computing subnetwork Hessian]" in err
