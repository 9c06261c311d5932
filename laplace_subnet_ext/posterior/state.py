r"""``state_dict`` / ``load_state_dict`` of the dense subnetwork posterior.

Formats, and which loads where:

* ours (:meth:`SubnetStateMixin.state_dict`): laplace's keys plus the subnetwork
  indices, prior structure and a model signature; loads into
  :class:`~laplace_subnet_ext.DenseSubnetLaplace` only (laplace refuses any
  ``cls_name`` but its own);
* laplace's ``FullSubnetLaplace.state_dict()``: loads into ours
  (:meth:`SubnetStateMixin.load_state_dict` converts it); it does not store the
  subnetwork, so the object must have been built with the same
  ``subnetwork_indices``;
* :meth:`SubnetStateMixin.laplace_state_dict`: laplace's format written by ours,
  for ``FullSubnetLaplace.load_state_dict`` (scalar priors only: laplace's
  ``FullSubnetLaplace`` accepts no other).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = ["SubnetStateMixin"]

#: the class of laplace whose states we read and write
_LAPLACE_CLS = "FullSubnetLaplace"


class SubnetStateMixin:
    """laplace's state plus indices, prior structure and a model signature."""

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

    def laplace_state_dict(self) -> dict[str, Any]:
        r"""This posterior in the format of laplace's ``FullSubnetLaplace``.

        Load it with ``FullSubnetLaplace(model, likelihood,
        subnetwork_indices=la.subnetwork_indices).load_state_dict(...)``. H is
        cast to the model's dtype, as laplace stores it. The prior precision must be
        a scalar (laplace's ``FullSubnetLaplace`` accepts no layer-wise or
        diagonal prior); under ``prior_rescaling`` it is the subnetwork's
        :math:`\lambda S / D`, which laplace then uses as given.
        """
        if self.prior_precision.numel() != 1:
            raise ValueError(
                "laplace_state_dict needs a scalar prior precision (laplace's "
                "FullSubnetLaplace accepts no other); got "
                f"{self.prior_precision.numel()} entries. Use state_dict() to save "
                "this posterior for DenseSubnetLaplace."
            )
        state = super().state_dict()
        state["cls_name"] = _LAPLACE_CLS
        state["H"] = state["H"].to(self._dtype)
        return state

    def _from_laplace_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Our format from laplace's ``FullSubnetLaplace`` state (same subnetwork)."""
        if self._layout is None:
            raise ValueError(
                "state_dict is from laplace's FullSubnetLaplace, which does not store "
                "the subnetwork; build this object with the subnetwork_indices the "
                "state was fitted with, then load it."
            )
        S = self._layout.n_subnet
        if tuple(state_dict["H"].shape) != (S, S):
            raise ValueError(
                f"state_dict H has shape {tuple(state_dict['H'].shape)}; this "
                f"object's subnetwork has S={S}. Build it with the subnetwork_indices "
                "the state was fitted with."
            )
        prior = torch.as_tensor(state_dict["prior_precision"])
        if prior.numel() == 1:
            structure = "scalar"
        elif prior.numel() == S:
            structure = "diag"
        else:
            raise ValueError(
                f"state_dict prior_precision has {prior.numel()} entries; expected "
                f"1 or S={S}."
            )
        return {
            **state_dict,
            "cls_name": type(self).__name__,
            "subnetwork_indices": self._layout.indices,
            "prior_structure": structure,
            "prior_rescaling": False,
            "prior_precision_full_network": prior,
            "n_params": int(state_dict["mean"].numel()),
            "param_shapes": [tuple(p.shape) for p in self.params],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, or a state of laplace's ``FullSubnetLaplace``
        (see the module docstring); a mismatching model raises ``ValueError``."""
        if state_dict.get("cls_name") == _LAPLACE_CLS:
            state_dict = self._from_laplace_state(state_dict)
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
        self._warn_if_other_subnetwork(state_dict["subnetwork_indices"])
        self._prior_precision_spec = state_dict["prior_precision"]
        self._prior_mean_spec = state_dict["prior_mean"]
        self.prior_rescaling = False  # stored precision is already the subnet one
        self._layout = None
        self._prior_structure = state_dict["prior_structure"]
        self._set_subnetwork(state_dict["subnetwork_indices"], given="state_dict")
        self.prior_rescaling = state_dict["prior_rescaling"]
        self.prior_precision_full_network = state_dict["prior_precision_full_network"]
        self.mean = state_dict["mean"].to(self._device)
        self.H = state_dict["H"].to(self._device, self._cdtype, copy=True)
        self.loss = state_dict["loss"]
        self.sigma_noise = state_dict["sigma_noise"]
        self.n_data = state_dict["n_data"]
        self.n_outputs = state_dict["n_outputs"]
        self.temperature = state_dict["temperature"]
        self.enable_backprop = state_dict["enable_backprop"]
        self._fitted = True

    def _warn_if_other_subnetwork(self, indices: torch.Tensor) -> None:
        """Warn when the state's subnetwork replaces a different one of this object."""
        if self._layout is None:
            return
        old = self._layout.indices
        new = torch.as_tensor(indices).to(old.device)
        if new.shape == old.shape and torch.equal(new, old):
            return
        only_new = int((~torch.isin(new, old)).sum())
        only_old = int((~torch.isin(old, new)).sum())
        warnings.warn(
            f"load_state_dict: the state's subnetwork (S={new.numel()}) differs from "
            f"the one this object was built with (S={old.numel()}): {only_new} "
            f"indices only in the state, {only_old} only in this object"
            + (", same set in another order" if only_new == only_old == 0 else "")
            + ". The state's subnetwork is used from now on.",
            UserWarning,
            stacklevel=3,
        )
