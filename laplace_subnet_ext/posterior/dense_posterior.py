r"""`DensePosterior`: the one owner of the dense subnetwork posterior's state.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``p`` all parameters,
``s``/``t`` subnetwork parameters.

Posterior (Daxberger et al., ICML 2021, eq. 5): the S selected weights get
:math:`\mathcal{N}(\hat\theta_S, (h H + P_0)^{-1})` with
:math:`H = \sum_n J_S(x_n)^\top \Lambda(x_n) J_S(x_n)` (GGN) or the empirical
Fisher and :math:`h = 1/(\sigma^2 T)`; every other weight stays at the MAP.

Who owns what (each field has one writer, the owner's own methods):

* :class:`DensePosterior` - the layout and Jacobian engine of the selected
  subnetwork, :math:`\sigma`, :math:`T` (hence :math:`h`), the fit's loss, data
  count, output count and MAP vector, laplace's lazily built backend, and the
  two objects below;
* :class:`~laplace_subnet_ext.prior.subnet_prior.SubnetPrior` - the prior
  precision (values and structure) and mean;
* :class:`.precision.DensePrecision` - H (handed over by the fit's
  :class:`.accumulator.CurvatureAccumulator`, never written after), the factor
  buffer and every spectral cache.

:class:`~laplace_subnet_ext.DenseSubnetLaplace` is the laplace-facing adapter:
laplace's attributes (``H``, ``prior_precision``, ``sigma_noise``, ``loss``,
``mean``, ...) are its properties and delegate here.

Policy: the marginal likelihood with a scalar prior uses the cached eigenvalues
of H on the exact path (O(S) per prior value) and the Cholesky factor on the
large-S path; covariance, samples and the GLM predictive use the cached
eigenvectors once :meth:`DensePrecision.eigh` has run (O(S^2) per prior value),
else one Cholesky factorisation per prior value. Layer-wise / diagonal priors
always use Cholesky. Every factorisation is preceded by a memory check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import tqdm
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch, to_device
from laplace_subnet_ext.numerics.memory import LARGE_S, default_curvature_dtype
from laplace_subnet_ext.posterior.accumulator import CurvatureAccumulator
from laplace_subnet_ext.posterior.precision import DensePrecision
from laplace_subnet_ext.prior.subnet_prior import PriorStructure, SubnetPrior

__all__ = ["DensePosterior", "PosteriorOptions", "MarglikMethod", "EXACT_MARGLIK_MAX_S"]

logger = logging.getLogger("laplace_subnet_ext")

#: largest S whose scalar-prior marginal likelihood uses exact eigenvalues under
#: ``marglik_method="auto"`` (``eigvalsh`` is O(S^3) and memory-bound: about a
#: minute at S = 10,000 on 2 cores, hours at 40,000)
EXACT_MARGLIK_MAX_S = LARGE_S


class MarglikMethod(str, Enum):
    """How the scalar-prior marginal likelihood is computed."""

    #: ``"exact"`` up to :data:`EXACT_MARGLIK_MAX_S`, ``"slq"`` above (logged)
    AUTO = "auto"
    #: eigenvalues of H (``eigvalsh``, O(S^3) once, then O(S) per prior value)
    EXACT = "exact"
    #: log evidence from the Cholesky factor, tuning by stochastic Lanczos
    #: quadrature plus an exact Newton correction (:mod:`..prior.large_s`)
    SLQ = "slq"


@dataclass(frozen=True)
class PosteriorOptions:
    """The constructor's settings the posterior acts on (fixed after ``__init__``)."""

    jacobian_method: str
    verify_jacobians: bool
    curvature_dtype: torch.dtype | None
    memory_budget: int | None
    predictive_block_bytes: int
    dict_key_x: str
    dict_key_y: str


class DensePosterior:
    """State and maths of the dense subnetwork posterior (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
    prior : SubnetPrior
    options : PosteriorOptions
    sigma_noise : torch.Tensor
    temperature : float
    mean : torch.Tensor
        ``(p,)`` the parameter vector (the MAP once fitted).
    """

    __slots__ = (
        "model",
        "options",
        "prior",
        "_layout",
        "_jacobians",
        "_precision",
        "_fitted",
        "_sigma_noise",
        "_temperature",
        "_loss",
        "_n_data",
        "_n_outputs",
        "_mean",
        "_backend",
        "_logged_path",
        "_tuning_info",
        "_progress",
        "_marglik_method",
        "_fit_batch",
    )

    def __init__(
        self,
        model: nn.Module,
        prior: SubnetPrior,
        options: PosteriorOptions,
        sigma_noise: torch.Tensor,
        temperature: float,
        mean: torch.Tensor,
        marglik_method: str = "auto",
    ) -> None:
        self.model = model
        self._marglik_method = MarglikMethod(marglik_method)
        #: the largest batch ``fit`` ran (the predictive never runs more at once)
        self._fit_batch: int | None = None
        self.options = options
        self.prior = prior
        self._layout: SubnetLayout | None = None
        self._jacobians: SubnetJacobians | None = None
        self._precision: DensePrecision | None = None
        self._fitted = False
        self._sigma_noise = sigma_noise
        self._temperature = float(temperature)
        self._loss: torch.Tensor | float = 0.0
        self._n_data = 0
        self._n_outputs = 0
        self._mean = mean
        self._backend = None
        self._logged_path: tuple | None = None
        self._tuning_info: dict[str, Any] | None = None
        self._progress = False

    # ------------------------------------------------------------------ reads
    @property
    def layout(self) -> SubnetLayout | None:
        return self._layout

    @property
    def jacobians(self) -> SubnetJacobians | None:
        return self._jacobians

    @property
    def n_subnet(self) -> int | None:
        """S (None before selection): the layout's count, the one definition."""
        return None if self._layout is None else self._layout.n_subnet

    @property
    def fitted(self) -> bool:
        return self._fitted

    @property
    def sigma_noise(self) -> torch.Tensor:
        return self._sigma_noise

    @property
    def temperature(self) -> float:
        return self._temperature

    @property
    def h(self) -> torch.Tensor:
        r""":math:`h = 1/(\sigma^2 T)` (differentiable in :math:`\sigma`)."""
        return 1 / self._sigma_noise.square() / self._temperature

    @property
    def loss(self):
        return self._loss

    @property
    def n_data(self) -> int:
        return self._n_data

    @property
    def n_outputs(self) -> int:
        return self._n_outputs

    @property
    def mean(self) -> torch.Tensor:
        return self._mean

    @property
    def backend(self):
        return self._backend

    @property
    def marglik_method(self) -> MarglikMethod:
        return self._marglik_method

    @property
    def tuning_info(self) -> dict[str, Any] | None:
        """Details of the last large-S prior tuning (``marglik_tuning_info``)."""
        return None if self._tuning_info is None else dict(self._tuning_info)

    @property
    def H(self) -> torch.Tensor | None:
        """``(s, t)`` curvature (None before fit). Owned by :attr:`precision`;
        an in-place edit is noticed by every cache (keyed on its version)."""
        return None if self._precision is None else self._precision.H

    @property
    def precision_object(self) -> DensePrecision | None:
        """The :class:`.precision.DensePrecision` as it stands (prior not set)."""
        return self._precision

    def precision(self) -> DensePrecision:
        r""":class:`.precision.DensePrecision` :math:`hH + P_0` at the current prior
        and noise."""
        p = self._precision
        p.set_prior(self.h, self.prior.diag(self._layout), self.prior.scalar)
        return p

    @property
    def mean_subnet(self) -> torch.Tensor:
        """``(s,)`` MAP of the subnetwork weights."""
        return self._mean[self._layout.indices]

    # ----------------------------------------------------------------- writes
    def set_sigma_noise(self, value: torch.Tensor) -> None:
        self._sigma_noise = value

    def set_temperature(self, value: float) -> None:
        self._temperature = float(value)

    def set_marglik_method(self, value: str) -> None:
        if value not in tuple(MarglikMethod):
            raise ValueError(
                f"marglik_method must be 'auto', 'exact' or 'slq'; got {value!r}."
            )
        self._marglik_method = MarglikMethod(value)

    def set_backend(self, backend) -> None:
        """laplace's backend (built lazily by laplace's ``backend`` property)."""
        self._backend = backend
        if backend is not None and self._layout is not None:
            backend.subnetwork_indices = self._layout.indices

    def set_tuning_info(self, info: dict[str, Any] | None) -> None:
        self._tuning_info = None if info is None else dict(info)

    def set_progress(self, on: bool) -> None:
        """Progress bars for the predictive blocks (the adapter's ``__call__``)."""
        self._progress = bool(on)

    def curvature_dtype_for(self, S: int | None, model_dtype: torch.dtype):
        """``curvature_dtype`` as given, else :func:`.memory.default_curvature_dtype`."""
        if self.options.curvature_dtype is not None:
            return self.options.curvature_dtype
        return default_curvature_dtype(model_dtype, S)

    def select(
        self,
        indices: torch.Tensor,
        H: torch.Tensor,
        backend_jacobians: Callable,
        restrict_prior: bool = True,
    ) -> None:
        """Set the subnetwork (validated ``indices``) and a zero curvature ``H``."""
        o = self.options
        self._layout = SubnetLayout(self.model, indices)
        self._jacobians = SubnetJacobians(
            self.model,
            self._layout,
            method=o.jacobian_method,
            dict_key_x=o.dict_key_x,
            backend_jacobians=backend_jacobians,
            verify=o.verify_jacobians,
            block_bytes=o.predictive_block_bytes,
        )
        self._precision = DensePrecision(H, o.memory_budget)
        self._fitted = False
        if self._backend is not None:
            self._backend.subnetwork_indices = indices
        if restrict_prior:
            self.prior.restrict_to(self._layout)

    def set_curvature(self, H: torch.Tensor | None) -> None:
        """Replace H (a new tensor: new caches); None drops it."""
        if H is None:
            self._precision = None
        elif self._precision is None or self._precision.H is not H:
            self._precision = DensePrecision(H, self.options.memory_budget)

    def restore(self, H, loss, n_data: int, n_outputs: int, mean) -> None:
        """A saved fit (``load_state_dict``)."""
        self.set_curvature(H)
        self._loss, self._n_data, self._n_outputs = loss, int(n_data), int(n_outputs)
        self._mean = mean
        self._fitted = True

    # laplace's own __init__ writes its fit attributes once (no fit yet)
    def set_loss(self, value) -> None:
        self._loss = value

    def set_n_data(self, value: int) -> None:
        self._n_data = int(value)

    def set_n_outputs(self, value: int) -> None:
        self._n_outputs = int(value)

    def set_mean(self, value) -> None:
        self._mean = value

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        train_loader: DataLoader,
        curv,
        override: bool,
        progress_bar: bool,
        keep_rows: bool,
        zeros: Callable[[], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
        enable_backprop: bool,
    ) -> int:
        """Sum curvature and loss over ``train_loader``; return the inputs seen.

        With an initialised ``torch.distributed`` process group each rank passes
        its own shard; curvature, loss and data count are all-reduced.
        """
        H = zeros() if override or self._precision is None else self._precision.H
        if override:
            self._loss, self._n_data = 0.0, 0
        self._fitted = False
        self.model.eval()
        mean = parameters_to_vector(
            p for p in self.model.parameters() if p.requires_grad
        )
        self._mean = mean if enable_backprop else mean.detach()
        N = len(train_loader.dataset)
        distributed = (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        acc = CurvatureAccumulator(
            H, N, keep_rows=override and not distributed and keep_rows
        )
        self._precision = None  # H is the accumulator's until it finishes
        pbar = tqdm.tqdm(train_loader, disable=not progress_bar)
        pbar.set_description("[Computing subnetwork Hessian]")
        loss = torch.zeros((), device=device, dtype=dtype)
        key_y = self.options.dict_key_y
        try:
            for i, data in enumerate(pbar):
                if isinstance(data, MutableMapping):
                    X, y = to_device(data, device), data[key_y]
                else:
                    X, y = data
                    X = to_device(X, device)
                y = y.to(device)
                Js, f = self._jacobians(X)
                self._fit_batch = max(self._fit_batch or 0, f.shape[0])
                self._n_outputs = f.shape[-1]
                if curv.likelihood == "regression" and y.ndim != f.ndim:
                    raise ValueError(
                        f"The model's output has {f.ndim} dims but the target has "
                        f"{y.ndim} dims."
                    )
                try:
                    loss = loss + acc.add(curv, Js, f, y)
                except FloatingPointError as err:
                    raise ValueError(
                        f"train_loader batch {i} (0-based) gives a non-finite {err}; "
                        "nothing of it was added. Check that batch's inputs and "
                        "targets, and the model's dtype (float16 overflows above "
                        "65504; fit a float32 copy)."
                    ) from None
        except BaseException:
            acc.abort()
            self._precision = DensePrecision(
                acc.finish()[0], self.options.memory_budget
            )
            raise
        H, rows = acc.finish(distributed)
        n_data = torch.tensor(N, device=device)
        if distributed:
            torch.distributed.all_reduce(loss)
            torch.distributed.all_reduce(n_data)
        self._precision = DensePrecision(H, self.options.memory_budget)
        self._loss = self._loss + loss
        self._n_data += int(n_data)
        self._fitted = True
        if rows is not None:
            self._precision.set_data_spectrum(rows)
            logger.info(
                "fit: H has rank <= %d < S / 8 (S=%d); its eigenvalues come from the "
                "(%d, %d) data-space Gram matrix (exact; the large-S marginal "
                "likelihood needs no SLQ)",
                rows.shape[0],
                H.shape[0],
                rows.shape[0],
                rows.shape[0],
            )
        return N

    # --------------------------------------------------------- evidence paths
    def marglik_path(self, log: bool = True) -> MarglikMethod:
        """``EXACT`` (eigenvalues of H) or ``SLQ`` (large S) for a scalar prior:
        ``marglik_method``, or by S under ``AUTO`` (logged once per S)."""
        path = self._marglik_method
        if path != MarglikMethod.AUTO:
            return path
        S = self.n_subnet
        path = MarglikMethod.EXACT if S <= EXACT_MARGLIK_MAX_S else MarglikMethod.SLQ
        if log and self._logged_path != (S, path):
            self._logged_path = (S, path)
            logger.info(
                "marglik_method='auto': S=%d %s %d, scalar-prior evidence on the "
                "%s path (override with marglik_method='exact'/'slq')",
                S,
                "<=" if path == MarglikMethod.EXACT else ">",
                EXACT_MARGLIK_MAX_S,
                path.value,
            )
        return path

    def exact_scalar(self) -> bool:
        """Scalar prior on the exact (eigenvalue) evidence path."""
        return (
            self.prior.structure == PriorStructure.SCALAR
            and self.marglik_path() == MarglikMethod.EXACT
        )

    def uses_eig(self) -> bool:
        """Scalar prior and a cached eigendecomposition of the current H."""
        return (
            self.prior.structure == PriorStructure.SCALAR and self._precision.has_eigh
        )

    def log_det_posterior_precision(self) -> torch.Tensor:
        p = self.precision()
        if self.exact_scalar():
            return p.log_det_eig()
        return p.log_det().to(self.prior.diag(self._layout).dtype)

    def log_det_ratio(self) -> torch.Tensor:
        p = self.precision()
        if self.exact_scalar():
            return p.log_det_ratio_eig()
        prior = self.prior.diag(self._layout)
        return (p.log_det() - prior.double().log().sum()).to(prior.dtype)

    def scatter(self) -> torch.Tensor:
        r""":math:`(\hat\theta_S - \mu_0)^\top P_0 (\hat\theta_S - \mu_0)`."""
        delta = self.mean_subnet - self.prior.mean
        return (delta * self.prior.diag(self._layout)) @ delta

    # ------------------------------------------------------------- predictive
    def glm_predictive(
        self, X, joint: bool, diagonal_output: bool, device, out_dtype, cdtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""GLM predictive mean and (co)variance, input blocks of bounded size:
        one block's Jacobians ``(b, c, s)`` (and their whitened copy) stay below
        ``predictive_block_bytes``, and a block holds no more inputs than the
        largest batch ``fit`` ran (whose forward and backward passes, with
        their activations, are known to fit in memory)."""
        X = to_device(X, device)
        n = batch_size(X, self.options.dict_key_x)
        itemsize = torch.empty((), dtype=cdtype).element_size()
        per_row = max(1, self._n_outputs) * self.n_subnet * itemsize * 2
        block = max(1, min(n, self.options.predictive_block_bytes // per_row))
        if self._fit_batch is not None:
            block = min(block, self._fit_batch)
        pbar = tqdm.tqdm(range(0, n, block), disable=not self._progress)
        pbar.set_description("[GLM predictive]")
        precision = self.precision()
        f_mus, f_vars, Jss = [], [], []
        for start in pbar:
            Js, f = self._jacobians(slice_batch(X, start, min(start + block, n), n))
            f_mus.append(f)
            if joint:
                Jss.append(Js)
            else:
                fv = precision.functional_variance(Js).to(out_dtype)
                f_vars.append(fv.diagonal(dim1=-2, dim2=-1) if diagonal_output else fv)
        f_mu = torch.cat(f_mus)
        if joint:
            cov = precision.functional_covariance(torch.cat(Jss)).to(out_dtype)
            out = f_mu.flatten(), cov
        else:
            out = f_mu, torch.cat(f_vars)
        if not (torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()):
            raise FloatingPointError(
                "the GLM predictive is not finite (prior precision "
                f"{self.prior.precision.flatten()[:3].tolist()}, curvature "
                f"{self.H.dtype}, S={self.n_subnet}); check the inputs, or pass "
                "curvature_dtype=torch.float64 / a larger prior precision."
            )
        return out
