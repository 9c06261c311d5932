"""`DensePrecision`: every method against dense float64 references; its caches
follow H, h and the prior; the posterior delegates to it."""

from __future__ import annotations

import pytest
import torch

from laplace_subnet_ext.posterior.precision import DensePrecision
from tests.cases import assert_close, loader, make


def _problem(S: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(S, 3 * S, generator=g, dtype=torch.float64)
    H = A @ A.T / S  # PSD, well conditioned after the prior
    prior = torch.rand(S, generator=g, dtype=torch.float64) + 0.5
    return H, prior


def _reference(H, h, prior):
    P = h * H + torch.diag(prior)
    return P, torch.linalg.inv(P)


@pytest.mark.parametrize("scalar", [False, True], ids=["diag", "scalar"])
@pytest.mark.parametrize("eig", [False, True], ids=["cholesky", "eigen"])
def test_every_method_equals_the_dense_reference(scalar, eig):
    H, prior = _problem()
    if scalar:
        prior = torch.full_like(prior, 0.7)
    h = torch.tensor(1.3, dtype=torch.float64)
    p = DensePrecision(H.clone())
    p.set_prior(h, prior, prior[0] if scalar else None)
    if eig:
        p.eigh()
    if eig and not scalar:
        assert not p.uses_eigen  # eigenvectors serve a scalar prior only
    P, Sigma = _reference(H, h, prior)
    assert_close(p.matrix(), P)
    assert_close(p.covariance(), Sigma)
    C = p.scale()
    assert_close(C @ C.T, Sigma)
    assert_close(p.log_det(), torch.linalg.slogdet(P)[1])
    if scalar:
        assert_close(p.log_det_eig(), torch.linalg.slogdet(P)[1])
        ratio = torch.linalg.slogdet(P)[1] - prior.log().sum()
        assert_close(p.log_det_ratio_eig(), ratio)
    Js = torch.randn(4, 3, 12, dtype=torch.float64)
    ref = torch.einsum("bcs,st,bkt->bck", Js, Sigma, Js)
    assert_close(p.functional_variance(Js), ref)
    flat = Js.reshape(12, 12)
    assert_close(p.functional_covariance(Js), flat @ Sigma @ flat.T)
    d = torch.randn(12, dtype=torch.float64)
    assert_close(p.square_norm(d), d @ P @ d)
    assert_close(
        p.square_norm(torch.stack([d, 2 * d])), torch.stack([d @ P @ d, 4 * d @ P @ d])
    )
    z = torch.randn(
        20000, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    draws = p.sample(20000, generator=torch.Generator().manual_seed(1))
    # exact by construction: draws = T z with T T^T = Sigma, T = L^{-T} or C
    T = torch.linalg.lstsq(z, draws).solution.T
    assert_close(T @ T.T, Sigma, rtol=1e-8)


def test_log_det_gradients_equal_autograd_of_slogdet():
    H, prior = _problem()
    h = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    prior = prior.clone().requires_grad_(True)
    p = DensePrecision(H.clone())
    p.set_prior(h, prior)
    g_ours = torch.autograd.grad(p.log_det(), (prior, h))
    ref = torch.linalg.slogdet(h * H + torch.diag(prior))[1]
    g_ref = torch.autograd.grad(ref, (prior, h))
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, rtol=1e-10)


def test_caches_follow_H_h_and_prior():
    """A curvature edited in place, a new h or a new prior is never answered from a
    stale factor or spectrum; an unchanged state reuses them."""
    H, prior = _problem()
    p = DensePrecision(H)
    p.set_prior(1.0, prior)
    buf = p.covariance(copy=False)
    p.set_prior(1.0, prior.clone())  # same values: same buffer
    assert p.covariance(copy=False) is buf
    g = p._eigvalsh()  # the caches themselves (copies are handed out)
    p.slq(4, 6, 0)
    nodes = p._slq[1]
    p.slq(4, 6, 0)
    assert p._eigvalsh() is g and p._slq[1] is nodes
    assert p.eigvalsh() is not g and torch.equal(p.eigvalsh(), g)
    H.add_(torch.eye(12, dtype=H.dtype))  # as fit() adds into H
    assert p.buffer() is None
    assert_close(p.covariance(), _reference(H, 1.0, prior)[1])
    assert_close(p.eigvalsh(), torch.linalg.eigvalsh(H))
    p.slq(4, 6, 0)
    assert p._slq[1] is not nodes
    p.set_prior(2.0, prior)
    assert_close(p.covariance(), _reference(H, 2.0, prior)[1])
    p.set_prior(2.0, prior * 3)
    assert_close(p.covariance(), _reference(H, 2.0, prior * 3)[1])
    p.invalidate()
    assert p.buffer() is None and not p.has_eigh


def test_copies_are_fresh_and_the_buffer_is_shared_on_request():
    H, prior = _problem()
    p = DensePrecision(H)
    p.set_prior(1.0, prior)
    cov = p.covariance()
    sqrt = p.scale()
    keep = cov.clone(), sqrt.clone()
    p.sample(3)  # needs the Cholesky factor again: the buffer is refactorised
    p.whiten(torch.randn(2, 1, 12, dtype=torch.float64))
    assert torch.equal(cov, keep[0]) and torch.equal(sqrt, keep[1])
    assert p.covariance(copy=False).data_ptr() == p.buffer().data_ptr()


def test_bad_input_is_refused_with_the_rule():
    with pytest.raises(ValueError, match="square"):
        DensePrecision(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="float32 or float64"):
        DensePrecision(torch.zeros(3, 3, dtype=torch.float16))
    p = DensePrecision(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"prior_diag must have shape \(3,\)"):
        p.set_prior(1.0, torch.ones(4, dtype=torch.float64))
    p.set_prior(1.0, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="scalar prior"):
        p.log_det_eig()


def test_posterior_delegates_to_its_precision():
    """``la.precision`` is the one owner: laplace's invalidation frees its factor;
    a new H builds a new one; prior / noise changes reach it."""
    dl = loader("classification")
    la = make(prior_precision=0.5)
    la.fit(dl)
    p = la.precision
    assert p.H is la.H
    _ = la.posterior_covariance
    assert la._posterior_scale is not None
    la._posterior_scale = None  # what laplace's setters do
    assert p.buffer() is None
    with pytest.raises(AttributeError, match="only None"):
        la._posterior_scale = torch.eye(2)
    la.prior_precision = 2.0
    la.sigma_noise = 1.0
    assert_close(la.posterior_covariance, torch.linalg.inv(la.H + 2.0 * torch.eye(20)))
    la.H = la.H.clone()
    assert la.precision is not p
    la.fit(dl, override=True)
    assert_close(la.posterior_covariance, torch.linalg.inv(la.H + 2.0 * torch.eye(20)))
