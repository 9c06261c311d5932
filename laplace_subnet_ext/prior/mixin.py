r"""Prior precision and mean of the subnetwork posterior, as properties.

Mixed into :class:`~laplace_subnet_ext.DenseSubnetLaplace` ahead of laplace's
classes, so laplace's own code (marglik, tuning loops) reads and writes the
restricted prior through the usual ``prior_precision`` / ``prior_mean``
attributes. Before the subnetwork is known (``subnetwork_mask`` selects in
``fit``) the given values are kept and restricted at selection.
"""

from __future__ import annotations

import torch

from laplace_subnet_ext.prior.spec import (
    as_prior_tensor,
    restrict_prior_mean,
    restrict_prior_precision,
)

__all__ = ["SubnetPriorMixin"]


class SubnetPriorMixin:
    """``prior_precision`` (scalar / layer-wise / diagonal), ``prior_mean``, rescaling."""

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
