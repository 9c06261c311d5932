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

import logging
import warnings
from math import log, pi

import torch

from laplace_subnet_ext.posterior import linalg
from laplace_subnet_ext.posterior.inplace import InPlaceFactorMixin
from laplace_subnet_ext.posterior.memory import (
    CURVATURE_MATRICES,
    EIGH_MATRICES,
    EIGVALSH_MATRICES,
    check_dense_fits,
)

__all__ = ["FactorisationMixin", "EXACT_MARGLIK_MAX_S"]

logger = logging.getLogger("laplace_subnet_ext")

#: largest S whose scalar-prior marginal likelihood uses exact eigenvalues under
#: ``marglik_method="auto"`` (``eigvalsh`` is O(S^3) and memory-bound: about a
#: minute at S = 10,000 on 2 cores, hours at 40,000)
EXACT_MARGLIK_MAX_S = 10_000


class FactorisationMixin(InPlaceFactorMixin):
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
            self._check_factor_fits(extra=EIGVALSH_MATRICES)
            self._eigvals_cache = (key, linalg.psd_eigvalsh(self.H.detach()))
        return self._eigvals_cache[1]

    def _check_factor_fits(self, extra: int = EIGH_MATRICES) -> None:
        """Before an eigendecomposition: refuse if H and ``extra`` more S x S
        matrices cannot fit (budget or free memory)."""
        self._check_fits(extra, "its eigendecomposition")

    def _check_fits(self, extra: int, what: str) -> None:
        """Refuse (``ValueError`` naming the largest S) unless H and ``extra`` more
        S x S matrices fit the budget or the free memory."""
        check_dense_fits(
            self.n_params_subnet,
            self.H.element_size(),
            self._device,
            self.memory_budget,
            matrices=CURVATURE_MATRICES + extra,
            purpose=f"the curvature and {what}",
        )

    def _marglik_path(self) -> str:
        """``"exact"`` (eigenvalues of H) or ``"slq"`` (large S) for a scalar prior:
        ``marglik_method``, or by S under ``"auto"`` (logged once per S)."""
        path = self.marglik_method
        if path == "auto":
            path = "exact" if self.n_params_subnet <= EXACT_MARGLIK_MAX_S else "slq"
            if getattr(self, "_logged_path", None) != (self.n_params_subnet, path):
                self._logged_path = (self.n_params_subnet, path)
                logger.info(
                    "marglik_method='auto': S=%d %s %d, scalar-prior evidence on the "
                    "%s path (override with marglik_method='exact'/'slq')",
                    self.n_params_subnet,
                    "<=" if path == "exact" else ">",
                    EXACT_MARGLIK_MAX_S,
                    path,
                )
        return path

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
        """``(s, t)`` posterior precision :math:`h H + P_0` (a new S x S matrix)."""
        self._check_H_init()
        return self._H_factor * self.H + torch.diag(self.prior_precision_diag)

    # ------------------------------------------------------- the in-place factor
    def _compute_scale(self) -> None:
        if self._uses_eig:
            g, V = self._eig()
            self._posterior_scale = linalg.eig_scale(
                g, V, self._H_factor, self._prior_precision[0]
            )
        else:
            self._factor("cov_sqrt")

    def _scale_buffer(self) -> torch.Tensor:
        """The object's own square root (the factor buffer or the eigen scale)."""
        if self._uses_eig:
            if not isinstance(self._posterior_scale, torch.Tensor):
                self._compute_scale()
            return self._posterior_scale
        return self._factor("cov_sqrt")

    def _handed_out(self, buf: torch.Tensor, copy: bool, what: str) -> torch.Tensor:
        if not copy:
            return buf
        self._check_fits(1, f"a copy of the {what} (pass copy=False for the buffer)")
        return buf.clone()

    def get_posterior_scale(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` square root :math:`C` of the covariance, :math:`CC^\top = \Sigma`
        (lower triangular unless the eigendecomposition path is used).

        ``copy=True`` (default, and :attr:`posterior_scale`): a new tensor that no
        later call changes (one more S x S matrix, checked against free memory).
        ``copy=False``: the object's own buffer, no extra memory; the next call
        that needs another factorisation (``sample``, a predictive, a prior or
        noise change, ``fit``) overwrites it in place.
        """
        return self._handed_out(self._scale_buffer(), copy, "covariance square root")

    def get_posterior_covariance(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` :math:`\Sigma = P^{-1}`, computed in place of the factor.

        ``copy`` as in :meth:`get_posterior_scale`: by default a new tensor that
        later calls do not change; ``copy=False`` hands out the buffer itself.
        """
        if self._uses_eig:  # a product: already a new tensor
            scale = self._scale_buffer()
            return scale @ scale.T
        return self._handed_out(self._factor("cov"), copy, "covariance")

    @property
    def posterior_scale(self) -> torch.Tensor:
        """``get_posterior_scale()``: a new tensor, never changed by later calls."""
        return self.get_posterior_scale()

    @property
    def posterior_covariance(self) -> torch.Tensor:
        """``get_posterior_covariance()``: a new tensor, never changed by later calls."""
        return self.get_posterior_covariance()

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        r""":math:`\log\det P`. Scalar prior on the exact path: O(S) from the
        cached eigenvalues of H. Otherwise from the in-place Cholesky factor,
        differentiable in the prior and the noise through
        :math:`\partial/\partial P_{0,ii} = \Sigma_{ii}` and
        :math:`\partial/\partial h = (S - \sum_i \Sigma_{ii} P_{0,ii})/h`, whose
        backward turns the factor into :math:`\Sigma` in place."""
        if self._prior_structure == "scalar" and self._marglik_path() == "exact":
            g = self._eigvals()
            return linalg.eig_logdet(g, self._H_factor, self._prior_precision[0])
        logdet = self._cholesky_log_det()
        return logdet.to(self.prior_precision_diag.dtype)

    @property
    def log_det_ratio(self) -> torch.Tensor:
        r""":math:`\log\det P - \log\det P_0`, formed without cancellation: the
        two terms are each about :math:`S\log\lambda` and nearly cancel, which in
        float32 costs about 1e-3 nats at S = 10,000. Exact path:
        :math:`\sum_i \operatorname{log1p}(h g_i/\lambda)`; Cholesky path: both
        sums in float64."""
        if self._prior_structure == "scalar" and self._marglik_path() == "exact":
            g = self._eigvals()
            lam = self._prior_precision[0]
            return torch.log1p(self._H_factor * g / lam).sum()
        prior = self.prior_precision_diag
        logdet = self._cholesky_log_det()
        return (logdet - prior.double().log().sum()).to(prior.dtype)

    def sample(
        self, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Samples of all D weights (subnetwork drawn, the rest at the MAP)."""
        z = torch.randn(
            n_samples,
            self.n_params_subnet,
            device=self._device,
            dtype=self._cdtype,
            generator=generator,
        )
        L = None if self._uses_eig else self._precision_factor_if_current()
        if L is not None:  # theta = mu + L^{-T} z
            d = torch.linalg.solve_triangular(L.mT, z.T, upper=True).T
            return self.assemble_full_samples(self.mean_subnet + d.to(self._dtype))
        d = z @ self._scale_buffer().T
        return self.assemble_full_samples(self.mean_subnet + d.to(self._dtype))

    def _floored_posterior_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fallback when the Cholesky factorisation of ``P`` fails to round-off."""
        self._warn_not_pd("using its eigendecomposition, eigenvalues >= min prior")
        self._check_fits(1 + EIGH_MATRICES, "the eigendecomposition fallback")
        floor = self.prior_precision_diag.min().detach()
        return linalg.floored_eigh(self.posterior_precision.detach(), floor)

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
        """``(b, c, k)`` GLM output covariance of Jacobians ``(b, c, s)``.

        Eigen path: O(S^2) per block; otherwise a triangular solve with the
        Cholesky factor (or a product with the covariance / its square root,
        whichever the buffer holds): O(b c S) memory, no S x S matrix."""
        Js = Js.to(self._cdtype)
        if self._uses_eig:
            g, V = self._eig()
            fv = linalg.eig_functional_variance(
                Js @ V, g, self._H_factor, self._prior_precision[0]
            )
            return fv.to(self._dtype)
        return torch.einsum("bcs,bks->bck", *self._whitened(Js)).to(self._dtype)

    def functional_covariance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b*c, b*c)`` joint GLM output covariance."""
        b, c, s = Js.shape
        Js = Js.to(self._cdtype)
        if self._uses_eig:
            JL = Js.reshape(b * c, s) @ self._scale_buffer()
            return (JL @ JL.T).to(self._dtype)
        A, B = self._whitened(Js)
        return (A.reshape(b * c, s) @ B.reshape(b * c, s).T).to(self._dtype)

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
