r"""`DenseSubnetLaplace`: laplace's face of the dense subnetwork posterior.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``p`` all parameters,
``s``/``t`` subnetwork parameters.

A thin adapter: the state lives in one :class:`.dense_posterior.DensePosterior`
(the layout, the prior, :math:`\sigma`, :math:`T`, the fit's results and the
:class:`.precision.DensePrecision` that owns H), and every attribute laplace's
code reads or writes (``H``, ``prior_precision``, ``sigma_noise``'s
``_sigma_noise``, ``loss``, ``mean``, ``_backend``, ``_posterior_scale``, ...)
is a property here that delegates to it. After ``__init__`` the instance's own
``__dict__`` holds laplace's constants only; nothing writes it again
(``tests/test_subnet_api.py`` checks this over a whole workflow).
"""

from __future__ import annotations

import logging
import sys
import time
from math import log, pi
from typing import Any

import torch
from laplace import FullSubnetLaplace
from laplace.curvature import EFInterface, GGNInterface
from laplace.utils.enums import Likelihood, PredType, PriorStructure, TuningMethod
from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext._compat import init_parametric
from laplace_subnet_ext.jacobians import SubnetJacobians
from laplace_subnet_ext.jacobians.engine import BLOCK_BYTES
from laplace_subnet_ext.numerics.curvature import output_curvature
from laplace_subnet_ext.numerics.memory import (
    EIGH_MATRICES,
    check_dense_fits,
    check_subnet_plan,
    explain_curvature_dtype,
    parse_bytes,
)
from laplace_subnet_ext.posterior import state as _state
from laplace_subnet_ext.posterior.dense_posterior import (
    DensePosterior,
    MarglikMethod,
    PosteriorOptions,
)
from laplace_subnet_ext.posterior.indices import normalize_subnetwork_indices
from laplace_subnet_ext.posterior.precision import DensePrecision
from laplace_subnet_ext.prior import tuning
from laplace_subnet_ext.prior.large_s import SLQ_DEFAULTS, tune_scalar_prior_slq
from laplace_subnet_ext.prior.spec import as_prior_tensor
from laplace_subnet_ext.prior.subnet_prior import SubnetPrior
from laplace_subnet_ext.selection.resolve import select_indices

__all__ = ["DenseSubnetLaplace", "NotFittedError", "DEFAULT_MASK"]

_MISSING: Any = object()
#: the likelihoods laplace accepts (``laplace.utils.enums.Likelihood``)
LIKELIHOODS = tuple(lik.value for lik in Likelihood)
logger = logging.getLogger("laplace_subnet_ext")
#: dispatch key while the plugin is not registered (never built by laplace.Laplace)
INERT_KEY = ("subnetwork", "full", "laplace_subnet_ext:unregistered")

#: the selection strategy used when only ``n_params_subnet`` is given (README,
#: "Which weights": best in 25 of 25 cells of the five-model study)
DEFAULT_MASK = "greedy_laplace"

#: selection or fit taking longer than this (seconds) prints a one-line summary
#: to stderr unless ``verbose=False``
SLOW_STAGE_SECONDS = 5.0


class NotFittedError(RuntimeError, AttributeError):
    """Raised when a fitted posterior is needed; also an ``AttributeError`` as in laplace."""


def _delegated(name: str, doc: str, setter: str | None = None) -> property:
    """A property reading ``self._post.<name>`` (and writing through
    ``self._post.<setter>(value)``)."""

    def get(self):
        return getattr(self._post, name)

    def put(self, value):
        getattr(self._post, setter)(value)

    return property(get, put if setter else None, doc=doc)


class DenseSubnetLaplace(FullSubnetLaplace):
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

    Attributes
    ----------
    selection : SubnetMask or None
        The mask object that selected the subnetwork in :meth:`fit` (its
        attributes record what it did: for the default, ``stage_seconds``,
        ``chosen_by``, ``objective``, ``greedy_skipped``); None when the
        subnetwork was given as indices.
    selection_seconds : float or None
        The selection's wall time in :meth:`fit`.

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
        if curvature_dtype is not None and curvature_dtype not in (
            torch.float32,
            torch.float64,
        ):
            raise ValueError(
                "curvature_dtype must be torch.float32 or torch.float64; got "
                f"{curvature_dtype}. torch.linalg cannot factorise half-precision "
                "matrices; leave it None (float64 up to S = 10,000, float32 above)."
            )
        if marglik_method not in tuple(MarglikMethod):
            raise ValueError(
                "marglik_method must be 'auto', 'exact' or 'slq'; got "
                f"{marglik_method!r}."
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
        if subnetwork_indices is not _MISSING and subnetwork_mask is not None:
            raise TypeError("give subnetwork_indices or subnetwork_mask, not both.")
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("model has no parameter with requires_grad=True.")
        options = PosteriorOptions(
            jacobian_method=jacobian_method,
            verify_jacobians=bool(verify_jacobians),
            curvature_dtype=curvature_dtype,
            memory_budget=None if memory_budget is None else parse_bytes(memory_budget),
            predictive_block_bytes=int(predictive_block_bytes),
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
        )
        device, dtype = trainable[0].device, trainable[0].dtype
        prior = SubnetPrior(prior_precision, prior_mean, prior_rescaling, device, dtype)
        # the owner first: laplace's __init__ writes through the properties below
        self._post = DensePosterior(
            model,
            prior,
            options,
            torch.ones((), dtype=dtype),
            temperature,
            None,
            marglik_method,
        )
        self.verbose = bool(verbose)
        self._mask = (subnetwork_mask, n_params_subnet, dict(mask_kwargs or {}))
        #: the mask object that selected in :meth:`fit` (its attributes record
        #: what the selection did, e.g. ``stage_seconds``, ``chosen_by``), and
        #: the selection's seconds; None when the subnetwork was given
        self._selected_by: dict = {"mask": None, "seconds": None}
        self._default_mask = default_mask
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
        if isinstance(n_params_subnet, int) and not isinstance(n_params_subnet, bool):
            self._check_plan(n_params_subnet)  # before a selection that cannot fit
        if subnetwork_indices is not _MISSING:
            self._set_subnetwork(subnetwork_indices, given="subnetwork_indices")

    # ---------------------------------------------- laplace's state, delegated
    H = _delegated(
        "H",
        "``(s, t)`` curvature, owned by the posterior's DensePrecision (None before "
        "fit). Assigning a tensor replaces it (new caches).",
        "set_curvature",
    )
    loss = _delegated("loss", "Summed training loss of the fit.", "set_loss")
    n_data = _delegated("n_data", "Training inputs seen by the fit.", "set_n_data")
    n_outputs = _delegated("n_outputs", "Model outputs c.", "set_n_outputs")
    mean = _delegated("mean", "``(p,)`` MAP parameter vector (all D).", "set_mean")
    temperature = _delegated(
        "temperature", "Likelihood temperature T.", "set_temperature"
    )
    _sigma_noise = _delegated(
        "sigma_noise", "laplace's storage of sigma_noise.", "set_sigma_noise"
    )
    _backend = _delegated("backend", "laplace's backend (built lazily).", "set_backend")

    @property
    def _posterior_scale(self) -> torch.Tensor | None:
        """The factor buffer (laplace's name), None unless held for the current state."""
        p = self._post.precision_object
        return None if p is None or p.prior_diag is None else p.buffer()

    @_posterior_scale.setter
    def _posterior_scale(self, value: None) -> None:
        if value is not None:
            raise AttributeError(
                "_posterior_scale is owned by the posterior's DensePrecision; only "
                "None (invalidate) may be assigned."
            )
        p = self._post.precision_object
        if p is not None:
            p.invalidate_factor()

    @property
    def _H_factor(self) -> torch.Tensor:
        r""":math:`h = 1/(\sigma^2 T)`."""
        return self._post.h

    @property
    def _fitted(self) -> bool:
        return self._post.fitted

    @property
    def marglik_tuning_info(self) -> dict[str, Any] | None:
        """Details of the last prior tuning if it took the large-S scalar path (a
        new dict), else None."""
        return self._post.tuning_info

    # the constructor's settings (one definition: the posterior's options)
    jacobian_method = property(lambda self: self._post.options.jacobian_method)
    verify_jacobians = property(lambda self: self._post.options.verify_jacobians)
    curvature_dtype = property(lambda self: self._post.options.curvature_dtype)
    marglik_method = property(
        lambda self: self._post.marglik_method.value,
        lambda self, value: self._post.set_marglik_method(value),
        doc="``'auto'``, ``'exact'`` or ``'slq'`` (see the constructor); settable.",
    )
    memory_budget = property(lambda self: self._post.options.memory_budget)
    predictive_block_bytes = property(
        lambda self: self._post.options.predictive_block_bytes
    )

    # -------------------------------------------------------------------- prior
    @property
    def prior_precision(self) -> torch.Tensor:
        """Subnetwork prior precision: length 1, one per touched tensor, or S (as
        given before selection); a new tensor."""
        return self._post.prior.precision

    @prior_precision.setter
    def prior_precision(self, value: float | torch.Tensor) -> None:
        self._post.prior.set_precision(value, self._post.layout)

    @property
    def prior_mean(self) -> torch.Tensor:
        """Length 1 or S (as given before selection); a new tensor."""
        return self._post.prior.mean

    @prior_mean.setter
    def prior_mean(self, value: float | torch.Tensor) -> None:
        self._post.prior.set_mean(value, self._post.layout)

    @property
    def prior_structure(self) -> PriorStructure | None:
        """``"scalar"``, ``"layerwise"`` or ``"diag"`` (laplace's ``PriorStructure``,
        a str enum; None before selection)."""
        return self._post.prior.structure

    @property
    def prior_rescaling(self) -> bool:
        """Whether the given prior is the full network's, used as :math:`\\lambda S/D`."""
        return self._post.prior.rescaling

    @property
    def prior_precision_full_network(self) -> torch.Tensor | None:
        """The prior precision as given, before the S/D rescaling (None before
        selection)."""
        return self._post.prior.full_network

    @property
    def prior_precision_diag(self) -> torch.Tensor:
        """``(s,)`` diagonal of the subnetwork prior precision :math:`P_0`."""
        self._check_selected()
        return self._post.prior.diag(self._post.layout)

    @property
    def scatter(self) -> torch.Tensor:
        r""":math:`(\hat\theta_S - \mu_0)^\top P_0 (\hat\theta_S - \mu_0)`."""
        return self._post.scatter()

    # --------------------------------------------------------------- subnetwork
    @property
    def n_params_subnet(self) -> int | None:
        """S (None before selection)."""
        return self._post.n_subnet

    @property
    def subnetwork_indices(self) -> torch.Tensor:
        """``(s,)`` long indices of the subnetwork in the parameter vector (a copy)."""
        self._check_selected()
        return self._post.layout.indices.clone()

    @property
    def mean_subnet(self) -> torch.Tensor:
        """``(s,)`` MAP of the subnetwork weights (no laplace backend needed)."""
        self._check_selected()
        return self._post.mean_subnet

    def assemble_full_samples(self, subnet_samples: torch.Tensor) -> torch.Tensor:
        """``(n, p)``: the subnetwork samples, every other weight at the MAP."""
        full = self.mean.repeat(subnet_samples.shape[0], 1)
        full[:, self._post.layout.indices] = subnet_samples
        return full

    @property
    def jacobians(self) -> SubnetJacobians:
        """The Jacobian engine of this subnetwork (:class:`.SubnetJacobians`)."""
        self._check_selected()
        return self._post.jacobians

    @property
    def selection(self):
        """The mask object that selected the subnetwork in :meth:`fit`, or None
        when the subnetwork was given (class docstring)."""
        return self._selected_by["mask"]

    @property
    def selection_seconds(self) -> float | None:
        """The selection's wall time in :meth:`fit`, or None."""
        return self._selected_by["seconds"]

    @property
    def generic_reasons(self) -> dict[str, str]:
        """``tensor name -> why`` for every selected tensor on the generic
        (``torch.func``) Jacobian path: no rule covers it, or the graph guard, the
        sample check or the run-time check moved it there; a new dict."""
        self._check_selected()
        return self._post.jacobians.generic()

    @property
    def _cdtype(self) -> torch.dtype:
        """Curvature / factorisation dtype of the selected subnetwork."""
        return self._post.curvature_dtype_for(self.n_params_subnet, self._dtype)

    def _check_selected(self) -> None:
        if self._post.layout is None:
            raise NotFittedError(
                "the subnetwork is not selected yet; call fit(train_loader) first "
                "(subnetwork_mask selects inside fit)."
            )

    def _check_plan(self, S: int, given: str = "n_params_subnet") -> None:
        """Refuse (``ValueError``) an S whose curvature does not fit, before any
        S x S allocation. Called by the constructor for an int ``n_params_subnet``
        (before a selection); :meth:`_set_subnetwork` also warns if the whole plan
        does not fit (:func:`.memory.check_subnet_plan`)."""
        itemsize = self._post.curvature_dtype_for(S, self._dtype).itemsize
        check_dense_fits(
            S, itemsize, self._device, self.memory_budget, given=self._given(S, given)
        )

    @staticmethod
    def _given(S: int, given: str) -> str:
        """What the user passed, for the memory messages."""
        return (
            f"n_params_subnet={S}" if given == "n_params_subnet" else f"{given} (S={S})"
        )

    def _set_subnetwork(
        self, indices: Any, given: str = "n_params_subnet", restrict_prior: bool = True
    ) -> None:
        """Select the subnetwork; ``given`` names the argument it came from (for the
        memory check's message)."""
        idx = normalize_subnetwork_indices(indices, self.n_params, device=self._device)
        S = idx.numel()
        if self.curvature_dtype is None and self._dtype != torch.float64:
            logger.info(explain_curvature_dtype(self._dtype, S))
        cdtype = self._post.curvature_dtype_for(S, self._dtype)
        check_subnet_plan(  # its warning points at the user's call
            S, cdtype.itemsize, self._device, self.memory_budget, self._given(S, given)
        )
        H = torch.zeros(S, S, device=self._device, dtype=cdtype)
        self._post.select(idx, H, self._backend_jacobians, restrict_prior)

    @property
    def backend(self):
        """laplace's backend on the model, created on first use (with the subnetwork).

        Our own fit and predictive do not need it (see :attr:`output_curvature`),
        so BackPACK/ASDL do not hook into the model unless it is asked for.
        """
        return super().backend

    @property
    def output_curvature(self) -> GGNInterface | EFInterface:
        """The backend's curvature type and loss (see :func:`.curvature.output_curvature`)."""
        return output_curvature(
            self._backend_cls, self._backend_kwargs, self.likelihood
        )

    def _backend_jacobians(self, x):
        self.model.output_size = self.n_outputs  # BackPACK reads it
        return self.backend.jacobians(x)

    def _select(
        self, train_loader: DataLoader | None, progress_bar: bool = False
    ) -> torch.Tensor:
        mask, n_sub, kwargs = self._mask
        if self._default_mask:  # the default strategy sees this posterior's prior
            prior = self._post.prior.precision
            if prior.numel() == 1:
                kwargs = {"prior_precision": float(prior), **kwargs}
            kwargs = {"sigma_noise": float(self.sigma_noise), **kwargs}
        start = time.perf_counter()
        built: list = []
        idx = select_indices(
            mask,
            self.model,
            self.likelihood,
            train_loader,
            n_sub,
            kwargs,
            progress_bar=progress_bar,
            memory_budget=self.memory_budget,
            built=built,
        )
        self._selected_by["mask"] = built[0]
        self._selected_by["seconds"] = time.perf_counter() - start
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
        """laplace's hook: a zero S x S curvature (None before selection)."""
        S = self.n_params_subnet
        self._post.set_curvature(
            None
            if S is None
            else torch.zeros(S, S, device=self._device, dtype=self._cdtype)
        )

    # ----------------------------------------------------------------------- fit
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
        if self._post.layout is None:
            self._set_subnetwork(self._select(train_loader, progress_bar))
        start = time.perf_counter()
        S = self.n_params_subnet
        N = self._post.fit(
            train_loader,
            self.output_curvature,
            override=override,
            progress_bar=progress_bar,
            # the large-S scalar marglik path is the one user of the rows
            keep_rows=self._post.marglik_path(log=False) == MarglikMethod.SLQ,
            zeros=lambda: torch.zeros(S, S, device=self._device, dtype=self._cdtype),
            device=self._device,
            dtype=self._dtype,
            enable_backprop=self.enable_backprop,
        )
        self._summary(
            time.perf_counter() - start,
            f"fit: the {S:,} x {S:,} curvature over {N:,} inputs",
            "fit(..., progress_bar=True) shows progress",
        )

    def _check_H_init(self) -> None:
        """Raise :class:`NotFittedError` unless :meth:`fit` has completed (or a
        state was loaded); a subnetwork given by indices is not a fit."""
        if self._post.H is None or not self._post.fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call la.fit(train_loader) "
                "before predicting, tuning the prior or reading the posterior."
            )

    # ----------------------------------------------------------- the precision
    @property
    def precision(self) -> DensePrecision:
        r"""The :class:`.precision.DensePrecision` :math:`hH + P_0` at the current
        prior and noise: log det, whitening, covariance, square root, samples and
        the spectra of H, with their caches."""
        self._check_H_init()
        return self._post.precision()

    def eigendecompose(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Compute (once per curvature) and cache :math:`H = V \operatorname{diag}(g) V^\top`.

        Afterwards, with a scalar prior, the posterior covariance, samples and GLM
        predictive for *any* :math:`(\lambda, \sigma)` cost O(S^2) (projected
        Jacobians :math:`J_S V`) instead of a Cholesky factorisation per value.
        Called automatically by prior grid search.

        Returns
        -------
        g : torch.Tensor
            ``(s,)`` eigenvalues, clipped at 0 (a copy).
        V : torch.Tensor
            ``(s, t)`` eigenvectors (a copy: one more S x S matrix, checked
            against the memory plan; the cache itself is not handed out).
        """
        self._check_H_init()
        return self._post.precision_object.eigh()

    @property
    def _uses_eig(self) -> bool:
        """Scalar prior and a cached eigendecomposition of the current curvature."""
        return self._post.uses_eig()

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
        :math:`\partial/\partial h = (S - \sum_i \Sigma_{ii} P_{0,ii})/h`."""
        self._check_H_init()
        return self._post.log_det_posterior_precision()

    @property
    def log_det_ratio(self) -> torch.Tensor:
        r""":math:`\log\det P - \log\det P_0`, formed without cancellation
        (:func:`.evidence.log_det_ratio` on the exact path; both sums in float64
        on the Cholesky path)."""
        self._check_H_init()
        return self._post.log_det_ratio()

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
            value = value[..., self._post.layout.indices]
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

    # ---------------------------------------------------------------- predictive
    def __call__(self, x, pred_type="glm", *args, progress_bar: bool = False, **kw):
        """laplace's predictive; ``progress_bar=True`` shows predictive blocks.

        Raises :class:`~laplace_subnet_ext.NotFittedError` before :meth:`fit`
        (a subnetwork given by indices alone is not a fitted posterior)."""
        self._check_H_init()
        self._post.set_progress(progress_bar)
        try:
            return super().__call__(x, pred_type, *args, **kw)
        finally:
            self._post.set_progress(False)

    def _glm_predictive_distribution(
        self, X, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GLM predictive, input blocks below ``predictive_block_bytes``."""
        self._check_selected()
        self._check_H_init()
        if self.enable_backprop:  # differentiable route: laplace's backend Jacobians
            return super()._glm_predictive_distribution(X, joint, diagonal_output)
        return self._post.glm_predictive(
            X, joint, diagonal_output, self._device, self._dtype, self._cdtype
        )

    # --------------------------------------------------------------- prior tuning
    def optimize_prior_precision(
        self,
        pred_type: str = PredType.GLM,
        method: str = TuningMethod.MARGLIK,
        n_steps: int = 100,
        lr: float = 1e-1,
        init_prior_prec: float | torch.Tensor = 1.0,
        prior_structure: str = PriorStructure.SCALAR,
        **kwargs: Any,
    ) -> None:
        """laplace's prior tuning on the subnetwork, for every ``prior_structure``.

        ``"scalar"`` marglik steps cost O(S) after one ``eigvalsh`` on the exact
        path; on the large-S path (``marglik_method``) the scalar prior is found
        by stochastic Lanczos quadrature plus an exact Newton correction
        (``n_steps`` / ``lr`` unused; details in ``marglik_tuning_info``).
        ``"layerwise"`` (one precision per touched tensor) and ``"diag"``
        factorise the S x S precision in place at every step (O(S^3)). Grid
        search eigendecomposes H once where that fits in memory (S <= 10,000),
        else factorises per grid value. Other keyword arguments as in
        ``laplace.BaseLaplace.optimize_prior_precision``.
        """
        tuning.check_tuning_arguments(pred_type, method, prior_structure)
        self._check_H_init()
        post = self._post
        post.set_tuning_info(None)  # it describes the last tuning only
        init = as_prior_tensor(
            init_prior_prec, "init_prior_prec", self._device, self._dtype
        )
        if method == "marglik" and init.numel() == 1 and prior_structure != "scalar":
            n = (
                len(post.layout.selections)
                if prior_structure == "layerwise"
                else self.n_params_subnet
            )
            init = init.expand(n).clone()
            post.prior.set_precision(init, post.layout, structure=prior_structure)
        if (
            method == "marglik"
            and prior_structure == "scalar"
            and init.numel() == 1
            and post.marglik_path() == MarglikMethod.SLQ
        ):
            post.set_tuning_info(tune_scalar_prior_slq(self))
            return
        if method == "gridsearch" and self._eig_affordable():
            post.precision_object.cache_eigh()  # each grid value then O(S^2)
        with tuning.quiet_link_notice(method, kwargs):
            super().optimize_prior_precision(
                pred_type, method, n_steps, lr, init, prior_structure, **kwargs
            )
        if method == "gridsearch":
            tuning.warn_grid_edge(self.prior_precision, kwargs)

    #: laplace's grid-search hook: :func:`.tuning.gridsearch` (the metric reset
    #: per value, non-finite scores skipped), ``self`` as its posterior
    _gridsearch = tuning.gridsearch

    def optimize_prior_and_noise(
        self, n_steps: int = 100, lr: float = 1e-1, tune_sigma_noise: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Maximise the log marginal likelihood jointly in :math:`\lambda` and :math:`\sigma`.

        Adam on :math:`\log\lambda` (keeping the current prior structure) and, for
        regression, :math:`\log\sigma`. With a scalar prior each step is O(S)
        after one eigendecomposition of the curvature (exact path) or of its SLQ
        spectrum (large-S path, ``marglik_method``).

        Returns
        -------
        prior_precision, sigma_noise : torch.Tensor
        """
        if tune_sigma_noise and self.likelihood != "regression":
            raise ValueError(
                "tune_sigma_noise=True needs likelihood='regression'; got "
                f"{self.likelihood!r}. Pass tune_sigma_noise=False."
            )
        self._check_H_init()
        post = self._post
        spectrum = None
        if (
            post.prior.structure == PriorStructure.SCALAR
            and post.marglik_path() == MarglikMethod.SLQ
        ):  # large S: SLQ spectrum, O(m k) per step
            spectrum = post.precision_object.slq(**SLQ_DEFAULTS)
        return tuning.optimize_prior_and_noise(
            self, n_steps, lr, tune_sigma_noise, spectrum
        )

    def _eig_affordable(self) -> bool:
        """Exact path and H's eigendecomposition fits (budget or free memory)."""
        if not self._post.exact_scalar():
            return False
        try:
            self._post.precision_object.check_fits(
                EIGH_MATRICES, "its eigendecomposition"
            )
        except ValueError:
            return False
        return True

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """laplace's state plus the subnetwork, prior structure and model signature
        (:mod:`.state`)."""
        return {**super().state_dict(), **_state.extra_state(self)}

    def laplace_state_dict(self) -> dict[str, Any]:
        """This posterior in the format of laplace's ``FullSubnetLaplace``
        (:func:`.state.as_laplace_state`)."""
        return _state.as_laplace_state(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, or a state of laplace's ``FullSubnetLaplace``
        (see :mod:`.state`); a mismatching model raises ``ValueError``."""
        state = _state.check_state(self, state_dict)
        old = None if self._post.layout is None else self._post.layout.indices
        _state.warn_if_other_subnetwork(old, state["subnetwork_indices"])
        self._set_subnetwork(
            state["subnetwork_indices"], given="state_dict", restrict_prior=False
        )
        post = self._post
        post.prior.load(
            post.layout,
            state["prior_precision"],
            state["prior_mean"],
            state["prior_structure"],
            state["prior_rescaling"],
            state["prior_precision_full_network"],
        )
        self.sigma_noise = state["sigma_noise"]
        self.temperature = state["temperature"]
        post.restore(
            state["H"].to(self._device, self._cdtype, copy=True),
            state["loss"],
            state["n_data"],
            state["n_outputs"],
            state["mean"].to(self._device),
        )
