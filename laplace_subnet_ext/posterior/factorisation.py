r"""Factorisations of the dense posterior: eigen (scalar prior) or Cholesky.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

Policy: the marginal likelihood with a scalar prior uses the cached eigenvalues
of H (``eigvalsh``; O(S) per prior value); covariance, samples and the GLM
predictive use the cached eigenvectors when :meth:`eigendecompose` has run (O(S^2)
per prior value), else one Cholesky factorisation per prior value (cheaper for a
fixed prior). Layer-wise / diagonal priors always use Cholesky. Every
factorisation is preceded by a memory check.
"""

from __future__ import annotations

import warnings
from math import log, pi

import torch

from laplace_subnet_ext.posterior import linalg
from laplace_subnet_ext.posterior.memory import (
    CURVATURE_MATRICES,
    FACTOR_MATRICES,
    check_dense_fits,
)

__all__ = ["FactorisationMixin"]


class FactorisationMixin:
    """Posterior precision, log-determinant, scale and GLM variances."""

    def _H_key(self) -> tuple[int, int]:
        return (id(self.H), self.H._version)

    def eigendecompose(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Compute (once per curvature) and cache :math:`H = V \operatorname{diag}(g) V^\top`.

        Afterwards, with a scalar prior, the posterior covariance, samples and GLM
        predictive for *any* :math:`(\lambda, \sigma)` cost O(S^2) (projected
        Jacobians :math:`J_S V`) instead of a Cholesky factorisation per value.
        Called automatically by prior grid search. Without it, a scalar prior uses
        eigenvalues only for the marginal likelihood and one Cholesky per prior
        value for the covariance (cheaper when the prior is fixed).

        Returns
        -------
        g : torch.Tensor
            ``(s,)`` eigenvalues, clipped at 0.
        V : torch.Tensor
            ``(s, t)`` eigenvectors.
        """
        self._check_H_init()
        if self._eig_cache is None or self._eig_cache[0] != self._H_key():
            self._check_factor_fits()
            self._eig_cache = (self._H_key(), *linalg.psd_eigh(self.H.detach()))
        return self._eig_cache[1], self._eig_cache[2]

    _eig = eigendecompose

    def _eigvals(self) -> torch.Tensor:
        """Cached clipped eigenvalues of H: all the marginal likelihood needs
        (``eigvalsh`` costs about a quarter of a full ``eigh``)."""
        self._check_H_init()
        key = self._H_key()
        if self._eig_cache is not None and self._eig_cache[0] == key:
            return self._eig_cache[1]
        if self._eigvals_cache is None or self._eigvals_cache[0] != key:
            self._check_factor_fits()
            self._eigvals_cache = (key, linalg.psd_eigvalsh(self.H.detach()))
        return self._eigvals_cache[1]

    def _check_factor_fits(self) -> None:
        """Before an eigendecomposition / Cholesky: refuse if it cannot fit."""
        itemsize = self.H.element_size()
        if self.memory_budget is not None:
            check_dense_fits(
                self.n_params_subnet,
                itemsize,
                self._device,
                self.memory_budget,
                matrices=CURVATURE_MATRICES + FACTOR_MATRICES,
                purpose="the curvature and its factorisation",
            )
        else:
            check_dense_fits(
                self.n_params_subnet,
                itemsize,
                self._device,
                matrices=FACTOR_MATRICES,
                purpose="factorising the posterior",
            )

    @property
    def _uses_eig(self) -> bool:
        """Scalar prior and a cached eigendecomposition of the current curvature."""
        return (
            self._prior_structure == "scalar"
            and self._eig_cache is not None
            and self._eig_cache[0] == self._H_key()
        )

    @property
    def posterior_precision(self) -> torch.Tensor:
        """``(s, t)`` posterior precision :math:`h H + P_0`."""
        self._check_H_init()
        return self._H_factor * self.H + torch.diag(self.prior_precision_diag)

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        r""":math:`\log\det P`: O(S) from the cached eigenvalues for a scalar
        prior, else a Cholesky factorisation (O(S^3) per call)."""
        if self._prior_structure == "scalar":
            g = self._eigvals()
            return linalg.eig_logdet(g, self._H_factor, self._prior_precision[0])
        self._check_factor_fits()
        L, info = torch.linalg.cholesky_ex(self.posterior_precision)
        if info.item() == 0:
            return 2 * L.diagonal().log().sum()
        e, _ = self._floored_posterior_eigh()
        return e.log().sum()

    def _compute_scale(self) -> None:
        if not self._uses_eig:
            self._check_factor_fits()
            try:
                super()._compute_scale()
                return
            except torch.linalg.LinAlgError:
                if self._prior_structure != "scalar":
                    e, V = self._floored_posterior_eigh()
                    self._posterior_scale = V * e.rsqrt()
                    return
                self._warn_not_pd("eigendecomposing H once (cached for every prior)")
        g, V = self._eig()
        scale = linalg.eig_scale(g, V, self._H_factor, self._prior_precision[0])
        self._posterior_scale = scale

    def _floored_posterior_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fallback when the Cholesky factorisation of ``P`` fails to round-off."""
        self._warn_not_pd("using its eigendecomposition, eigenvalues >= min prior")
        floor = self.prior_precision_diag.min().detach()
        return linalg.floored_eigh(self.posterior_precision, floor)

    def _warn_not_pd(self, remedy: str) -> None:
        fix = "a larger prior precision"
        if self.H.dtype != torch.float64:
            fix = "curvature_dtype=torch.float64 or " + fix
        warnings.warn(
            f"The posterior precision ({self.H.dtype}, S={self.n_params_subnet}) is "
            "not numerically positive definite (Cholesky failed: round-off in the "
            f"curvature is larger than the prior precision); {remedy}. For an exact "
            f"factorisation pass {fix}.",
            RuntimeWarning,
            stacklevel=3,
        )

    def functional_variance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b, c, k)`` GLM output covariance of Jacobians ``(b, c, s)``."""
        Js = Js.to(self._cdtype)
        if self._uses_eig:
            g, V = self._eig()
            fv = linalg.eig_functional_variance(
                Js @ V, g, self._H_factor, self._prior_precision[0]
            )
        else:
            fv = linalg.chol_functional_variance(Js, self.posterior_scale)
        return fv.to(self._dtype)

    def functional_covariance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b*c, b*c)`` joint GLM output covariance."""
        b, c, s = Js.shape
        JL = Js.reshape(b * c, s).to(self._cdtype) @ self.posterior_scale
        return (JL @ JL.T).to(self._dtype)

    def square_norm(self, value: torch.Tensor) -> torch.Tensor:
        """Mahalanobis norm of ``value`` (length D or S) around the subnetwork mean."""
        if value.shape[-1] == self.n_params:
            value = value[..., self.subnetwork_indices]
        delta = (value - self.mean_subnet).to(self._cdtype)
        return delta @ self.posterior_precision @ delta

    def log_prob(self, value: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Log density of the subnetwork posterior at ``value`` (length D or S)."""
        if not normalized:
            return -self.square_norm(value) / 2
        return (
            -self.n_params_subnet / 2 * log(2 * pi)
            + self.log_det_posterior_precision / 2
            - self.square_norm(value) / 2
        )
