r"""How much of the full network's predictive uncertainty a subnetwork keeps.

Index conventions: ``n`` test inputs, ``b`` batch, ``c``/``k`` outputs, ``p`` all
(trainable) parameters, ``s`` subnetwork parameters.

With the GGN :math:`H` over all D weights, the same scalar prior :math:`\lambda`
and observation noise :math:`\sigma` for both, the full linearised Laplace has
precision :math:`P = H/\sigma^2 + \lambda I` and the subnetwork posterior keeps
the other weights at the MAP, i.e. conditions on them:
:math:`\Sigma_S = (P_{SS})^{-1}`. Per test input the two GLM predictives are
:math:`\mathcal N(f(x), J_S \Sigma_S J_S^\top)` and
:math:`\mathcal N(f(x), J P^{-1} J^\top)` (the first never exceeds the second in
the Loewner order), and

.. math:: \text{share}(S) = \frac{\sum_x \operatorname{tr} J_S(x)\,\Sigma_S J_S(x)^\top}
                                {\sum_x \operatorname{tr} J(x)\, P^{-1} J(x)^\top}
          \in [0, 1].

:class:`FullNetworkReference` computes the denominator exactly (H over all D from
this package's own Jacobians, never laplace's full-Jacobian route), the
2-Wasserstein distance between the two predictives per input, and the share of
any subnetwork from one H. :func:`estimate_full_variance` estimates the
denominator matrix-free where the D x D GGN does not fit: Hutchinson probes in
output space, each solved with conjugate gradients on GGN-vector products
(``torch.func`` jvp / vjp), with a standard error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import iter_inputs, split_batch
from laplace_subnet_ext.numerics.curvature import output_hessian
from laplace_subnet_ext.numerics.evidence import argmax_scalar_evidence
from laplace_subnet_ext.numerics.memory import available_bytes

__all__ = [
    "CaptureResult",
    "FullNetworkReference",
    "estimate_full_variance",
    "gaussian_w2",
]

#: D x D matrices the exact reference holds at once (H and its factor)
_REFERENCE_MATRICES = 2


@dataclass
class CaptureResult:
    """What a subnetwork keeps of the full network's GLM predictive.

    Attributes
    ----------
    share : float
        :math:`\\sum_x \\operatorname{tr}\\,\\text{subnetwork cov} / \\sum_x
        \\operatorname{tr}\\,\\text{full cov}`.
    wasserstein : float
        Mean over test inputs of the 2-Wasserstein distance between the
        subnetwork's and the full network's predictive Gaussians (same mean).
    wasserstein_map : float
        The same for the MAP (a point mass at :math:`f(x)`):
        :math:`\\sqrt{\\operatorname{tr}\\,\\text{full cov}}` averaged; the
        subnetwork's distance is between 0 and this.
    n_subnet : int
    share_centered, wasserstein_centered : float or None
        Classification: the same for the centred logits :math:`(I - \\mathbf 1
        \\mathbf 1^\\top/c) f`, i.e. without the variance along
        :math:`\\mathbf 1`, which the softmax ignores and the GGN has no
        curvature in (the prior alone sets it, :math:`\\propto 1/\\lambda`). It
        is the part of the logit variance that can change a prediction.
        ``None`` for regression.
    region_shares : dict
        ``region name -> share`` over that region's test inputs only (centred
        logits for classification), for the ``regions`` given to
        :meth:`FullNetworkReference.evaluate`; e.g. the in-between region of a
        regression with a gap in its inputs.
    """

    share: float
    wasserstein: float
    wasserstein_map: float
    n_subnet: int
    share_centered: float | None = None
    wasserstein_centered: float | None = None
    region_shares: dict[str, float] = field(default_factory=dict)


def _check_fits(D: int, device: torch.device) -> None:
    need = _REFERENCE_MATRICES * D * D * 8
    if need > available_bytes(device):
        raise ValueError(
            f"the exact full-network reference needs {need / 1e9:.2f} GB "
            f"({_REFERENCE_MATRICES} float64 matrices of D x D, D={D}), more than is "
            "free; use estimate_full_variance(...) for the denominator instead."
        )


def gaussian_w2(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``(n,)`` 2-Wasserstein distances between :math:`\mathcal N(m, A_n)` and
    :math:`\mathcal N(m, B_n)`: :math:`\big(\operatorname{tr}A + \operatorname{tr}B
    - 2\operatorname{tr}(A^{1/2} B A^{1/2})^{1/2}\big)^{1/2}`; ``A``, ``B`` ``(n, c, k)``."""
    ea, va = torch.linalg.eigh(A)
    ra = (va * ea.clamp_min(0).sqrt().unsqueeze(-2)) @ va.mT
    cross = torch.linalg.eigvalsh(ra @ B @ ra).clamp_min(0).sqrt().sum(-1)
    tr = A.diagonal(dim1=-2, dim2=-1).sum(-1) + B.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (tr - 2 * cross).clamp_min(0).sqrt()


class FullNetworkReference:
    r"""The exact full-network linearised Laplace, to measure subnetworks against.

    Holds the GGN :math:`H` ``(p, p)`` over all trainable weights (float64, from
    :class:`~laplace_subnet_ext.jacobians.SubnetJacobians` with S = D) and the
    test Jacobians ``(n, c, p)``; :meth:`evaluate` scores any subnetwork from them.

    Parameters
    ----------
    model : torch.nn.Module
        At its MAP; the trainable parameters are the D weights.
    likelihood : {"classification", "regression"}
    train_loader : iterable of batches
        The data of the GGN.
    test_inputs : torch.Tensor, dict or iterable of batches
        Where the predictives are compared.
    prior_precision : float or "marglik", default="marglik"
        The scalar prior of both posteriors; ``"marglik"`` maximises the
        full network's evidence over :math:`\lambda` (a log grid, from the
        eigenvalues of H; the data term does not depend on :math:`\lambda`).
    sigma_noise : float, default=1

    Raises
    ------
    ValueError
        If two D x D float64 matrices do not fit in free memory (use
        :func:`estimate_full_variance`), or ``prior_precision`` is not positive.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        train_loader: Iterable,
        test_inputs: Any,
        *,
        prior_precision: float | str = "marglik",
        sigma_noise: float = 1.0,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
    ) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        D = sum(p.numel() for p in params)
        device = params[0].device
        _check_fits(D, device)
        layout = SubnetLayout(model, torch.arange(D, device=device))
        jac = SubnetJacobians(model, layout, dict_key_x=dict_key_x)
        H = torch.zeros(D, D, dtype=torch.float64, device=device)
        for batch in train_loader:
            X, _ = split_batch(batch, dict_key_y)
            J, f = jac(X)
            J = J.double()
            Lam = output_hessian(f.double(), likelihood)
            LJ = J if Lam is None else Lam @ J
            H.addmm_(J.reshape(-1, D).T, LJ.reshape(-1, D))
        self.H = (H + H.T) / 2
        self.J = torch.cat(
            [jac(X)[0].double() for X in iter_inputs(test_inputs, dict_key_y)]
        )
        self.sigma_noise = float(sigma_noise)
        self.likelihood = likelihood
        theta = torch.cat([p.detach().flatten() for p in params]).double()
        if prior_precision == "marglik":
            prior_precision = self._marglik_prior(theta)
        if not float(prior_precision) > 0:
            raise ValueError(
                f"prior_precision must be a positive float or 'marglik'; got "
                f"{prior_precision!r}."
            )
        self.prior_precision = float(prior_precision)
        self.full_covariance = self.predictive_covariance(None)

    def _marglik_prior(self, theta: torch.Tensor) -> float:
        """The scalar prior maximising the full network's Laplace evidence
        (:func:`~laplace_subnet_ext.numerics.evidence.argmax_scalar_evidence` on
        the eigenvalues of :math:`H/\sigma^2`)."""
        g = torch.linalg.eigvalsh(self.H).clamp_min(0)
        sc = float(theta.pow(2).sum())
        return argmax_scalar_evidence(g, 1.0 / self.sigma_noise**2, sc)

    def precision(self) -> torch.Tensor:
        """``(p, p)`` :math:`P = H/\\sigma^2 + \\lambda I` (a new tensor)."""
        P = self.H / self.sigma_noise**2
        P.diagonal().add_(self.prior_precision)
        return P

    def predictive_covariance(self, indices: Sequence[int] | None) -> torch.Tensor:
        """``(n, c, c)`` GLM predictive covariance of the subnetwork ``indices``
        (``None``: all D weights), the others held at the MAP."""
        if indices is None:
            P, J = self.precision(), self.J
        else:
            idx = torch.as_tensor(indices, device=self.H.device).long()
            P = self.H[idx][:, idx] / self.sigma_noise**2
            P.diagonal().add_(self.prior_precision)
            J = self.J[..., idx]
        L = torch.linalg.cholesky(P)
        n, c, s = J.shape
        W = torch.linalg.solve_triangular(L, J.reshape(-1, s).T, upper=False)
        W = W.T.reshape(n, c, s)
        return W @ W.mT

    def evaluate(
        self,
        indices: Sequence[int],
        regions: Mapping[str, torch.Tensor] | None = None,
    ) -> CaptureResult:
        """Share of the full predictive variance and Wasserstein distance of
        ``indices``; with ``regions`` (``name -> (m,)`` boolean mask or indices of
        the test inputs) also the share within each region."""
        sub = self.predictive_covariance(indices)
        full = self.full_covariance
        n = full.shape[0]

        def tr(A):
            return A.diagonal(dim1=-2, dim2=-1).sum(-1)

        res = CaptureResult(
            share=float(tr(sub).sum() / tr(full).sum()),
            wasserstein=float(gaussian_w2(sub, full).mean()),
            wasserstein_map=float(tr(full).clamp_min(0).sqrt().mean()),
            n_subnet=len(indices),
        )
        if self.likelihood != "regression":
            c = full.shape[-1]
            C = torch.eye(c, dtype=full.dtype, device=full.device) - 1.0 / c
            sub_c, full_c = C @ sub @ C, C @ full @ C
            res.share_centered = float(tr(sub_c).sum() / tr(full_c).sum())
            res.wasserstein_centered = float(gaussian_w2(sub_c, full_c).mean())
            sub, full = sub_c, full_c
        for name, where in dict(regions or {}).items():
            where = torch.as_tensor(where, device=full.device)
            if where.dtype == torch.bool and where.shape != (n,):
                raise ValueError(
                    f"regions[{name!r}] must be a boolean mask of the {n} test "
                    f"inputs or their indices; got shape {tuple(where.shape)}."
                )
            if where.numel() == 0 or (where.dtype == torch.bool and not where.any()):
                raise ValueError(f"regions[{name!r}] selects no test input.")
            res.region_shares[name] = float(
                tr(sub[where]).sum() / tr(full[where]).sum()
            )
        return res


def _functional(model: nn.Module):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)

    def f(X):
        return lambda *t: functional_call(model, dict(zip(names, t)), (X,))

    return theta, f


def ggn_matvec(
    model: nn.Module,
    likelihood: str,
    train_loader: Iterable,
    v: tuple[torch.Tensor, ...],
    dict_key_y: str = "labels",
) -> tuple[torch.Tensor, ...]:
    r""":math:`H v = \sum_b J_b^\top \Lambda_b J_b v` without forming H (one jvp and
    one vjp per batch); ``v`` is a tuple shaped like the trainable parameters."""
    theta, f = _functional(model)
    out = tuple(torch.zeros_like(t) for t in theta)
    for batch in train_loader:
        X, _ = split_batch(batch, dict_key_y)
        fx, Jv = jvp(f(X), theta, v)
        Lam = output_hessian(fx.detach(), likelihood)
        u = Jv if Lam is None else (Lam @ Jv.unsqueeze(-1)).squeeze(-1)
        _, pullback = vjp(f(X), *theta)
        out = tuple(a + b for a, b in zip(out, pullback(u)))
    return out


def _cg(matvec, b: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    stop = tol**2 * (b @ b)
    for _ in range(max_iter):
        if rr <= stop:
            break
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def estimate_full_variance(
    model: nn.Module,
    likelihood: str,
    train_loader: Iterable,
    test_inputs: torch.Tensor,
    *,
    prior_precision: float,
    sigma_noise: float = 1.0,
    n_probes: int | None = 32,
    cg_tol: float = 1e-8,
    max_iter: int = 1000,
    seed: int = 0,
    dict_key_y: str = "labels",
) -> tuple[float, float]:
    r"""Matrix-free estimate of :math:`\sum_x \operatorname{tr} J(x) P^{-1} J(x)^\top`.

    Each probe draws Rademacher :math:`z` ``(n, c)``, forms
    :math:`v = \sum_x J(x)^\top z_x` (one vjp), solves :math:`P u = v` by conjugate
    gradients on GGN-vector products (:func:`ggn_matvec`) and contributes
    :math:`v^\top u`; the mean over probes is unbiased. ``n_probes=None`` uses the
    ``n c`` unit vectors instead (exact up to the CG tolerance; for validation).

    Returns
    -------
    (estimate, standard_error) : tuple of float
        The standard error is 0 for ``n_probes=None``.
    """
    theta, f = _functional(model)
    shapes = [t.shape for t in theta]
    sizes = [t.numel() for t in theta]

    def unflat(x):
        return tuple(t.reshape(s) for t, s in zip(x.split(sizes), shapes))

    def matvec(x):
        Hx = torch.cat(
            [
                t.flatten()
                for t in ggn_matvec(
                    model, likelihood, train_loader, unflat(x), dict_key_y
                )
            ]
        )
        return Hx / sigma_noise**2 + prior_precision * x

    fx, pullback = vjp(f(test_inputs), *theta)
    n, c = fx.shape
    if n_probes is None:
        probes = torch.eye(n * c, dtype=fx.dtype, device=fx.device).reshape(-1, n, c)
    else:
        g = torch.Generator().manual_seed(seed)
        probes = (torch.randint(0, 2, (n_probes, n, c), generator=g) * 2 - 1).to(fx)
    values = []
    for z in probes:
        v = torch.cat([t.flatten() for t in pullback(z)])
        u = _cg(matvec, v, cg_tol, max_iter)
        values.append(float(v @ u))
    vals = torch.tensor(values, dtype=torch.float64)
    if n_probes is None:
        return float(vals.sum()), 0.0
    se = float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(vals.mean()), se
