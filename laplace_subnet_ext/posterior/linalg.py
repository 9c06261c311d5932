r"""Pure linear algebra of the dense subnetwork posterior.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

With GGN eigendecomposition :math:`G_S = V \operatorname{diag}(g) V^\top` and a
scalar prior :math:`\lambda`, the posterior precision is
:math:`P = h G_S + \lambda I` with :math:`h = 1/(\sigma^2 T)`, so
:math:`\log\det P = \sum_i \log(h g_i + \lambda)` and
:math:`P^{-1} = V \operatorname{diag}(1/(h g + \lambda)) V^\top`: after one
:math:`O(S^3)` decomposition, every :math:`(\lambda, \sigma)` costs :math:`O(S)`.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_finite",
    "psd_eigh",
    "psd_eigvalsh",
    "eig_logdet",
    "eig_scale",
    "eig_functional_variance",
    "chol_functional_variance",
    "floored_eigh",
]


def check_finite(H: torch.Tensor, name: str = "curvature") -> None:
    """Raise if ``H`` holds NaN or inf."""
    if not torch.isfinite(H).all():
        bad = (~torch.isfinite(H)).sum().item()
        raise ValueError(
            f"{name} must be finite; got {bad} NaN/inf entries. Check the model "
            "outputs and the data for NaN/inf, or use curvature_dtype=torch.float64."
        )


def psd_eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric PSD matrix, eigenvalues clipped at 0.

    Parameters
    ----------
    H : torch.Tensor
        ``(s, s)`` symmetric positive semi-definite (up to round-off).

    Returns
    -------
    g : torch.Tensor
        ``(s,)`` eigenvalues, ``>= 0`` (tiny negative round-off set to 0).
        If LAPACK fails to converge in the input dtype, the decomposition is
        retried in float64 and cast back.
    V : torch.Tensor
        ``(s, s)`` orthonormal eigenvectors (columns).
    """
    check_finite(H)
    g, V = _eigh(H)
    return g.clamp_min(0.0), V


def _eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` (reads the lower triangle only: no symmetrised copy),
    retried in float64 and cast back if LAPACK fails to converge: its
    divide-and-conquer can fail on float32 GGNs with many zero eigenvalues."""
    try:
        return torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:
        e, V = torch.linalg.eigh(A.double())
        return e.to(A.dtype), V.to(A.dtype)


def psd_eigvalsh(H: torch.Tensor) -> torch.Tensor:
    """``(s,)`` eigenvalues of a symmetric PSD matrix, clipped at 0 (no eigenvectors)."""
    check_finite(H)
    try:
        g = torch.linalg.eigvalsh(H)
    except torch.linalg.LinAlgError:
        g = torch.linalg.eigvalsh(H.double()).to(H.dtype)
    return g.clamp_min(0.0)


def eig_logdet(
    g: torch.Tensor, h_factor: torch.Tensor, prior_prec: torch.Tensor
) -> torch.Tensor:
    r""":math:`\log\det(h G + \lambda I) = \sum_i \log(h g_i + \lambda)`."""
    return torch.log(h_factor * g + prior_prec).sum()


def eig_scale(
    g: torch.Tensor, V: torch.Tensor, h_factor: torch.Tensor, prior_prec: torch.Tensor
) -> torch.Tensor:
    r"""A square root :math:`L` of the covariance, :math:`L L^\top = P^{-1}`: ``(s, s)``."""
    return V * torch.rsqrt(h_factor * g + prior_prec)


def eig_functional_variance(
    JV: torch.Tensor, g: torch.Tensor, h_factor: torch.Tensor, prior_prec: torch.Tensor
) -> torch.Tensor:
    r"""GLM output covariance from projected Jacobians.

    Parameters
    ----------
    JV : torch.Tensor
        ``(b, c, s)`` Jacobians projected on the eigenvectors, :math:`J_S V`.

    Returns
    -------
    f_var : torch.Tensor
        ``(b, c, k)``, :math:`J_S P^{-1} J_S^\top`.
    """
    w = 1.0 / (h_factor * g + prior_prec)
    return torch.einsum("bcs,s,bks->bck", JV, w, JV)


def chol_functional_variance(Js: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r""":math:`(J_S L)(J_S L)^\top` for a covariance square root ``scale`` ``(s, t)``."""
    JL = Js @ scale
    return JL @ JL.transpose(-1, -2)


def floored_eigh(
    P: torch.Tensor, floor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eigendecomposition of a posterior precision :math:`P = hG + P_0` whose
    Cholesky factorisation failed to round-off, eigenvalues raised to ``floor``.

    Exactly, :math:`P \succeq P_0 \succeq \min(P_0) I`, so every eigenvalue is at
    least the smallest prior precision; eigenvalues below it are round-off of the
    PSD curvature (typically float32 with a small prior) and are set to it.

    Returns
    -------
    e : torch.Tensor
        ``(s,)`` eigenvalues, ``>= floor``.
    V : torch.Tensor
        ``(s, s)`` orthonormal eigenvectors.
    """
    check_finite(P, "posterior precision")
    e, V = _eigh(P)
    return torch.maximum(e, floor.to(e.dtype)), V
