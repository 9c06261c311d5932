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

from typing import Any

import torch

from laplace_subnet_ext.numerics.memory import available_bytes

__all__ = [
    "check_finite",
    "psd_eigh",
    "psd_eigvalsh",
    "eig_logdet",
    "eig_scale",
    "eig_functional_variance",
    "floored_eigh",
]


def check_finite(H: torch.Tensor, name: str = "curvature") -> None:
    """Raise if ``H`` holds NaN or inf."""
    bad = sum(int((~torch.isfinite(B)).sum()) for B in _row_blocks(H))
    if bad:
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
    validated and, if LAPACK fails, retried in float64 (see :func:`_checked_eig`)."""
    return _checked_eig(A, vectors=True)


def psd_eigvalsh(H: torch.Tensor) -> torch.Tensor:
    """``(s,)`` eigenvalues of a symmetric PSD matrix, clipped at 0 (no eigenvectors)."""
    check_finite(H)
    return _checked_eig(H, vectors=False).clamp_min(0.0)


def _plausible(A: torch.Tensor, e: torch.Tensor) -> bool:
    r"""Cheap O(S^2) check of eigenvalues ``e`` of symmetric ``A``: finite, and
    :math:`\sum_i e_i^2 = \|A\|_F^2` to a loose, dtype-aware tolerance (catches
    garbage, not round-off; ``vector_norm`` reduces without a copy of ``A``)."""
    if not bool(torch.isfinite(e).all()):
        return False
    fro2 = _frobenius_sq(A)
    tol = max(1e-6, 16 * A.shape[-1] * torch.finfo(A.dtype).eps)
    return abs(float(e.double().square().sum()) - fro2) <= tol * max(fro2, 1e-300)


def _row_blocks(A: torch.Tensor, bytes_per_block: int = 2**26):
    """Row blocks of ``A`` of about ``bytes_per_block`` in float64 (views)."""
    rows = max(1, bytes_per_block // (8 * max(1, A.shape[-1])))
    return (A[i : i + rows] for i in range(0, A.shape[0], rows))


def _frobenius_sq(A: torch.Tensor) -> float:
    r""":math:`\|A\|_F^2` accumulated in float64 block by block (no full copy)."""
    return sum(
        float(torch.linalg.vector_norm(B, dtype=torch.float64)) ** 2
        for B in _row_blocks(A)
    )


def _checked_eig(A: torch.Tensor, vectors: bool) -> Any:
    """``eigh`` (``vectors``) or ``eigvalsh`` of ``A``, validated by
    :func:`_plausible`; on a LAPACK error or an implausible result, retried in
    float64 and cast back.

    Why: LAPACK's divide-and-conquer can fail to converge on float32 GGNs with
    many zero eigenvalues, and MKL's float32 ``ssyevd`` has been seen to return
    NaN eigenvalues *without* an error on a finite 300 x 300 GGN with 82 zero
    rows (``tests/data/mkl_nan_eigvalsh.pt``). The float64 retry needs about
    five S x S float64 matrices; if they do not fit in free memory a
    ``LinAlgError`` says so instead of allocating.
    """
    fn = torch.linalg.eigh if vectors else torch.linalg.eigvalsh
    try:
        out = fn(A)
        if _plausible(A, out[0] if vectors else out):
            return out
        problem = "returned non-finite or inconsistent eigenvalues"
    except torch.linalg.LinAlgError as err:
        problem = f"failed ({err})"
    if A.dtype == torch.float64:
        raise torch.linalg.LinAlgError(
            f"eigendecomposition of the {A.shape[0]}x{A.shape[0]} float64 curvature "
            f"{problem}. Check the curvature for extreme values."
        )
    need = 6 * A.shape[0] ** 2 * 8
    free = available_bytes(A.device)
    if need > free:
        raise torch.linalg.LinAlgError(
            f"eigendecomposition of the {A.shape[0]}x{A.shape[0]} {A.dtype} "
            f"curvature {problem}, and the float64 retry needs about "
            f"{need / 1e9:.2f} GB but {free / 1e9:.2f} GB is free on {A.device}. "
            "Fit with curvature_dtype=torch.float64 or select fewer weights."
        )
    A64 = A.double()
    out = fn(A64)
    if not _plausible(A64, out[0] if vectors else out):
        raise torch.linalg.LinAlgError(
            f"eigendecomposition of the {A.shape[0]}x{A.shape[0]} curvature "
            f"{problem}, also in float64. Check the curvature for extreme values."
        )
    del A64
    if vectors:
        return out[0].to(A.dtype), out[1].to(A.dtype)
    return out.to(A.dtype)


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
