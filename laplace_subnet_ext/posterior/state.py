r"""``state_dict`` / ``load_state_dict`` of the dense subnetwork posterior.

Formats, and which loads where:

* ours (:func:`state_dict`): laplace's keys plus the subnetwork
  indices, prior structure and a model signature; loads into
  :class:`~laplace_subnet_ext.DenseSubnetLaplace` only (laplace refuses any
  ``cls_name`` but its own);
* laplace's ``FullSubnetLaplace.state_dict()``: loads into ours
  (:func:`load_state_dict` converts it); it does not store the
  subnetwork, so the object must have been built with the same
  ``subnetwork_indices``;
* :func:`laplace_state_dict`: laplace's format written by ours,
  for ``FullSubnetLaplace.load_state_dict`` (scalar priors only: laplace's
  ``FullSubnetLaplace`` accepts no other).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = ["extra_state", "as_laplace_state", "check_state", "warn_if_other_subnetwork"]

#: the class of laplace whose states we read and write
_LAPLACE_CLS = "FullSubnetLaplace"


def extra_state(la) -> dict[str, Any]:
    """What our format adds to laplace's: the subnetwork, the prior's structure
    and rescaling, and the model's signature."""
    structure = la.prior_structure
    return {
        "subnetwork_indices": la.subnetwork_indices,
        "prior_structure": None if structure is None else str(structure.value),
        "prior_rescaling": la.prior_rescaling,
        "prior_precision_full_network": la.prior_precision_full_network,
        "n_params": la.n_params,
        "param_shapes": [tuple(p.shape) for p in la.params],
    }


def as_laplace_state(la, state: dict[str, Any]) -> dict[str, Any]:
    r"""laplace's ``state_dict`` of the posterior in the format of laplace's
    ``FullSubnetLaplace`` (scalar priors only; H in the model's dtype).

    Load it with ``FullSubnetLaplace(model, likelihood,
    subnetwork_indices=la.subnetwork_indices).load_state_dict(...)``. Under
    ``prior_rescaling`` the prior is the subnetwork's :math:`\lambda S / D`,
    which laplace then uses as given.
    """
    if la.prior_precision.numel() != 1:
        raise ValueError(
            "laplace_state_dict needs a scalar prior precision (laplace's "
            "FullSubnetLaplace accepts no other); got "
            f"{la.prior_precision.numel()} entries. Use state_dict() to save "
            "this posterior for DenseSubnetLaplace."
        )
    return {**state, "cls_name": _LAPLACE_CLS, "H": state["H"].to(la._dtype)}


def _from_laplace_state(la, state: dict[str, Any]) -> dict[str, Any]:
    """Our format from laplace's ``FullSubnetLaplace`` state (same subnetwork)."""
    S = la.n_params_subnet
    if S is None:
        raise ValueError(
            "state_dict is from laplace's FullSubnetLaplace, which does not store "
            "the subnetwork; build this object with the subnetwork_indices the "
            "state was fitted with, then load it."
        )
    if tuple(state["H"].shape) != (S, S):
        raise ValueError(
            f"state_dict H has shape {tuple(state['H'].shape)}; this "
            f"object's subnetwork has S={S}. Build it with the subnetwork_indices "
            "the state was fitted with."
        )
    prior = torch.as_tensor(state["prior_precision"])
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
        **state,
        "cls_name": type(la).__name__,
        "subnetwork_indices": la.subnetwork_indices,
        "prior_structure": structure,
        "prior_rescaling": False,
        "prior_precision_full_network": prior,
        "n_params": int(state["mean"].numel()),
        "param_shapes": [tuple(p.shape) for p in la.params],
    }


def check_state(la, state: dict[str, Any]) -> dict[str, Any]:
    """The state in our format, checked against ``la``'s model and likelihood
    (``ValueError`` naming what differs)."""
    if state.get("cls_name") == _LAPLACE_CLS:
        state = _from_laplace_state(la, state)
    if state.get("cls_name") != type(la).__name__:
        raise ValueError(
            f"state_dict is from {state.get('cls_name')!r}, not "
            f"{type(la).__name__}; check subset_of_weights and hessian_structure."
        )
    shapes = [tuple(p.shape) for p in la.params]
    if state["n_params"] != la.n_params or state["param_shapes"] != shapes:
        raise ValueError(
            "state_dict was saved for a model with D="
            f"{state['n_params']} parameters in tensors "
            f"{state['param_shapes']}; this model has D={la.n_params} in "
            f"{shapes}. Load it into the same architecture (and requires_grad)."
        )
    if state["likelihood"] != la.likelihood:
        raise ValueError(
            f"state_dict likelihood is {state['likelihood']!r}; this "
            f"posterior's is {la.likelihood!r}."
        )
    return state


def warn_if_other_subnetwork(old: torch.Tensor | None, indices: torch.Tensor) -> None:
    """Warn when the state's subnetwork replaces a different one of this object."""
    if old is None:
        return
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
        stacklevel=4,
    )
