r"""Stochastic Lanczos quadrature: a spectral density of H from block products.

Index conventions: ``s``/``t`` subnetwork parameters, ``m`` probes, ``k`` Lanczos
steps.

For a symmetric PSD :math:`H` and a probe :math:`z` with :math:`E[zz^\top] = I`,
:math:`k` Lanczos steps from :math:`z/\|z\|` give a tridiagonal
:math:`T = U \operatorname{diag}(\theta) U^\top`; the Gauss quadrature
:math:`z^\top f(H) z \approx \|z\|^2 \sum_i U_{0i}^2 f(\theta_i)` is exact for
polynomials of degree :math:`2k-1` (Golub & Meurant; Ubaru, Chen & Saad, SIAM
J. Matrix Anal. Appl. 2017). Averaged over :math:`m` Rademacher probes it estimates
:math:`\operatorname{tr} f(H) = \sum_i f(g_i)` for *every* :math:`f` at once, so
the nodes :math:`\theta` and weights :math:`w = \|z\|^2 U_{0\cdot}^2 / m` replace
the :math:`S` eigenvalues in the scalar-prior marginal likelihood:
:math:`\log\det(hH + \lambda I) \approx \sum_j w_j \log(h\theta_j + \lambda)`,
differentiable in :math:`(\lambda, h)`.

Cost: :math:`k` products of :math:`H` with an ``(s, m)`` block (:math:`2 S^2 m k`
flops, H read :math:`k` times) and :math:`O(S m k)` memory for the Lanczos basis
(float64, full reorthogonalisation). No :math:`S \times S` matrix besides :math:`H`.
"""

from __future__ import annotations

import torch

__all__ = ["lanczos_quadrature"]


def lanczos_quadrature(
    H: torch.Tensor,
    n_probes: int = 32,
    n_steps: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Quadrature nodes and weights of the spectral density of ``H``.

    Parameters
    ----------
    H : torch.Tensor
        ``(s, t)`` symmetric positive semi-definite.
    n_probes : int, default=32
        Rademacher probes :math:`m`, run as one block.
    n_steps : int, default=64
        Lanczos steps :math:`k` per probe (capped at S); full reorthogonalisation.
    seed : int, default=0
        Seed of the probes (a fixed seed makes the estimate deterministic).

    Returns
    -------
    nodes : torch.Tensor
        ``(m * k,)`` float64 Ritz values, clipped at 0.
    weights : torch.Tensor
        ``(m * k,)`` float64, summing to S (the trace of :math:`f = 1`).
    """
    if n_probes < 1 or n_steps < 1:
        raise ValueError(
            f"n_probes and n_steps must be >= 1; got {n_probes} and {n_steps}."
        )
    S = H.shape[0]
    k = min(n_steps, S)
    g = torch.Generator(device="cpu").manual_seed(seed)
    Z = torch.randint(0, 2, (n_probes, S), generator=g).to(torch.float64) * 2 - 1
    Z = Z.to(H.device)
    # basis (m, k, s): per probe contiguous, so reorthogonalisation is two bmm's
    Q = torch.empty(n_probes, k, S, dtype=torch.float64, device=H.device)
    alpha = torch.zeros(k, n_probes, dtype=torch.float64, device=H.device)
    beta = torch.zeros(k, n_probes, dtype=torch.float64, device=H.device)
    q = Z / Z.norm(dim=1, keepdim=True)  # (m, s)
    steps = k
    for j in range(k):
        Q[:, j] = q
        w = (q.to(H.dtype) @ H).to(torch.float64)  # H symmetric: (H q)^T = q^T H
        alpha[j] = (q * w).sum(1)
        w = w - q * alpha[j, :, None]
        if j > 0:
            w = w - Q[:, j - 1] * beta[j - 1, :, None]
        B = Q[:, : j + 1]  # (m, j+1, s)
        for _ in range(2):  # full reorthogonalisation (twice is enough)
            w = w - torch.bmm(B.transpose(1, 2), torch.bmm(B, w[:, :, None]))[..., 0]
        b = w.norm(dim=1)
        if j == k - 1:
            break
        if bool((b <= 1e-10 * alpha[: j + 1].abs().amax(0).clamp_min(1e-300)).any()):
            steps = j + 1  # a Krylov space is exhausted: its quadrature is exact
            break
        beta[j] = b
        q = w / b[:, None]
    T = torch.diag_embed(alpha[:steps].T)
    off = beta[: steps - 1].T
    T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, U = torch.linalg.eigh(T)  # (m, k), (m, k, k)
    weights = U[:, 0, :].square() * S / n_probes  # ||z||^2 = S for Rademacher
    return theta.clamp_min(0.0).flatten(), weights.flatten()
