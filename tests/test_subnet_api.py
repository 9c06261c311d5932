"""Indices, masks, predictives and state of DenseSubnetLaplace."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest
import torch
from laplace import FullLaplace, Laplace
from laplace.utils import LastLayerSubnetMask, RandomSubnetMask
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace, NotFittedError
from tests.cases import D_MLP, DictModel, assert_close, loader, make, mlp


# ----------------------------------------------------------------- indices
@pytest.mark.parametrize(
    "idx",
    [
        torch.tensor([4, 1, 9], dtype=torch.int8),
        torch.tensor([4, 1, 9], dtype=torch.int16),
        torch.tensor([4, 1, 9], dtype=torch.int32),
        torch.tensor([4, 1, 9], dtype=torch.uint8),
        np.array([4, 1, 9]),
        [4, 1, 9],
    ],
    ids=["int8", "int16", "int32", "uint8", "numpy", "list"],
)
def test_any_integer_indices_are_accepted_in_order(idx):
    la = make(idx)
    assert la.subnetwork_indices.dtype == torch.long
    assert la.subnetwork_indices.tolist() == [4, 1, 9]
    assert la.H.shape == (3, 3)


def test_boolean_mask_of_length_D():
    mask = torch.zeros(D_MLP, dtype=torch.bool)
    mask[[2, 7, 70]] = True
    assert make(mask).subnetwork_indices.tolist() == [2, 7, 70]


@pytest.mark.parametrize(
    "idx, match",
    [
        (None, "got None"),
        (torch.tensor([], dtype=torch.long), "at least one"),
        (torch.tensor([[0, 1]]), "1-dimensional"),
        (torch.tensor([0.0, 5.0]), "integer or bool dtype"),
        (torch.tensor([0, -1]), r"\[0, D\).*-1"),
        (torch.tensor([0, D_MLP]), rf"got entry {D_MLP}"),
        (torch.tensor([0, 0, 5]), r"duplicates.*\[0\]"),
        (torch.tensor([True, False]), "length D=74; got length 2"),
    ],
)
def test_bad_indices_name_the_argument_rule_and_value(idx, match):
    with pytest.raises(ValueError, match=match) as err:
        make(idx)
    assert "subnetwork_indices" in str(err.value)


def test_missing_indices_and_mask_is_a_type_error():
    with pytest.raises(
        TypeError,
        match="subnetwork_indices=..., subnetwork_mask=... or n_params_subnet",
    ):
        DenseSubnetLaplace(mlp(), "classification")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        make("0,1")


# ------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    "mask_kw",
    [
        dict(subnetwork_mask=RandomSubnetMask, n_params_subnet=9),
        dict(subnetwork_mask="laplace_random", n_params_subnet=9),
        dict(subnetwork_mask="laplace_largest_variance_swag", n_params_subnet=9),
    ],
    ids=["class", "name", "swag-name-gets-likelihood"],
)
def test_mask_selects_inside_fit(mask_kw):
    dl = loader("classification")
    la = Laplace(
        mlp(), "classification", "subnetwork", "full", prior_precision=2.0, **mask_kw
    )
    with pytest.raises(NotFittedError):
        _ = la.subnetwork_indices
    la.fit(dl)
    assert la.n_params_subnet == 9 and la.H.shape == (9, 9)
    assert la.prior_precision_diag.shape == (9,)


def test_preselected_laplace_mask_instance_is_used_as_is():
    model = mlp()
    mask = LastLayerSubnetMask(model)
    dl = loader("regression")
    idx = mask.select(dl)
    la = DenseSubnetLaplace(model, "regression", subnetwork_mask=mask)
    la.fit(dl)
    assert torch.equal(la.subnetwork_indices, idx)


# ------------------------------------------------------------- predictives
@pytest.mark.parametrize("link", ["probit", "bridge", "bridge_norm", "mc"])
def test_classification_glm_links_match_full_laplace_at_S_equal_D(link):
    model = mlp()
    dl = loader("classification")
    X = dl.dataset.tensors[0]
    la = make(torch.arange(D_MLP), model=model)
    la.fit(dl)
    ref = FullLaplace(copy.deepcopy(model), "classification")
    ref.fit(dl)
    if link == "mc":
        g = torch.Generator().manual_seed(1)
        p1 = la.predictive_samples(X, n_samples=8, generator=g)
        g = torch.Generator().manual_seed(1)
        p2 = ref.predictive_samples(X, n_samples=8, generator=g)
    else:
        p1, p2 = la(X, link_approx=link), ref(X, link_approx=link)
    assert_close(p1, p2, 1e-8, link)


def test_regression_joint_and_diagonal_outputs():
    model = mlp()
    dl = loader("regression")
    X = dl.dataset.tensors[0][:5]
    la = make(torch.arange(D_MLP), lik="regression", model=model)
    la.fit(dl)
    ref = FullLaplace(copy.deepcopy(model), "regression")
    ref.fit(dl)
    m1, c1 = la(X, joint=True)
    m2, c2 = ref(X, joint=True)
    assert_close(c1, c2, 1e-8, "joint covariance")
    _, v1 = la(X, diagonal_output=True)
    assert v1.shape == (5, 2)


def test_predictive_is_blocked_and_equal_to_unblocked():
    la = make(torch.arange(40), lik="regression")
    dl = loader("regression")
    la.fit(dl)
    X = torch.randn(23, 3)
    m1, v1 = la(X)
    one_row = make(
        torch.arange(40), lik="regression", model=la.model, predictive_block_bytes=1
    )
    one_row.fit(dl)
    m2, v2 = one_row(X, progress_bar=False)
    assert_close(v1, v2, 1e-12, "blocked")
    assert_close(m1, m2, 1e-12, "blocked mean")


def test_predictive_blocks_never_exceed_the_fit_batch(monkeypatch):
    """The predictive runs at most as many inputs at once as fit's largest batch
    (its forward and backward passes are known to fit), with the same result."""
    from laplace_subnet_ext.jacobians import SubnetJacobians

    la = make(torch.arange(40), lik="regression")
    la.fit(loader("regression", bs=4))
    X = torch.randn(23, 3)
    one_block = la.functional_variance(la.jacobians(X)[0])
    sizes = []
    real = SubnetJacobians.__call__

    def record(self, x):
        sizes.append(len(x))
        return real(self, x)

    monkeypatch.setattr(SubnetJacobians, "__call__", record)
    _, f_var = la._glm_predictive_distribution(X)
    assert sizes and max(sizes) == 4 and sum(sizes) == 23
    assert_close(f_var, one_block, 1e-12, "blocked by the fit batch")


def test_nn_predictive_and_sample_only_move_subnetwork():
    model = mlp()
    la = make(torch.tensor([3, 50, 60]), model=model)
    la.fit(loader("classification"))
    s = la.sample(7, generator=torch.Generator().manual_seed(0))
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    fixed = torch.ones(D_MLP, dtype=torch.bool)
    fixed[[3, 50, 60]] = False
    assert torch.equal(s[:, fixed], theta[fixed].expand(7, -1))
    assert not torch.equal(s[:, ~fixed], theta[~fixed].expand(7, -1))
    p = la(torch.randn(4, 3), pred_type="nn", link_approx="mc", n_samples=5)
    assert_close(p.sum(-1), torch.ones(4), 1e-12, "probabilities")
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), theta)


def test_sample_covariance_matches_posterior():
    la = make(torch.arange(5), lik="regression")
    la.fit(loader("regression"))
    s = la.sample(40000, generator=torch.Generator().manual_seed(0))[:, :5]
    emp = torch.cov(s.T)
    assert_close(emp, la.posterior_covariance, 0.05, "sample covariance")


def test_dict_inputs_fit_and_predict():
    model = DictModel()
    data = [
        {
            "input_ids": torch.randint(7, (4, 4)),
            "extra": torch.randn(4, 2),
            "labels": torch.randint(3, (4,)),
        }
        for _ in range(3)
    ]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 12

    la = DenseSubnetLaplace(
        model, "classification", torch.arange(10, 40), dict_key_x="input_ids"
    )
    dl = type("L", (), {"__iter__": lambda s: iter(data), "dataset": DS()})()
    la.fit(dl)
    ref = FullLaplace(copy.deepcopy(model), "classification", dict_key_x="input_ids")
    ref.fit(dl)
    assert_close(la.H, ref.H[10:40, 10:40], 1e-10, "dict-input curvature")
    assert la.n_data == 12
    probs = la(data[0], link_approx="probit")
    assert probs.shape == (4, 3)


def test_float32_model_with_float64_curvature():
    model = mlp().float()
    X = torch.randn(20, 3, dtype=torch.float32)
    y = torch.randint(2, (20,))

    dl = DataLoader(TensorDataset(X, y), batch_size=5)
    la = DenseSubnetLaplace(
        model, "classification", torch.arange(30), curvature_dtype=torch.float64
    )
    la.fit(dl)
    assert la.H.dtype == torch.float64
    p = la(X)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    la32 = DenseSubnetLaplace(
        model, "classification", torch.arange(30), curvature_dtype=torch.float32
    )
    la32.fit(dl)
    assert la32.H.dtype == torch.float32
    assert_close(la32.H, la.H, 1e-5, "float32 vs float64 curvature")


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_default_curvature_dtype_follows_S(model_dtype, monkeypatch, caplog):
    """curvature_dtype=None: float64 up to FLOAT64_CURVATURE_MAX_S, float32 above,
    logged; the float64 curvature is the float64 model's to float32 round-off, and
    predictions come back in the model's dtype."""
    from laplace_subnet_ext.numerics import memory

    monkeypatch.setattr(memory, "FLOAT64_CURVATURE_MAX_S", 30)
    model = mlp()
    X, y = torch.randn(20, 3), torch.randint(2, (20,))

    ref = DenseSubnetLaplace(model, "classification", torch.arange(30))
    ref.fit(DataLoader(TensorDataset(X, y), batch_size=5))
    low = copy.deepcopy(model).to(model_dtype)
    dl = DataLoader(TensorDataset(X.to(model_dtype), y), batch_size=5)
    for S, expected in ((30, torch.float64), (31, torch.float32)):
        with caplog.at_level(logging.INFO, logger="laplace_subnet_ext"):
            caplog.clear()
            la = DenseSubnetLaplace(low, "classification", torch.arange(S))
        assert f"S={S}" in caplog.text and str(expected)[6:] in caplog.text
        la.fit(dl)
        assert la.H.dtype == expected
        eps = torch.finfo(model_dtype).eps
        assert_close(la.H[:30, :30], ref.H, 4 * eps, f"H of S={S}")
        assert la(X[:3].to(model_dtype)).dtype == model_dtype
    with caplog.at_level(logging.INFO, logger="laplace_subnet_ext"):
        caplog.clear()
        DenseSubnetLaplace(model, "classification", torch.arange(31))
    assert "curvature_dtype" not in caplog.text  # float64 model: nothing to choose


def test_default_curvature_keeps_singular_posterior_pd():
    """README's failing case in small: S = 1,000 > N = 20, so the GGN is singular,
    and a tiny prior. The float32 curvature is not numerically PD (warned eigen
    fallback); the default (float64 at this S) factorises without a warning and
    matches the float64 model's GLM variance."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 40),
        torch.nn.Tanh(),
        torch.nn.Linear(40, 40),
        torch.nn.Tanh(),
        torch.nn.Linear(40, 1),
    )
    X, y = torch.randn(20, 5), torch.randn(20, 1)

    def variance(model, dtype, **kw):
        la = DenseSubnetLaplace(
            model.to(dtype), "regression", torch.arange(1000), sigma_noise=0.01, **kw
        )
        la.fit(DataLoader(TensorDataset(X.to(dtype), y.to(dtype)), batch_size=10))
        la.prior_precision = 1e-4
        return la(X[:4].to(dtype))[1].double()

    ref = variance(copy.deepcopy(net), torch.float64)
    with pytest.warns(RuntimeWarning, match="not numerically positive definite"):
        variance(copy.deepcopy(net), torch.float32, curvature_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        v = variance(copy.deepcopy(net), torch.float32)
    assert_close(v, ref, 1e-3, "default curvature dtype vs float64 model")


def test_float64_default_that_does_not_fit_names_float32():
    """The default float64 curvature of a float32 model under a budget that only
    float32 fits: the error names curvature_dtype=torch.float32, which then fits
    (one float64 S x S matrix = the float32 plan's two)."""
    model = mlp().float()
    budget = 30 * 30 * 8 - 1
    with pytest.raises(ValueError, match=r"pass curvature_dtype=torch\.float32"):
        DenseSubnetLaplace(
            model, "classification", torch.arange(30), memory_budget=budget
        )
    la = DenseSubnetLaplace(
        model,
        "classification",
        torch.arange(30),
        memory_budget=budget + 1,
        curvature_dtype=torch.float32,
    )
    assert la._cdtype == torch.float32
    with pytest.raises(ValueError, match=r"select fewer weights, or raise"):
        DenseSubnetLaplace(
            model,
            "classification",
            torch.arange(30),
            memory_budget=30 * 30 * 4 - 1,
            curvature_dtype=torch.float32,
        )


# ------------------------------------------------------------------- state
def test_state_dict_round_trip_is_exact():
    model = mlp()
    dl = loader("regression")
    la = make(
        torch.tensor([5, 2, 70, 33]),
        lik="regression",
        model=model,
        prior_precision=torch.ones(4) * 2,
        prior_mean=0.1,
        sigma_noise=0.5,
        prior_rescaling=True,
    )
    la.fit(dl)
    la.optimize_prior_precision(
        method="marglik", prior_structure="layerwise", n_steps=5
    )
    state = la.state_dict()
    new = DenseSubnetLaplace(copy.deepcopy(model), "regression", torch.tensor([0]))
    new.load_state_dict(state)
    assert torch.equal(new.subnetwork_indices, la.subnetwork_indices)
    assert new.prior_structure == "layerwise"
    assert torch.equal(new.prior_precision, la.prior_precision)
    assert torch.equal(new.posterior_covariance, la.posterior_covariance)
    assert torch.equal(new.log_marginal_likelihood(), la.log_marginal_likelihood())


def test_loading_into_a_mismatching_model_fails_clearly():
    la = make()
    la.fit(loader("classification"))
    other = DenseSubnetLaplace(mlp(width=13), "classification", torch.tensor([0]))
    with pytest.raises(ValueError, match="same architecture"):
        other.load_state_dict(la.state_dict())


def test_not_fitted_is_runtime_and_attribute_error():
    la = DenseSubnetLaplace(
        mlp(), "classification", subnetwork_mask="laplace_random", n_params_subnet=3
    )
    with pytest.raises(RuntimeError, match="fit"):
        _ = la.posterior_precision
    with pytest.raises(AttributeError):
        la.state_dict()


# ------------------------------------------------------------------- aliasing
GETTERS = [
    "posterior_covariance",
    "posterior_scale",
    "posterior_precision",
    "prior_precision",
    "prior_precision_diag",
    "mean",
    "mean_subnet",
    "H",
    "subnetwork_indices",
    "log_det_posterior_precision",
    "log_det_ratio",
    "scatter",
    "prior_mean",
]


@pytest.mark.parametrize("eig", [False, True], ids=["cholesky", "eigen"])
@pytest.mark.parametrize("first", ["posterior_covariance", "posterior_scale"])
def test_public_getters_are_not_changed_by_later_calls(first, eig):
    """Every tensor handed out stays as it was through every later call (the
    covariance used to be the factor buffer, overwritten by sample())."""
    dl = loader("classification")
    X = dl.dataset.tensors[0]
    la = make()
    la.fit(dl)
    if eig:
        la.eigendecompose()
    getattr(la, first)
    held = {n: getattr(la, n) for n in GETTERS}
    copies = {n: v.clone() for n, v in held.items()}
    la.sample(5)
    _ = la.posterior_scale, la.posterior_covariance
    la(X)
    la.functional_variance(la.jacobians(X)[0])
    la.log_marginal_likelihood()
    la.sample(3)
    for n, v in held.items():
        assert torch.equal(v, copies[n]), f"{n} changed by a later call"
    # and the handed-out tensors are the posterior's values
    assert_close(held["posterior_covariance"], torch.linalg.inv(la.posterior_precision))
    C = held["posterior_scale"]
    assert_close(C @ C.T, held["posterior_covariance"])


def test_buffer_on_request_shares_memory():
    la = make()
    la.fit(loader("classification"))
    buf = la.get_posterior_covariance(copy=False)
    assert buf.data_ptr() == la.get_posterior_covariance(copy=False).data_ptr()
    assert la.posterior_covariance.data_ptr() != buf.data_ptr()


def test_n_params_subnet_alone_selects_with_the_default_strategy():
    from laplace import Laplace

    from laplace_subnet_ext import selection
    from laplace_subnet_ext.posterior.dense import DEFAULT_MASK

    torch.manual_seed(0)
    model = mlp().double()
    dl = loader("classification")
    dl.dataset.tensors = (dl.dataset.tensors[0].double(), dl.dataset.tensors[1])
    la = Laplace(
        model,
        "classification",
        "subnetwork",
        "full",
        n_params_subnet=9,
        prior_precision=0.3,
    )
    la.fit(dl)
    ref = selection.get(DEFAULT_MASK)(
        model, 9, likelihood="classification", prior_precision=0.3
    )
    assert torch.equal(la.subnetwork_indices, ref.select(dl).sort().values)
    # what the selection did is kept: the mask object and its time
    assert type(la.selection) is type(ref) and la.selection.chosen_by == ref.chosen_by
    assert la.selection.objective == pytest.approx(ref.objective, rel=1e-12)
    assert la.selection_seconds > 0
    given = DenseSubnetLaplace(model, "classification", la.subnetwork_indices)
    given.fit(dl)
    assert given.selection is None and given.selection_seconds is None
    with pytest.raises(TypeError, match="n_params_subnet"):
        DenseSubnetLaplace(model, "classification")
