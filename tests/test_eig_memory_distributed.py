"""Eigendecomposition path vs Cholesky path; memory checks; data-parallel fit."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.numerics import linalg
from laplace_subnet_ext.numerics.memory import (
    dense_posterior_bytes,
    largest_subnet,
    parse_bytes,
)
from tests.cases import assert_close, loader, mlp


def _posterior_summary(la, X):
    return (
        la.log_marginal_likelihood(),
        la.posterior_covariance,
        la._glm_predictive_distribution(X)[1],
        la._glm_predictive_distribution(X, joint=True)[1],
    )


@pytest.mark.parametrize("lik", ["classification", "regression"])
def test_scalar_prior_eig_paths_equal_cholesky_path(lik):
    """eigenvalues-only + Cholesky (default), full eigendecomposition, and the
    diagonal-prior Cholesky path give the same posterior to 1e-8."""
    la = DenseSubnetLaplace(mlp(), lik, torch.randperm(74)[:40], prior_precision=0.8)
    la.fit(loader(lik))
    X = torch.randn(6, 3)
    assert la.prior_structure == "scalar" and not la._uses_eig
    default = _posterior_summary(la, X)
    la.eigendecompose()
    la.prior_precision = 0.8
    assert la._uses_eig
    eig = _posterior_summary(la, X)
    la.prior_precision = torch.full((40,), 0.8)  # diagonal: Cholesky path
    assert la.prior_structure == "diag" and not la._uses_eig
    chol = _posterior_summary(la, X)
    names = ["marglik", "covariance", "GLM variance", "joint GLM covariance"]
    for a, b, c, what in zip(default, eig, chol, names):
        assert_close(a, c, 1e-8, f"default vs Cholesky: {what}")
        assert_close(b, c, 1e-8, f"eig vs Cholesky: {what}")


def test_eigendecomposition_is_cached_and_refreshed_when_H_changes():
    la = DenseSubnetLaplace(mlp(), "regression", torch.arange(20))
    dl = loader("regression")
    la.fit(dl)
    g1, V1 = la.eigendecompose()
    cached = la.precision._eigh()[1]
    assert la.precision._eigh()[1] is cached  # computed once
    assert V1 is not cached and torch.equal(V1, cached)  # a copy is handed out
    la.fit(loader("regression", n=30))
    g2, _ = la.eigendecompose()
    assert not torch.allclose(g1, g2)
    assert_close(
        g2, torch.linalg.eigvalsh(la.H).clamp_min(0), 1e-10, "fresh eigenvalues"
    )


def test_eig_marglik_is_differentiable_in_prior_and_noise():
    la = DenseSubnetLaplace(mlp(), "regression", torch.arange(30))
    la.fit(loader("regression"))
    lam = torch.tensor(0.7, requires_grad=True)
    sig = torch.tensor(0.9, requires_grad=True)
    la.log_marginal_likelihood(lam, sig).backward()
    h = 1e-6
    fd = (
        la.log_marginal_likelihood(torch.tensor(0.7 + h), torch.tensor(0.9))
        - la.log_marginal_likelihood(torch.tensor(0.7 - h), torch.tensor(0.9))
    ) / (2 * h)
    assert_close(lam.grad, fd, 1e-6, "d marglik / d lambda")


def test_eigenvalues_are_clipped_and_nonfinite_curvature_is_refused():
    A = torch.randn(5, 3)
    H = A @ A.T  # rank 3: two zero eigenvalues, round-off may make them negative
    g, V = linalg.psd_eigh(H)
    assert (g >= 0).all()
    assert_close(V @ torch.diag(g) @ V.T, H, 1e-12, "reconstruction")
    H[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        linalg.psd_eigh(H)


def test_too_large_subnetwork_is_refused_before_allocation():
    model = torch.nn.Linear(2000, 1000)  # D ~ 2M
    with pytest.raises(
        ValueError, match=r"largest subnetwork that fits is S=(\d+)"
    ) as e:
        DenseSubnetLaplace(
            model, "regression", torch.arange(100_000), memory_budget="1GB"
        )
    s_max = int(re.search(r"fits is S=(\d+)", str(e.value)).group(1))
    # the curvature alone (1 matrix) decides at construction
    assert (
        dense_posterior_bytes(s_max, 8, 1)
        <= 10**9
        < dense_posterior_bytes(s_max + 1, 8, 1)
    )
    assert largest_subnet(10**9, 8, 1) == s_max


def test_curvature_fits_but_factorisation_does_not():
    """H fits the budget: warn at construction, fit works, the posterior refuses."""
    model = torch.nn.Linear(30, 20)  # D = 620
    budget = dense_posterior_bytes(300, 8, 1) + 1  # H of S=300 fits, factorisation not
    with pytest.warns(
        UserWarning, match=r"fit\(\) works, the posterior will raise"
    ) as rec:
        la = DenseSubnetLaplace(
            model, "regression", torch.arange(300), memory_budget=budget
        )
    assert rec[0].filename == __file__  # points at the user's call
    X, y = torch.randn(8, 30), torch.randn(8, 20)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=4))
    s_fit = largest_subnet(budget, 8)
    with pytest.raises(ValueError, match=rf"largest subnetwork that fits is S={s_fit}"):
        la.log_marginal_likelihood()
    la.prior_precision = torch.ones(300)  # Cholesky path is checked too
    with pytest.raises(ValueError, match="Cholesky factor"):
        _ = la.posterior_covariance


@pytest.mark.parametrize(
    "value, expected", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), (1000, 1000)]
)
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


def test_parse_bytes_errors():
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes("four gigs")
    with pytest.raises(TypeError, match="memory_budget"):
        parse_bytes([4])


def _rank(rank: int, world: int, port: int, data, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = mlp()
    X, y = data
    shard = TensorDataset(X[rank::world], y[rank::world])
    la = DenseSubnetLaplace(model, "classification", torch.arange(20, 60))
    la.fit(DataLoader(shard, batch_size=4))
    if rank == 0:
        torch.save(
            {"H": la.H, "lml": la.log_marginal_likelihood().detach(), "n": la.n_data},
            out,
        )
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    torch.manual_seed(1)
    X, y = torch.randn(22, 3), torch.randint(2, (22,))
    out = str(tmp_path / "rank0.pt")
    port = 29500 + os.getpid() % 1000
    mp.start_processes(
        _rank, args=(2, port, (X, y), out), nprocs=2, start_method="spawn"
    )
    dist = torch.load(out)
    torch.manual_seed(0)
    la = DenseSubnetLaplace(mlp(), "classification", torch.arange(20, 60))
    la.fit(DataLoader(TensorDataset(X, y), batch_size=5))
    assert dist["n"] == 22
    assert_close(dist["H"], la.H, 1e-10, "all-reduced H")
    assert_close(dist["lml"], la.log_marginal_likelihood(), 1e-10, "marglik")


def _not_positive_definite(prior):
    """S = D = 74 on 3 points (rank(H) <= 6), then H shifted by -1e-3 I: what float32
    round-off does to a rank-deficient GGN, larger than the prior precision."""
    la = DenseSubnetLaplace(mlp(), "regression", torch.arange(74), prior_precision=1.0)
    la.fit(loader("regression", n=3))
    la.H = la.H - 1e-3 * torch.eye(74)
    la.prior_precision = prior  # resets the cached factors
    assert torch.linalg.cholesky_ex(la.posterior_precision)[1].item() > 0
    return la


def test_not_positive_definite_scalar_prior_falls_back_to_clipped_eig():
    la = _not_positive_definite(1e-4)
    with pytest.warns(RuntimeWarning, match="not numerically positive definite"):
        cov = la.posterior_covariance
    g, V = torch.linalg.eigh(la.H)
    w = 1 / (la._H_factor * g.clamp_min(0) + 1e-4)
    assert_close(cov, V @ torch.diag(w) @ V.T, what="covariance")
    X = torch.randn(4, 3)
    Js = la.backend.jacobians(X)[0][..., la.subnetwork_indices]
    assert_close(
        la._glm_predictive_distribution(X)[1],
        torch.einsum("bcs,st,bkt->bck", Js, V @ torch.diag(w) @ V.T, Js),
        what="GLM variance",
    )
    assert_close(
        la.log_det_posterior_precision, -w.log().sum(), what="log det (eigvalsh)"
    )


def test_not_positive_definite_layerwise_prior_floors_at_smallest_prior():
    prior = torch.tensor([1e-4, 2e-4, 3e-4, 4e-4])
    la = _not_positive_definite(prior)
    assert la.prior_structure == "layerwise"
    P = la.posterior_precision
    e, V = torch.linalg.eigh(P)
    assert e.min() < 0
    e = e.clamp_min(1e-4)
    with pytest.warns(RuntimeWarning, match="eigenvalues >= min prior"):
        logdet = la.log_det_posterior_precision
    assert_close(logdet, e.log().sum(), what="log det")
    cov = la.posterior_covariance  # the fallback factor is cached: no new warning
    assert_close(cov, V @ torch.diag(1 / e) @ V.T, what="covariance")
    assert torch.isfinite(la.log_marginal_likelihood())


def _mkl_nan_matrix() -> torch.Tensor:
    """A float32 GGN (S = 300, 82 zero rows) from the prior trade-off example on
    which MKL's ``ssyevd`` returned 2 NaN eigenvalues without an error."""
    d = torch.load(
        os.path.join(os.path.dirname(__file__), "data", "mkl_nan_eigvalsh.pt")
    )
    H = torch.zeros(d["size"], d["size"], dtype=d["block"].dtype)
    i = d["index"].long()
    H[i[:, None], i] = d["block"]
    return H


def test_eigendecomposition_of_a_lapack_nan_case_is_finite_and_right():
    """Regression: the marginal likelihood tuning of this curvature diverged to a
    NaN prior precision in CI. Compared with float64 eigh at float32 accuracy."""
    H = _mkl_nan_matrix()
    ref = torch.linalg.eigvalsh(H.double()).clamp_min(0)
    g = linalg.psd_eigvalsh(H)
    e, V = linalg.psd_eigh(H)
    scale = float(ref.max())
    assert torch.isfinite(g).all() and torch.isfinite(e).all()
    assert (g.double() - ref).abs().max() <= 1e-5 * scale
    assert (e.double() - ref).abs().max() <= 1e-5 * scale
    assert ((V * e) @ V.T - H).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("failure", ["nan", "raise", "garbage"])
def test_failed_lapack_eigendecomposition_is_retried_in_float64(monkeypatch, failure):
    """A float32 LAPACK call that raises, returns NaN, or returns eigenvalues
    inconsistent with the matrix is redone in float64; the marginal likelihood
    and its prior tuning then match a float64 posterior."""
    torch.manual_seed(0)
    la = DenseSubnetLaplace(mlp(), "classification", torch.randperm(74)[:40])
    la.fit(loader("classification"))
    la.H = la.H.float()
    ref = torch.linalg.eigvalsh(la.H.double()).clamp_min(0)
    real = {"eigh": torch.linalg.eigh, "eigvalsh": torch.linalg.eigvalsh}

    def broken(name):
        def fn(A):
            if A.dtype != torch.float32:
                return real[name](A)
            if failure == "raise":
                raise torch.linalg.LinAlgError("planted failure")
            out = real[name](A)
            e = out[0] if name == "eigh" else out
            e = e.clone()
            e[0] = float("nan") if failure == "nan" else e[0] + e.abs().max()
            return (e, out[1]) if name == "eigh" else e

        return fn

    monkeypatch.setattr(torch.linalg, "eigh", broken("eigh"))
    monkeypatch.setattr(torch.linalg, "eigvalsh", broken("eigvalsh"))
    g = linalg.psd_eigvalsh(la.H)
    e, _ = linalg.psd_eigh(la.H)
    assert_close(g, ref, rtol=1e-5, what="eigvalsh")
    assert_close(e, ref, rtol=1e-5, what="eigh")
    la.optimize_prior_precision(method="marglik")
    assert torch.isfinite(la.prior_precision).all()


def test_float64_eigendecomposition_failure_is_an_error(monkeypatch):
    H = torch.eye(4, dtype=torch.float64)
    monkeypatch.setattr(
        torch.linalg,
        "eigvalsh",
        lambda A: torch.full((4,), float("nan"), dtype=A.dtype),
    )
    with pytest.raises(torch.linalg.LinAlgError, match="4x4 float64 curvature"):
        linalg.psd_eigvalsh(H)
