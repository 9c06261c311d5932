r"""Prior-precision tuning on the subnetwork, for every prior structure.

laplace's loop (``BaseLaplace.optimize_prior_precision``) is reused unchanged; this
mixin validates the arguments, initialises a layer-wise or diagonal prior of the
subnetwork's shape, and warns when grid search ends on the edge of its grid.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torchmetrics
import tqdm
from laplace.baselaplace import ParametricLaplace
from laplace.utils.enums import PredType, PriorStructure, TuningMethod
from laplace.utils.utils import validate

from laplace_subnet_ext.numerics.memory import EIGH_MATRICES
from laplace_subnet_ext.prior.large_s import SLQ_DEFAULTS, tune_scalar_prior_slq
from laplace_subnet_ext.prior.spec import as_prior_tensor

__all__ = ["PriorTuningMixin"]

#: a grid-searched prior within this factor of the grid's end is "on the edge"
GRID_EDGE = 1.0001


class PriorTuningMixin:
    """``optimize_prior_precision`` for scalar, layer-wise and diagonal priors."""

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
        if (
            method == "marglik"
            and prior_structure == "scalar"
            and init.numel() == 1
            and self._marglik_path() == "slq"
        ):
            tune_scalar_prior_slq(self)
            return
        if method == "gridsearch" and self._eig_affordable():
            self.eigendecompose()  # every grid value then costs O(S^2), no Cholesky
        with warnings.catch_warnings():
            if method == "marglik" or "link_approx" in kwargs:
                # laplace's reminder that grid search scores with the probit link:
                # moot for the marginal likelihood or a link the caller chose
                warnings.filterwarnings(
                    "ignore", message="By default `link_approx` is `probit`"
                )
            ParametricLaplace.optimize_prior_precision(
                self, pred_type, method, n_steps, lr, init, prior_structure, **kwargs
            )
        if method == "gridsearch":
            base = kwargs.get("log_prior_prec_base", 10.0)
            lo = base ** kwargs.get("log_prior_prec_min", -4)
            hi = base ** kwargs.get("log_prior_prec_max", 4)
            value = float(self.prior_precision.max())
            if not lo * GRID_EDGE < value < hi / GRID_EDGE:
                warnings.warn(
                    f"the tuned prior precision {value:.3g} lies on the edge of the "
                    f"search grid [{lo:.3g}, {hi:.3g}]; widen log_prior_prec_min/max.",
                    stacklevel=2,
                )

    def _gridsearch(
        self,
        loss: Any,
        interval: torch.Tensor,
        val_loader: Any,
        pred_type: str,
        link_approx: str = "probit",
        n_samples: int = 100,
        progress_bar: bool = False,
    ) -> torch.Tensor:
        """laplace's grid search, with a stateful ``torchmetrics`` loss reset
        before every grid value. laplace 0.3 never resets it, so each value is
        scored by the running mean over all values tried so far, which favours
        the last value of an ascending grid. A non-finite score is skipped with a
        warning (laplace's ``argmin`` would select a NaN)."""
        results = []
        for value in tqdm.tqdm(interval, disable=not progress_bar):
            self.prior_precision = value
            if isinstance(loss, torchmetrics.Metric):
                loss.reset()
            try:
                result = validate(
                    self,
                    val_loader,
                    loss,
                    pred_type=pred_type,
                    link_approx=link_approx,
                    n_samples=n_samples,
                    dict_key_y=self.dict_key_y,
                )
            except (torch.linalg.LinAlgError, FloatingPointError):
                result = float("inf")
            results.append(float(result))
        scores = torch.tensor(results, dtype=torch.float64)
        bad = ~torch.isfinite(scores)
        if bool(bad.all()):
            raise FloatingPointError(
                "prior grid search: the validation loss is not finite for any prior "
                f"precision in {interval.flatten().tolist()}; check val_loader and "
                "the loss."
            )
        if bool(bad.any()):
            warnings.warn(
                "prior grid search: the validation loss is not finite for prior "
                f"precision(s) {interval.flatten()[bad].tolist()}; they are skipped "
                "(argmin over NaN would pick them).",
                RuntimeWarning,
                stacklevel=3,
            )
        return interval[int(scores.masked_fill(bad, float("inf")).argmin())]

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
        log_prior = self.prior_precision.detach().log().clone().requires_grad_(True)
        log_sigma = (
            self.sigma_noise.detach().log().clone().requires_grad_(tune_sigma_noise)
        )
        opt = torch.optim.Adam(
            [log_prior, log_sigma] if tune_sigma_noise else [log_prior], lr=lr
        )
        surrogate = self._prior_structure == "scalar" and self._marglik_path() == "slq"
        if surrogate:  # large S: SLQ spectrum, O(m k) per step
            nodes, weights = self._precision.slq(**SLQ_DEFAULTS)
        for _ in range(n_steps):
            opt.zero_grad()
            sigma = log_sigma.exp() if tune_sigma_noise else None
            if surrogate:
                lml = self._slq_log_marginal_likelihood(
                    log_prior.exp(), sigma, nodes, weights
                )
            else:
                lml = self.log_marginal_likelihood(log_prior.exp(), sigma)
            (-lml).backward()
            opt.step()
        self.prior_precision = log_prior.detach().exp()
        if tune_sigma_noise:
            self.sigma_noise = log_sigma.detach().exp()
        return self.prior_precision, self.sigma_noise

    def _slq_log_marginal_likelihood(
        self, prior: torch.Tensor, sigma: torch.Tensor | None, nodes, weights
    ) -> torch.Tensor:
        """laplace's log evidence with the SLQ spectrum in place of log det P."""
        self.prior_precision = prior
        if sigma is not None:
            self.sigma_noise = sigma
        h = self._H_factor
        lam = self._prior_precision[0]
        w, g = weights.to(lam.dtype), nodes.to(lam.dtype)
        ratio = (w * torch.log1p(h * g / lam)).sum()  # the weights sum to S
        return self.log_likelihood - 0.5 * (ratio + self.scatter)

    def _eig_affordable(self) -> bool:
        """Exact path and H's eigendecomposition fits (budget or free memory)."""
        if self._prior_structure != "scalar" or self._marglik_path() != "exact":
            return False
        try:
            self._precision.check_fits(EIGH_MATRICES, "its eigendecomposition")
        except ValueError:
            return False
        return True
