r"""`DenseSubnetLaplace`: full-covariance linearized Laplace over S of D weights.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``p`` all parameters,
``s``/``t`` subnetwork parameters.

Posterior (Daxberger et al., ICML 2021, eq. 5): the S selected weights get
:math:`\mathcal{N}(\hat\theta_S, (h G_S + P_0)^{-1})` with
:math:`G_S = \sum_n J_S(x_n)^\top \Lambda(x_n) J_S(x_n)` (GGN) or the empirical
Fisher, :math:`h = 1/(\sigma^2 T)`; every other weight stays at the MAP. The
maths lives in :mod:`.linalg`, the Jacobians in :mod:`laplace_subnet_ext.jacobians`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import torch
import tqdm
from laplace import FullSubnetLaplace
from laplace.curvature import EFInterface, GGNInterface
from laplace.utils.enums import Likelihood
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext._compat import init_parametric
from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import to_device
from laplace_subnet_ext.jacobians.engine import BLOCK_BYTES
from laplace_subnet_ext.numerics import curvature as _curvature
from laplace_subnet_ext.numerics.curvature import (
    add_batch_curvature,
    mirror_upper,
    output_curvature,
    rows_per_sample,
)
from laplace_subnet_ext.numerics.memory import (
    DATA_SPECTRUM_RANK_DIVISOR,
    check_dense_fits,
    check_subnet_plan,
    default_curvature_dtype,
    explain_curvature_dtype,
    parse_bytes,
)
from laplace_subnet_ext.posterior.factorisation import FactorisationMixin
from laplace_subnet_ext.posterior.indices import normalize_subnetwork_indices
from laplace_subnet_ext.posterior.predictive import BlockedPredictiveMixin
from laplace_subnet_ext.posterior.state import SubnetStateMixin
from laplace_subnet_ext.prior.mixin import SubnetPriorMixin
from laplace_subnet_ext.prior.tuning import PriorTuningMixin
from laplace_subnet_ext.selection.resolve import select_indices

__all__ = ["DenseSubnetLaplace", "NotFittedError", "DEFAULT_MASK"]

_MISSING: Any = object()
#: the likelihoods laplace accepts (``laplace.utils.enums.Likelihood``)
LIKELIHOODS = tuple(lik.value for lik in Likelihood)
logger = logging.getLogger("laplace_subnet_ext")
#: dispatch key while the plugin is not registered (never built by laplace.Laplace)
INERT_KEY = ("subnetwork", "full", "laplace_subnet_ext:unregistered")

#: the selection strategy used when only ``n_params_subnet`` is given (README,
#: "Which weights": best in 24 of 25 cells of the five-model study)
DEFAULT_MASK = "greedy_laplace"

#: selection or fit taking longer than this (seconds) prints a one-line summary
#: to stderr unless ``verbose=False``
SLOW_STAGE_SECONDS = 5.0


class NotFittedError(RuntimeError, AttributeError):
    """Raised when a fitted posterior is needed; also an ``AttributeError`` as in laplace."""


class DenseSubnetLaplace(
    FactorisationMixin,
    SubnetPriorMixin,
    PriorTuningMixin,
    BlockedPredictiveMixin,
    SubnetStateMixin,
    FullSubnetLaplace,
):
    r"""Dense subnetwork Laplace whose Jacobians cover the S selected weights only.

    Drop-in for ``laplace.FullSubnetLaplace``; ``import laplace_subnet_ext`` makes
    ``laplace.Laplace(model, lik, subset_of_weights="subnetwork",
    hessian_structure="full", ...)`` return this class.

    Parameters
    ----------
    model : torch.nn.Module
        Network at its MAP; outputs ``(b, c)``.
    likelihood : {"classification", "regression"}
    subnetwork_indices : torch.Tensor, numpy array or sequence of int, optional
        Indices into ``parameters_to_vector`` of the parameters that require
        grad (any integer dtype, any device), or a boolean mask of length D.
        Positional for compatibility with laplace; give it or ``subnetwork_mask``.
    subnetwork_mask : SubnetMask instance or class, or str, optional
        A laplace ``SubnetMask`` (or one of ours), a class of one, or a name in
        :func:`laplace_subnet_ext.selection.available`; selection runs in
        :meth:`fit` unless the mask was already selected.
    n_params_subnet : int, optional
        S for a mask class or name that needs it. Given alone (no indices, no
        mask), :data:`DEFAULT_MASK` (``"greedy_laplace"``, the best strategy of
        README's selection study) selects S weights in :meth:`fit`, with this
        posterior's scalar prior precision and noise (logged).
    mask_kwargs : dict, optional
        Extra constructor arguments for a mask class or name.
    sigma_noise, temperature, enable_backprop, dict_key_x, dict_key_y, backend, backend_kwargs
        As in laplace. ``backend`` must be a GGN or EF interface; it sets the
        curvature type (GGN / MC-Fisher / EF) and the loss.
    prior_precision : float or torch.Tensor, default=1
        Scalar; per tensor of the model or per touched tensor (layer-wise);
        or per weight, of length S or D (restricted to the subnetwork).
    prior_mean : float or torch.Tensor, default=0
        Scalar, length S or length D (restricted to the subnetwork).
    prior_rescaling : bool, default=False
        If True, ``prior_precision`` is the full network's :math:`\lambda` and
        the subnetwork uses :math:`\lambda S / D` (paper, sec. 6.1);
        ``prior_precision_full_network`` keeps the given value.
    jacobian_method : {"auto", "functional", "backend"}, default="auto"
        ``"auto"``: a fast rule per module type (``nn.Linear``, ``nn.Conv2d``,
        eval ``BatchNorm``, ``nn.LayerNorm``, ``nn.Embedding``, the projections
        of ``nn.MultiheadAttention``) for every tensor whose every use in the
        forward pass the autograd graph shows to be covered by a rule (tied
        weights: all uses summed); ``torch.func`` for every other tensor. See
        :mod:`laplace_subnet_ext.jacobians.engine`.
    verify_jacobians : bool, default=True
        On the first Jacobian call (first batch of :meth:`fit`, or the first
        predictive without a fit), compare the fast columns with
        ``torch.func.vjp`` per tensor (about one extra forward + backward pass);
        a tensor that disagrees moves to the generic path, with a
        ``RuntimeWarning`` naming it.
    curvature_dtype : torch.dtype, optional
        dtype of the S x S curvature and its factorisation, float32 or float64.
        Default (None): float64 for a float64 model and for any model while
        ``S <= memory.FLOAT64_CURVATURE_MAX_S`` (10,000; a float32 H plus a small prior
        is often not numerically positive definite), float32 above it (the
        large-S memory plan); the choice is logged on the ``laplace_subnet_ext``
        logger. Jacobians stay in the model's dtype; predictions are returned in
        it.
    marglik_method : {"auto", "exact", "slq"}, default="auto"
        Scalar-prior marginal likelihood. ``"exact"``: eigenvalues of H
        (``eigvalsh``, O(S^3) once, then O(S) per prior value; laplace's Adam
        loop tunes it). ``"slq"``: the log evidence from the Cholesky factor
        (exact), and prior tuning by stochastic Lanczos quadrature plus an exact
        Newton correction (:mod:`laplace_subnet_ext.prior.large_s`), for large S.
        ``"auto"``: ``"exact"`` up to S = 10,000 (logged).
    memory_budget : int or str, optional
        Bytes (or "4GB") allowed for the dense posterior (plan: H plus one
        factor, two S x S matrices); default: free memory.
    predictive_block_bytes : int, default=256 MiB
        Upper bound of one Jacobian block in the predictive (inputs are split),
        and of one generic-path (``torch.func``) call in fit and predictive
        (inputs, and if need be outputs, are split; see
        :meth:`.SubnetJacobians.generic_plan`).
    verbose : bool, default=True
        Print a one-line summary (what ran, how long, how to speed it up) to
        stderr when selection or :meth:`fit` takes more than
        :data:`SLOW_STAGE_SECONDS`; ``fit(progress_bar=True)`` shows progress bars.

    Raises
    ------
    TypeError
        Neither ``subnetwork_indices`` nor ``subnetwork_mask`` given; wrong types.
    ValueError
        Invalid indices, prior, backend, or a dense posterior that cannot fit.
    """

    _key = INERT_KEY

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        subnetwork_indices: Any = _MISSING,
        *,
        subnetwork_mask: Any = None,
        n_params_subnet: int | None = None,
        mask_kwargs: dict[str, Any] | None = None,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        prior_rescaling: bool = False,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        jacobian_method: str = "auto",
        verify_jacobians: bool = True,
        curvature_dtype: torch.dtype | None = None,
        marglik_method: str = "auto",
        memory_budget: int | str | None = None,
        predictive_block_bytes: int = BLOCK_BYTES,
        verbose: bool = True,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}; got "
                f"{likelihood!r}."
            )
        if asdl_fisher_kwargs is not None:
            raise ValueError(
                "asdl_fisher_kwargs must be None for subnetwork Laplace; got "
                f"{asdl_fisher_kwargs!r}. Use backend_kwargs instead."
            )
        if backend is not None and not (
            isinstance(backend, type)
            and issubclass(backend, (GGNInterface, EFInterface))
        ):
            raise ValueError(
                "backend must be a laplace GGN or EF interface class (e.g. "
                f"CurvlinopsGGN, BackPackEF); got {backend!r}."
            )
        default_mask = (
            subnetwork_indices is _MISSING
            and subnetwork_mask is None
            and n_params_subnet is not None
        )
        if default_mask:
            subnetwork_mask = DEFAULT_MASK
            logger.info(
                "DenseSubnetLaplace: no subnetwork given; selecting S=%s with %r "
                "(full-network prior and noise of this posterior)",
                n_params_subnet,
                DEFAULT_MASK,
            )
        if subnetwork_indices is _MISSING and subnetwork_mask is None:
            raise TypeError(
                "DenseSubnetLaplace needs subnetwork_indices=..., subnetwork_mask=... "
                f"or n_params_subnet=... (then {DEFAULT_MASK!r} selects); got none."
            )
        self._layout: SubnetLayout | None = None
        self._prior_structure: str | None = None
        self._prior_precision_spec: torch.Tensor | None = None
        self._prior_mean_spec: torch.Tensor | None = None
        self.prior_rescaling = bool(prior_rescaling)
        self.prior_precision_full_network: torch.Tensor | None = None
        if curvature_dtype is not None and curvature_dtype not in (
            torch.float32,
            torch.float64,
        ):
            raise ValueError(
                "curvature_dtype must be torch.float32 or torch.float64; got "
                f"{curvature_dtype}. torch.linalg cannot factorise half-precision "
                "matrices; leave it None (float64 up to S = 10,000, float32 above)."
            )
        if marglik_method not in ("auto", "exact", "slq"):
            raise ValueError(
                "marglik_method must be 'auto', 'exact' or 'slq'; got "
                f"{marglik_method!r}."
            )
        self.marglik_method = marglik_method
        self.marglik_tuning_info: dict[str, Any] | None = None
        self.jacobian_method = jacobian_method
        self.verify_jacobians = bool(verify_jacobians)
        self.curvature_dtype = curvature_dtype
        self.memory_budget = (
            None if memory_budget is None else parse_bytes(memory_budget)
        )
        self.predictive_block_bytes = int(predictive_block_bytes)
        self.verbose = bool(verbose)
        self.n_params_subnet: int | None = None
        self._fitted = False  # True once fit() completes or a state is loaded
        self.H = None  # keeps ParametricLaplace from allocating a D x D matrix
        init_parametric(
            self,
            model,
            likelihood,
            sigma_noise=sigma_noise,
            prior_precision=prior_precision,
            prior_mean=prior_mean,
            temperature=temperature,
            enable_backprop=enable_backprop,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
            backend=backend,
            backend_kwargs=backend_kwargs,
        )
        self._posterior_scale = None
        self._mask = (subnetwork_mask, n_params_subnet, dict(mask_kwargs or {}))
        self._default_mask = default_mask
        if isinstance(n_params_subnet, int) and not isinstance(n_params_subnet, bool):
            self._check_plan(n_params_subnet)  # before a selection that cannot fit
        if subnetwork_indices is not _MISSING:
            if subnetwork_mask is not None:
                raise TypeError("give subnetwork_indices or subnetwork_mask, not both.")
            self._set_subnetwork(subnetwork_indices, given="subnetwork_indices")

    # ------------------------------------------------------------------ subnetwork
    @property
    def subnetwork_indices(self) -> torch.Tensor:
        """``(s,)`` long indices of the subnetwork in the parameter vector."""
        self._check_selected()
        return self._layout.indices

    @property
    def jacobians(self) -> SubnetJacobians:
        """The Jacobian engine of this subnetwork (:class:`.SubnetJacobians`)."""
        return self._jacobians

    @property
    def generic_reasons(self) -> dict[str, str]:
        """``tensor name -> why`` for every selected tensor on the generic
        (``torch.func``) Jacobian path: no rule covers it, or the graph guard, the
        sample check or the run-time check moved it there; a new dict."""
        self._check_selected()
        return self._jacobians.generic()

    @property
    def _cdtype(self) -> torch.dtype:
        """Curvature / factorisation dtype of the selected subnetwork."""
        return self._curvature_dtype_for(self.n_params_subnet)

    def _curvature_dtype_for(self, S: int | None) -> torch.dtype:
        """``curvature_dtype`` as given, else :func:`.memory.default_curvature_dtype`."""
        if self.curvature_dtype is not None:
            return self.curvature_dtype
        return default_curvature_dtype(self._dtype, S)

    def _check_selected(self) -> None:
        if self._layout is None:
            raise NotFittedError(
                "the subnetwork is not selected yet; call fit(train_loader) first "
                "(subnetwork_mask selects inside fit)."
            )

    def _check_plan(self, S: int, given: str = "n_params_subnet") -> None:
        """Refuse (``ValueError``) an S whose curvature does not fit, before any
        S x S allocation. Called by the constructor for an int ``n_params_subnet``
        (before a selection); :meth:`_set_subnetwork` also warns if the whole plan
        does not fit (:func:`.memory.check_subnet_plan`)."""
        itemsize = self._curvature_dtype_for(S).itemsize
        check_dense_fits(
            S, itemsize, self._device, self.memory_budget, given=self._given(S, given)
        )

    @staticmethod
    def _given(S: int, given: str) -> str:
        """What the user passed, for the memory messages."""
        return (
            f"n_params_subnet={S}" if given == "n_params_subnet" else f"{given} (S={S})"
        )

    def _set_subnetwork(self, indices: Any, given: str = "n_params_subnet") -> None:
        """Set the subnetwork; ``given`` names the argument it came from (for the
        memory check's message)."""
        idx = normalize_subnetwork_indices(indices, self.n_params, device=self._device)
        S = idx.numel()
        if self.curvature_dtype is None and self._dtype != torch.float64:
            logger.info(explain_curvature_dtype(self._dtype, S))
        itemsize = self._curvature_dtype_for(S).itemsize
        check_subnet_plan(  # its warning points at the user's call
            S, itemsize, self._device, self.memory_budget, self._given(S, given)
        )
        self._layout = SubnetLayout(self.model, idx)
        if self._backend is not None:
            self._backend.subnetwork_indices = idx
        self.n_params_subnet = idx.numel()
        self._jacobians = SubnetJacobians(
            self.model,
            self._layout,
            method=self.jacobian_method,
            dict_key_x=self.dict_key_x,
            backend_jacobians=self._backend_jacobians,
            verify=self.verify_jacobians,
            block_bytes=self.predictive_block_bytes,
        )
        self._init_H()
        self._apply_prior()

    @property
    def backend(self):
        """laplace's backend on the model, created on first use (with the subnetwork).

        Our own fit and predictive do not need it (see :attr:`output_curvature`),
        so BackPACK/ASDL do not hook into the model unless it is asked for.
        """
        backend = super().backend
        if self._layout is not None:
            backend.subnetwork_indices = self._layout.indices
        return backend

    @property
    def output_curvature(self) -> GGNInterface | EFInterface:
        """The backend's curvature type and loss (see :func:`.curvature.output_curvature`)."""
        if getattr(self, "_output_curvature", None) is None:
            self._output_curvature = output_curvature(
                self._backend_cls, self._backend_kwargs, self.likelihood
            )
        return self._output_curvature

    def _backend_jacobians(self, x):
        self.model.output_size = self.n_outputs  # BackPACK reads it
        return self.backend.jacobians(x)

    def _select(
        self, train_loader: DataLoader | None, progress_bar: bool = False
    ) -> torch.Tensor:
        mask, n_sub, kwargs = self._mask
        if self._default_mask:  # the default strategy sees this posterior's prior
            prior = self._prior_precision_spec
            if prior is not None and prior.numel() == 1:
                kwargs = {"prior_precision": float(prior), **kwargs}
            kwargs = {"sigma_noise": float(self.sigma_noise), **kwargs}
        start = time.perf_counter()
        idx = select_indices(
            mask,
            self.model,
            self.likelihood,
            train_loader,
            n_sub,
            kwargs,
            progress_bar=progress_bar,
            memory_budget=self.memory_budget,
        )
        name = mask if isinstance(mask, str) else getattr(mask, "__name__", None)
        name = name or type(mask).__name__
        self._summary(
            time.perf_counter() - start,
            f"selected S={idx.numel():,} of D={self.n_params:,} weights with {name!r}",
            "fit(..., progress_bar=True) shows progress; subnetwork_mask="
            "'wasserstein' or 'gradient_laplace' select in one pass over the data",
        )
        return idx

    def _summary(self, seconds: float, what: str, hint: str) -> None:
        """One line on stderr for a stage slower than :data:`SLOW_STAGE_SECONDS`."""
        logger.info("%s in %.1f s", what, seconds)
        if self.verbose and seconds > SLOW_STAGE_SECONDS:
            print(
                f"[laplace_subnet_ext] {what} in {seconds:.1f} s ({hint}; "
                "verbose=False silences this)",
                file=sys.stderr,
            )

    def _init_H(self) -> None:
        if self.n_params_subnet is None:
            self.H = None
            return
        s = self.n_params_subnet
        self.H = torch.zeros(s, s, device=self._device, dtype=self._cdtype)

    # ------------------------------------------------------------------------- fit
    def fit(
        self,
        train_loader: DataLoader,
        override: bool = True,
        progress_bar: bool = False,
    ) -> None:
        """Select the subnetwork (if a mask was given), then sum curvature and loss.

        With an initialised ``torch.distributed`` process group each rank passes
        its own shard; curvature, loss and data count are all-reduced.
        """
        if self._layout is None:
            self._set_subnetwork(self._select(train_loader, progress_bar))
        start = time.perf_counter()
        if override:
            self._init_H()
            self.loss = 0.0
            self.n_data = 0
            self._fitted = False
        self._precision.invalidate()  # (added into in place: keys change anyway)
        self.model.eval()
        self.mean = parameters_to_vector(self.params)
        if not self.enable_backprop:
            self.mean = self.mean.detach()
        N = self._n_fit_inputs = len(train_loader.dataset)
        distributed = (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        # the data-space spectrum (large-S path, H of rank < S / 8): exact
        # eigenvalues of H for every prior without an S x S factorisation
        self._rows: torch.Tensor | None = None
        self._rows_used = 0
        self._collect_rows = (
            override and not distributed and self._keeps_square_root_rows() and N > 0
        )
        pbar = tqdm.tqdm(train_loader, disable=not progress_bar)
        pbar.set_description("[Computing subnetwork Hessian]")
        loss = torch.zeros((), device=self._device, dtype=self._dtype)
        # large S: each batch updates H's upper block triangle only (half the
        # flops); the lower one is restored once, below, however the loop ends
        self._gram_upper = self.n_params_subnet > _curvature.GRAM_BLOCK
        try:
            for i, data in enumerate(pbar):
                if isinstance(data, MutableMapping):
                    X, y = to_device(data, self._device), data[self.dict_key_y]
                else:
                    X, y = data
                    X = to_device(X, self._device)
                try:
                    loss_b = self._curv_closure(X, y.to(self._device), N)
                except FloatingPointError as err:
                    raise ValueError(
                        f"train_loader batch {i} (0-based) gives a non-finite {err}; "
                        "nothing of it was added. Check that batch's inputs and targets, "
                        "and the model's dtype (float16 overflows above 65504; fit a "
                        "float32 copy)."
                    ) from None
                loss = loss + loss_b
        except BaseException:
            self._rows, self._collect_rows = None, False  # free the rows at once
            raise
        finally:
            if self._gram_upper:
                mirror_upper(self.H)
            self._gram_upper = False
        n_data = torch.tensor(N, device=self._device)
        if distributed:
            for t in (self.H, loss, n_data):
                torch.distributed.all_reduce(t)
        self.loss = self.loss + loss
        self.n_data += int(n_data)
        self._fitted = True
        self._summary(
            time.perf_counter() - start,
            f"fit: the {self.n_params_subnet:,} x {self.n_params_subnet:,} curvature "
            f"over {N:,} inputs",
            "fit(..., progress_bar=True) shows progress",
        )
        if self._collect_rows and self._rows is not None and self._rows_used > 0:
            self._precision.set_data_spectrum(self._rows[: self._rows_used])
            logger.info(
                "fit: H has rank <= %d < S=%d / %d; its eigenvalues come from the "
                "(%d, %d) data-space Gram matrix (exact; the large-S marginal "
                "likelihood needs no SLQ)",
                self._rows_used,
                self.n_params_subnet,
                DATA_SPECTRUM_RANK_DIVISOR,
                self._rows_used,
                self._rows_used,
            )
        self._rows = None

    def _keeps_square_root_rows(self) -> bool:
        """Whether ``fit`` should keep H's square-root rows: the large-S scalar
        marginal-likelihood path (:mod:`..prior.large_s`) is the one user."""
        return self._marglik_path(log=False) == "slq"

    def _row_buffer(self, n_inputs: int, k: int) -> torch.Tensor | None:
        """The square-root buffer's next rows for ``n_inputs`` inputs of ``k``
        rows each, allocated at the first batch for ``len(dataset)`` inputs when
        they number at most S / 8 rows (0.125 S x S, while fit holds H only);
        None (collection stops) if not."""
        S, n_rows = self.n_params_subnet, n_inputs * k
        if self._rows is None:
            total = self._n_fit_inputs * k
            if total * DATA_SPECTRUM_RANK_DIVISOR > S:
                self._collect_rows = False
                return None
            self._rows = torch.empty(total, S, dtype=self.H.dtype, device=self.H.device)
        start = self._rows_used
        if start + n_rows > self._rows.shape[0]:  # more inputs than len(dataset)
            self._collect_rows, self._rows = False, None
            return None
        self._rows_used += n_rows
        return self._rows[start : start + n_rows]

    def _curv_closure(self, X, y, N) -> torch.Tensor:
        r"""Add one batch's :math:`\sum_b J_S^\top \Lambda J_S` (or EF) into ``H`` in
        place; return its loss."""
        Js, f = self._jacobians(X)
        self.n_outputs = f.shape[-1]
        if self.likelihood == "regression" and y.ndim != f.ndim:
            raise ValueError(
                f"The model's output has {f.ndim} dims but the target has {y.ndim} dims."
            )
        rows = None
        if getattr(self, "_collect_rows", False):
            k = rows_per_sample(self.output_curvature, f.shape[-1])
            rows = self._row_buffer(Js.shape[0], k)
        return add_batch_curvature(
            self.output_curvature,
            Js,
            f,
            y,
            self.H,
            rows,
            upper=getattr(self, "_gram_upper", False),
        )

    # ------------------------------------------------------------------- posterior
    def _check_H_init(self) -> None:
        """Raise :class:`NotFittedError` unless :meth:`fit` has completed (or a
        state was loaded); a subnetwork given by indices is not a fit."""
        if getattr(self, "H", None) is None or not self._fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call la.fit(train_loader) "
                "before predicting, tuning the prior or reading the posterior."
            )
