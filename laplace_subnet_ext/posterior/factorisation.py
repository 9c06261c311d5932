r"""The posterior's side of :class:`.precision.DensePrecision`: laplace's properties.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

:class:`~laplace_subnet_ext.DenseSubnetLaplace` keeps the attributes and
properties laplace's code reads and writes (``H``, ``_posterior_scale``,
``posterior_covariance``, ``log_det_ratio``, ...) and delegates each to one
:class:`.precision.DensePrecision`, which owns H, the factor buffer and every
cache. ``self.H = tensor`` builds a new one; laplace's invalidation
``self._posterior_scale = None`` frees its factor.

Policy: the marginal likelihood with a scalar prior uses the cached eigenvalues
of H on the exact path (O(S) per prior value) and the Cholesky factor on the
large-S path; covariance, samples and the GLM predictive use the cached
eigenvectors when :meth:`FactorisationMixin.eigendecompose` has run (O(S^2) per
prior value), else one Cholesky factorisation per prior value (cheaper for a
fixed prior). Layer-wise / diagonal priors always use Cholesky. Every
factorisation is preceded by a memory check.
"""

from __future__ import annotations

import logging
from math import log, pi

import torch

from laplace_subnet_ext.numerics.memory import LARGE_S
from laplace_subnet_ext.posterior.precision import DensePrecision

__all__ = ["FactorisationMixin", "EXACT_MARGLIK_MAX_S"]

logger = logging.getLogger("laplace_subnet_ext")

#: largest S whose scalar-prior marginal likelihood uses exact eigenvalues under
#: ``marglik_method="auto"`` (``eigvalsh`` is O(S^3) and memory-bound: about a
#: minute at S = 10,000 on 2 cores, hours at 40,000)
EXACT_MARGLIK_MAX_S = LARGE_S


class FactorisationMixin:
    """``H``, posterior precision, log-determinant, scale, samples, GLM variances."""

    # ------------------------------------------------------ the owned precision
    @property
    def H(self) -> torch.Tensor | None:
        """``(s, t)`` curvature, owned by :attr:`precision` (None before fit)."""
        p = self.__dict__.get("_precision")
        return None if p is None else p.H

    @H.setter
    def H(self, value: torch.Tensor | None) -> None:
        p = self.__dict__.get("_precision")
        if value is None:
            self._precision = None
        elif p is None or p.H is not value:  # a new tensor: new caches
            self._precision = DensePrecision(
                value, getattr(self, "memory_budget", None)
            )

    @property
    def _posterior_scale(self) -> torch.Tensor | None:
        """The factor buffer (laplace's name), None unless held for the current state."""
        p = self.__dict__.get("_precision")
        return None if p is None or p.prior_diag is None else p.buffer()

    @_posterior_scale.setter
    def _posterior_scale(self, value: None) -> None:
        if value is not None:
            raise AttributeError(
                "_posterior_scale is owned by the posterior's DensePrecision; only "
                "None (invalidate) may be assigned."
            )
        p = self.__dict__.get("_precision")
        if p is not None:
            p.invalidate_factor()

    @property
    def precision(self) -> DensePrecision:
        r"""The :class:`.precision.DensePrecision` :math:`hH + P_0` at the current
        prior and noise: log det, whitening, covariance, square root, samples and
        the spectra of H, with their caches."""
        self._check_H_init()
        p = self._precision
        scalar = self._prior_structure == "scalar"
        p.set_prior(
            self._H_factor,
            self.prior_precision_diag,
            self._prior_precision[0] if scalar else None,
        )
        return p

    # -------------------------------------------------------------- spectra
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
        return self._precision.eigh()

    def _marglik_path(self, log: bool = True) -> str:
        """``"exact"`` (eigenvalues of H) or ``"slq"`` (large S) for a scalar prior:
        ``marglik_method``, or by S under ``"auto"`` (logged once per S)."""
        path = self.marglik_method
        if path == "auto":
            path = "exact" if self.n_params_subnet <= EXACT_MARGLIK_MAX_S else "slq"
            if log and getattr(self, "_logged_path", None) != (
                self.n_params_subnet,
                path,
            ):
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
        return self._prior_structure == "scalar" and self._precision.has_eigh

    def _exact_scalar(self) -> bool:
        return self._prior_structure == "scalar" and self._marglik_path() == "exact"

    # ------------------------------------------------------------ laplace's API
    @property
    def posterior_precision(self) -> torch.Tensor:
        """``(s, t)`` posterior precision :math:`h H + P_0` (a new S x S matrix)."""
        return self.precision.matrix()

    def _compute_scale(self) -> None:
        """laplace's hook: build the square root in the buffer (no copy)."""
        self.precision.scale(copy=False)

    def get_posterior_scale(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` square root :math:`C` of the covariance, :math:`CC^\top = \Sigma`
        (lower triangular unless the eigendecomposition path is used).

        ``copy=True`` (default, and :attr:`posterior_scale`): a new tensor that no
        later call changes (one more S x S matrix, checked against free memory).
        ``copy=False``: the object's own buffer, no extra memory; the next call
        that needs another factorisation (``sample``, a predictive, a prior or
        noise change, ``fit``) overwrites it in place.
        """
        return self.precision.scale(copy)

    def get_posterior_covariance(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` :math:`\Sigma = P^{-1}`, computed in place of the factor.

        ``copy`` as in :meth:`get_posterior_scale`: by default a new tensor that
        later calls do not change; ``copy=False`` hands out the buffer itself.
        """
        return self.precision.covariance(copy)

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
        p = self.precision
        if self._exact_scalar():
            return p.log_det_eig()
        return p.log_det().to(self.prior_precision_diag.dtype)

    @property
    def log_det_ratio(self) -> torch.Tensor:
        r""":math:`\log\det P - \log\det P_0`, formed without cancellation: the
        two terms are each about :math:`S\log\lambda` and nearly cancel, which in
        float32 costs about 1e-3 nats at S = 10,000. Exact path:
        :math:`\sum_i \operatorname{log1p}(h g_i/\lambda)`; Cholesky path: both
        sums in float64."""
        p = self.precision
        if self._exact_scalar():
            return p.log_det_ratio_eig()
        prior = self.prior_precision_diag
        return (p.log_det() - prior.double().log().sum()).to(prior.dtype)

    def sample(
        self, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Samples of all D weights (subnetwork drawn, the rest at the MAP)."""
        d = self.precision.sample(n_samples, generator).to(self._dtype)
        return self.assemble_full_samples(self.mean_subnet + d)

    def functional_variance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b, c, k)`` GLM output covariance of Jacobians ``(b, c, s)``.

        Eigen path: O(S^2) per block; otherwise a triangular solve with the
        Cholesky factor (or a product with the covariance / its square root,
        whichever the buffer holds): O(b c S) memory, no S x S matrix."""
        return self.precision.functional_variance(Js).to(self._dtype)

    def functional_covariance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b*c, b*c)`` joint GLM output covariance."""
        return self.precision.functional_covariance(Js).to(self._dtype)

    def square_norm(self, value: torch.Tensor) -> torch.Tensor:
        """Mahalanobis norm of ``value`` (length D or S) around the subnetwork mean."""
        if value.shape[-1] == self.n_params:
            value = value[..., self.subnetwork_indices]
        return self.precision.square_norm(value - self.mean_subnet)

    def log_prob(self, value: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Log density of the subnetwork posterior at ``value`` (length D or S)."""
        if not normalized:
            return -self.square_norm(value) / 2
        return (
            -self.n_params_subnet / 2 * log(2 * pi)
            + self.log_det_posterior_precision / 2
            - self.square_norm(value) / 2
        )
