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

import inspect
import warnings
from collections.abc import MutableMapping
from math import log, pi
from typing import Any

import torch
import tqdm
from laplace import FullSubnetLaplace
from laplace.baselaplace import ParametricLaplace
from laplace.curvature import EFInterface, GGNInterface
from laplace.utils.enums import PredType, PriorStructure, TuningMethod
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch, to_device
from laplace_subnet_ext.posterior import linalg
from laplace_subnet_ext.posterior.indices import normalize_subnetwork_indices
from laplace_subnet_ext.posterior.memory import check_dense_fits, parse_bytes
from laplace_subnet_ext.prior import (
    as_prior_tensor,
    restrict_prior_mean,
    restrict_prior_precision,
)

__all__ = ["DenseSubnetLaplace", "NotFittedError"]

_MISSING: Any = object()
#: dispatch key while the plugin is not registered (never built by laplace.Laplace)
INERT_KEY = ("subnetwork", "full", "laplace_subnet_ext:unregistered")


class NotFittedError(RuntimeError, AttributeError):
    """Raised when a fitted posterior is needed; also an ``AttributeError`` as in laplace."""


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
        S for a mask class or name that needs it.
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
        See :mod:`laplace_subnet_ext.jacobians.engine`.
    curvature_dtype : torch.dtype, optional
        dtype of the S x S curvature and its factorisation (e.g. float64 for a
        float32 model). Default: the model's dtype.
    memory_budget : int or str, optional
        Bytes (or "4GB") allowed for the dense posterior; default: free memory.
    predictive_block_bytes : int, default=256 MiB
        Upper bound of one Jacobian block in the predictive; inputs are split.

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
        curvature_dtype: torch.dtype | None = None,
        memory_budget: int | str | None = None,
        predictive_block_bytes: int = 2**28,
    ) -> None:
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
        if subnetwork_indices is _MISSING and subnetwork_mask is None:
            raise TypeError(
                "DenseSubnetLaplace needs subnetwork_indices=... or subnetwork_mask=...; "
                "got neither."
            )
        self._layout: SubnetLayout | None = None
        self._prior_structure: str | None = None
        self._prior_precision_spec: torch.Tensor | None = None
        self._prior_mean_spec: torch.Tensor | None = None
        self._eig_cache: tuple | None = None
        self.prior_rescaling = bool(prior_rescaling)
        self.prior_precision_full_network: torch.Tensor | None = None
        self.jacobian_method = jacobian_method
        self.curvature_dtype = curvature_dtype
        self.memory_budget = (
            None if memory_budget is None else parse_bytes(memory_budget)
        )
        self.predictive_block_bytes = int(predictive_block_bytes)
        self.n_params_subnet: int | None = None
        self.H = None  # keeps ParametricLaplace from allocating a D x D matrix
        ParametricLaplace.__init__(
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
        if subnetwork_indices is not _MISSING:
            if subnetwork_mask is not None:
                raise TypeError("give subnetwork_indices or subnetwork_mask, not both.")
            self._set_subnetwork(subnetwork_indices)

    # ------------------------------------------------------------------ subnetwork
    @property
    def subnetwork_indices(self) -> torch.Tensor:
        """``(s,)`` long indices of the subnetwork in the parameter vector."""
        self._check_selected()
        return self._layout.indices

    @property
    def _cdtype(self) -> torch.dtype:
        return self.curvature_dtype or self._dtype

    def _check_selected(self) -> None:
        if self._layout is None:
            raise NotFittedError(
                "the subnetwork is not selected yet; call fit(train_loader) first "
                "(subnetwork_mask selects inside fit)."
            )

    def _set_subnetwork(self, indices: Any) -> None:
        idx = normalize_subnetwork_indices(indices, self.n_params, device=self._device)
        itemsize = torch.empty((), dtype=self._cdtype).element_size()
        check_dense_fits(idx.numel(), itemsize, self._device, self.memory_budget)
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
        """The backend's curvature type (GGN / MC-Fisher / EF) and loss, on no model.

        Built as laplace's own ``GGNInterface`` / ``EFInterface`` around a
        placeholder module, so its ``lossfunc``, ``factor`` and output Hessians
        are laplace's, without hooking BackPACK/ASDL into the user's model.
        """
        if getattr(self, "_output_curvature", None) is None:
            kind = (
                EFInterface
                if issubclass(self._backend_cls, EFInterface)
                else GGNInterface
            )
            kwargs = {
                k: v
                for k, v in self._backend_kwargs.items()
                if k in ("stochastic", "num_samples")
            }
            if kind is EFInterface:
                kwargs = {}
            self._output_curvature = kind(nn.Identity(), self.likelihood, **kwargs)
        return self._output_curvature

    def _backend_jacobians(self, x):
        self.model.output_size = self.n_outputs  # BackPACK reads it
        return self.backend.jacobians(x)

    def _select(self, train_loader: DataLoader | None) -> torch.Tensor:
        mask, n_sub, kwargs = self._mask
        if isinstance(mask, str):
            from laplace_subnet_ext import selection

            mask = selection.get(mask)
        if isinstance(mask, type):
            params = inspect.signature(mask.__init__).parameters
            kwargs.setdefault("model", self.model)
            if "n_params_subnet" in params and n_sub is not None:
                kwargs.setdefault("n_params_subnet", n_sub)
            if "likelihood" in params:
                kwargs.setdefault("likelihood", self.likelihood)
            mask = mask(**kwargs)
        if not hasattr(mask, "select"):
            raise TypeError(
                "subnetwork_mask must be a SubnetMask instance or class, or a "
                f"registered name; got {type(mask).__name__}."
            )
        if getattr(mask, "_indices", None) is not None:
            return mask.indices
        return mask.select(train_loader)

    def _init_H(self) -> None:
        self._eig_cache = None
        self._posterior_scale = None
        if self.n_params_subnet is None:
            self.H = None
            return
        s = self.n_params_subnet
        self.H = torch.zeros(s, s, device=self._device, dtype=self._cdtype)

    # ----------------------------------------------------------------------- prior
    @property
    def prior_precision(self) -> torch.Tensor:
        """Subnetwork prior precision: length 1, one per touched tensor, or S."""
        if self._layout is None:
            return self._prior_precision_spec
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | torch.Tensor) -> None:
        self._posterior_scale = None
        t = as_prior_tensor(value, "prior_precision", self._device, self._dtype)
        if getattr(self, "_layout", None) is None:
            self._prior_precision_spec = t
            return
        self._prior_precision, self._prior_structure = restrict_prior_precision(
            t, self._layout, self._prior_structure
        )

    @property
    def prior_structure(self) -> str | None:
        """``"scalar"``, ``"layerwise"`` or ``"diag"`` (None before selection)."""
        return self._prior_structure

    @property
    def prior_mean(self) -> torch.Tensor:
        return self._prior_mean if self._layout is not None else self._prior_mean_spec

    @prior_mean.setter
    def prior_mean(self, value: float | torch.Tensor) -> None:
        t = as_prior_tensor(value, "prior_mean", self._device, self._dtype)
        if getattr(self, "_layout", None) is None:
            self._prior_mean_spec = t
            return
        self._prior_mean = restrict_prior_mean(t, self._layout)

    def _apply_prior(self) -> None:
        """Restrict the constructor's prior to the now known subnetwork (+ rescale)."""
        spec = self._prior_precision_spec
        self.prior_precision_full_network = spec
        if self.prior_rescaling:
            spec = spec * (self.n_params_subnet / self.n_params)
        self.prior_precision = spec
        self.prior_mean = self._prior_mean_spec

    @property
    def prior_precision_diag(self) -> torch.Tensor:
        """``(s,)`` diagonal of the subnetwork prior precision :math:`P_0`."""
        self._check_selected()
        prior = self._prior_precision
        if self._prior_structure == "scalar":
            return prior.expand(self.n_params_subnet)
        if self._prior_structure == "layerwise":
            return prior[self._layout.tensor_of_position()]
        return prior

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
            self._set_subnetwork(self._select(train_loader))
        if override:
            self._init_H()
            self.loss = 0.0
            self.n_data = 0
        self._eig_cache = None
        self._posterior_scale = None
        self.model.eval()
        self.mean = parameters_to_vector(self.params)
        if not self.enable_backprop:
            self.mean = self.mean.detach()
        N = len(train_loader.dataset)
        pbar = tqdm.tqdm(train_loader, disable=not progress_bar)
        pbar.set_description("[Computing subnetwork Hessian]")
        loss = torch.zeros((), device=self._device, dtype=self._dtype)
        for data in pbar:
            if isinstance(data, MutableMapping):
                X, y = to_device(data, self._device), data[self.dict_key_y]
            else:
                X, y = data
                X = to_device(X, self._device)
            loss_b, H_b = self._curv_closure(X, y.to(self._device), N)
            loss = loss + loss_b
            self.H += H_b
        n_data = torch.tensor(N, device=self._device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in (self.H, loss, n_data):
                torch.distributed.all_reduce(t)
        self.loss = self.loss + loss
        self.n_data += int(n_data)

    def _curv_closure(self, X, y, N) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Loss and curvature of one batch: :math:`\sum_b J_S^\top \Lambda J_S` or EF."""
        Js, f = self._jacobians(X)
        self.n_outputs = f.shape[-1]
        if self.likelihood == "regression" and y.ndim != f.ndim:
            raise ValueError(
                f"The model's output has {f.ndim} dims but the target has {y.ndim} dims."
            )
        backend = self.output_curvature
        loss = backend.factor * backend.lossfunc(f, y)
        Js = Js.to(self._cdtype)
        S = Js.shape[-1]
        if isinstance(backend, EFInterface):
            f_ = f.detach().requires_grad_(True)
            with torch.enable_grad():
                (r,) = torch.autograd.grad(backend.lossfunc(f_, y), f_)
            G = torch.einsum("bcs,bc->bs", Js, r.to(self._cdtype))
            return loss.detach(), backend.factor * (G.T @ G)
        Lam = (
            backend._get_mc_functional_fisher(f)
            if getattr(backend, "stochastic", False)
            else backend._get_functional_hessian(f)
        )
        flat = Js.reshape(-1, S)
        if Lam is None:  # regression: exact GGN with identity output Hessian
            return loss.detach(), flat.T @ flat
        LJ = torch.einsum("bck,bks->bcs", Lam.to(self._cdtype), Js).reshape(-1, S)
        return loss.detach(), flat.T @ LJ

    # ------------------------------------------------------------------- posterior
    def _check_H_init(self) -> None:
        if getattr(self, "H", None) is None:
            raise NotFittedError("Laplace not fitted. Run fit() first.")

    def _eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached clipped eigendecomposition of H (recomputed when H changes)."""
        self._check_H_init()
        key = (id(self.H), self.H._version)
        if self._eig_cache is None or self._eig_cache[0] != key:
            self._eig_cache = (key, *linalg.psd_eigh(self.H.detach()))
        return self._eig_cache[1], self._eig_cache[2]

    @property
    def _uses_eig(self) -> bool:
        return self._prior_structure == "scalar"

    @property
    def posterior_precision(self) -> torch.Tensor:
        """``(s, t)`` posterior precision :math:`h H + P_0`."""
        self._check_H_init()
        return self._H_factor * self.H + torch.diag(self.prior_precision_diag)

    @property
    def log_det_posterior_precision(self) -> torch.Tensor:
        r""":math:`\log\det P`: O(S) from the eigendecomposition for a scalar
        prior, else a Cholesky factorisation (O(S^3) per call)."""
        if self._uses_eig:
            g, _ = self._eig()
            return linalg.eig_logdet(g, self._H_factor, self._prior_precision[0])
        L = torch.linalg.cholesky(self.posterior_precision)
        return 2 * L.diagonal().log().sum()

    def _compute_scale(self) -> None:
        if self._uses_eig:
            g, V = self._eig()
            scale = linalg.eig_scale(g, V, self._H_factor, self._prior_precision[0])
            self._posterior_scale = scale
        else:
            super()._compute_scale()

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

    # ------------------------------------------------------------------ predictive
    def __call__(self, x, pred_type="glm", *args, progress_bar: bool = False, **kw):
        """laplace's predictive; ``progress_bar=True`` shows predictive blocks."""
        self._predict_pbar = progress_bar
        try:
            return super().__call__(x, pred_type, *args, **kw)
        finally:
            self._predict_pbar = False

    def _glm_predictive_distribution(
        self, X, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_selected()
        if self.enable_backprop:  # differentiable route: laplace's backend Jacobians
            return super()._glm_predictive_distribution(X, joint, diagonal_output)
        X = to_device(X, self._device)
        n = batch_size(X, self.dict_key_x)
        itemsize = torch.empty((), dtype=self._cdtype).element_size()
        per_row = max(1, self.n_outputs) * self.n_params_subnet * itemsize * 2
        block = max(1, min(n, self.predictive_block_bytes // per_row))
        starts = range(0, n, block)
        pbar = tqdm.tqdm(starts, disable=not getattr(self, "_predict_pbar", False))
        pbar.set_description("[GLM predictive]")
        f_mus, f_vars, Jss = [], [], []
        for start in pbar:
            Js, f = self._jacobians(slice_batch(X, start, min(start + block, n), n))
            f_mus.append(f)
            if joint:
                Jss.append(Js)
            else:
                fv = self.functional_variance(Js)
                f_vars.append(fv.diagonal(dim1=-2, dim2=-1) if diagonal_output else fv)
        f_mu = torch.cat(f_mus)
        if joint:
            return f_mu.flatten(), self.functional_covariance(torch.cat(Jss))
        return f_mu, torch.cat(f_vars)

    # -------------------------------------------------------------------- tuning
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

        ``"scalar"`` marglik steps cost O(S) after one eigendecomposition;
        ``"layerwise"`` (one precision per touched tensor) and ``"diag"``
        factorise the S x S precision at every step (O(S^3)). Other keyword
        arguments as in ``laplace.BaseLaplace.optimize_prior_precision``.
        """
        if pred_type not in ("glm", "nn"):
            raise ValueError(f"pred_type must be 'glm' or 'nn'; got {pred_type!r}.")
        if method not in ("marglik", "gridsearch"):
            raise ValueError(
                f"method must be 'marglik' or 'gridsearch'; got {method!r}."
            )
        if prior_structure not in ("scalar", "layerwise", "diag"):
            raise ValueError(
                "prior_structure must be 'scalar', 'layerwise' or 'diag'; got "
                f"{prior_structure!r}."
            )
        self._check_H_init()
        self._check_selected()
        init = as_prior_tensor(
            init_prior_prec, "init_prior_prec", self._device, self._dtype
        )
        if method == "marglik" and init.numel() == 1 and prior_structure != "scalar":
            n = (
                len(self._layout.selections)
                if prior_structure == "layerwise"
                else self.n_params_subnet
            )
            init = init.expand(n).clone()
            self._prior_structure = prior_structure
        ParametricLaplace.optimize_prior_precision(
            self, pred_type, method, n_steps, lr, init, prior_structure, **kwargs
        )
        if method == "gridsearch":
            base = kwargs.get("log_prior_prec_base", 10.0)
            lo = base ** kwargs.get("log_prior_prec_min", -4)
            hi = base ** kwargs.get("log_prior_prec_max", 4)
            value = float(self.prior_precision.max())
            if not lo * 1.0001 < value < hi / 1.0001:
                warnings.warn(
                    f"the tuned prior precision {value:.3g} lies on the edge of the "
                    f"search grid [{lo:.3g}, {hi:.3g}]; widen log_prior_prec_min/max.",
                    stacklevel=2,
                )

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """laplace's state plus the subnetwork, prior structure and model signature."""
        state = super().state_dict()
        state.update(
            subnetwork_indices=self.subnetwork_indices,
            prior_structure=self._prior_structure,
            prior_rescaling=self.prior_rescaling,
            prior_precision_full_network=self.prior_precision_full_network,
            n_params=self.n_params,
            param_shapes=[tuple(p.shape) for p in self.params],
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a mismatching model raises ``ValueError``."""
        if state_dict.get("cls_name") != type(self).__name__:
            raise ValueError(
                f"state_dict is from {state_dict.get('cls_name')!r}, not "
                f"{type(self).__name__}; check subset_of_weights and hessian_structure."
            )
        shapes = [tuple(p.shape) for p in self.params]
        if (
            state_dict["n_params"] != self.n_params
            or state_dict["param_shapes"] != shapes
        ):
            raise ValueError(
                "state_dict was saved for a model with D="
                f"{state_dict['n_params']} parameters in tensors "
                f"{state_dict['param_shapes']}; this model has D={self.n_params} in "
                f"{shapes}. Load it into the same architecture (and requires_grad)."
            )
        if state_dict["likelihood"] != self.likelihood:
            raise ValueError(
                f"state_dict likelihood is {state_dict['likelihood']!r}; this "
                f"posterior's is {self.likelihood!r}."
            )
        self._prior_precision_spec = state_dict["prior_precision"]
        self._prior_mean_spec = state_dict["prior_mean"]
        self.prior_rescaling = False  # stored precision is already the subnet one
        self._layout = None
        self._prior_structure = state_dict["prior_structure"]
        self._set_subnetwork(state_dict["subnetwork_indices"])
        self.prior_rescaling = state_dict["prior_rescaling"]
        self.prior_precision_full_network = state_dict["prior_precision_full_network"]
        self.mean = state_dict["mean"].to(self._device)
        self.H = state_dict["H"].to(self._device, self._cdtype)
        self.loss = state_dict["loss"]
        self.sigma_noise = state_dict["sigma_noise"]
        self.n_data = state_dict["n_data"]
        self.n_outputs = state_dict["n_outputs"]
        self.temperature = state_dict["temperature"]
        self.enable_backprop = state_dict["enable_backprop"]
        self._eig_cache = None
        self._posterior_scale = None
