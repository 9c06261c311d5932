r"""`SubnetPrior`: the prior precision and mean of the subnetwork, one owner.

Index conventions: ``s`` subnetwork parameters, ``l`` parameter tensors.

Before the subnetwork is known (a mask selects inside ``fit``) the values are
kept as given; :meth:`SubnetPrior.restrict_to` restricts them to the selected
layout (:mod:`.spec`), with the paper's rescaling :math:`\lambda_S = \lambda S/D`
when ``rescaling`` is set. The structure is laplace's ``PriorStructure`` (a str
enum: ``"scalar"``, ``"layerwise"``, ``"diag"``). Every field is written by this
class's methods only; values are stored and handed out as copies (``clone``,
which keeps a tensor's autograd graph for marginal-likelihood tuning), so a
caller's in-place edit can never change the posterior behind its caches.
"""

from __future__ import annotations

import torch
from laplace.utils.enums import PriorStructure

from laplace_subnet_ext.jacobians.layout import SubnetLayout
from laplace_subnet_ext.prior.spec import (
    as_prior_tensor,
    restrict_prior_mean,
    restrict_prior_precision,
)

__all__ = ["SubnetPrior", "PriorStructure"]


class SubnetPrior:
    """Prior precision (scalar / layer-wise / diagonal) and mean of S weights.

    Parameters
    ----------
    precision, mean : float or torch.Tensor
        As given to the posterior (see :mod:`.spec` for the accepted lengths).
    rescaling : bool
        Whether ``precision`` is the full network's :math:`\\lambda`, used as
        :math:`\\lambda S / D` on the subnetwork.
    device, dtype
        Of the model.
    """

    __slots__ = (
        "_device",
        "_dtype",
        "_given_precision",
        "_given_mean",
        "_precision",
        "_mean",
        "_structure",
        "_rescaling",
        "_full_network",
    )

    def __init__(
        self,
        precision: float | torch.Tensor,
        mean: float | torch.Tensor,
        rescaling: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self._device, self._dtype = device, dtype
        self._given_precision = self._tensor(precision, "prior_precision")
        self._given_mean = self._tensor(mean, "prior_mean")
        self._precision: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._structure: PriorStructure | None = None
        self._rescaling = bool(rescaling)
        self._full_network: torch.Tensor | None = None

    def _tensor(self, value, argument: str) -> torch.Tensor:
        return as_prior_tensor(value, argument, self._device, self._dtype).clone()

    # ------------------------------------------------------------------ reads
    @property
    def selected(self) -> bool:
        """Whether the values are restricted to a subnetwork."""
        return self._precision is not None

    @property
    def precision(self) -> torch.Tensor:
        """Length 1, one per touched tensor, or S (as given before selection)."""
        p = self._precision if self.selected else self._given_precision
        return p.clone()

    @property
    def mean(self) -> torch.Tensor:
        """Length 1 or S (as given before selection)."""
        return (self._mean if self.selected else self._given_mean).clone()

    @property
    def structure(self) -> PriorStructure | None:
        """The structure of :attr:`precision` (None before selection)."""
        return self._structure

    @property
    def rescaling(self) -> bool:
        return self._rescaling

    @property
    def full_network(self) -> torch.Tensor | None:
        """The precision as given at selection, before the S/D rescaling."""
        return None if self._full_network is None else self._full_network.clone()

    @property
    def scalar(self) -> torch.Tensor | None:
        """The one :math:`\\lambda` of a scalar prior (keeps its graph), else None."""
        if self._structure != PriorStructure.SCALAR:
            return None
        return self._precision[0]

    def diag(self, layout: SubnetLayout) -> torch.Tensor:
        """``(s,)`` diagonal of the prior precision :math:`P_0` (keeps its graph)."""
        p = self._precision
        if self._structure == PriorStructure.SCALAR:
            return p.expand(layout.n_subnet)
        if self._structure == PriorStructure.LAYERWISE:
            return p[layout.tensor_of_position()]
        return p

    # ----------------------------------------------------------------- writes
    def set_precision(
        self,
        value: float | torch.Tensor,
        layout: SubnetLayout | None,
        structure: str | None = None,
    ) -> None:
        """Set the precision (restricted to ``layout`` if one is selected).
        ``structure`` forces how a value of ambiguous length is read (a
        layer-wise prior whose length equals S stays layer-wise)."""
        t = self._tensor(value, "prior_precision")
        if layout is None:
            self._given_precision = t
            return
        current = self._structure if structure is None else PriorStructure(structure)
        p, s = restrict_prior_precision(t, layout, current)
        self._precision, self._structure = p, PriorStructure(s)

    def set_mean(
        self, value: float | torch.Tensor, layout: SubnetLayout | None
    ) -> None:
        t = self._tensor(value, "prior_mean")
        if layout is None:
            self._given_mean = t
            return
        self._mean = restrict_prior_mean(t, layout)

    def restrict_to(self, layout: SubnetLayout) -> None:
        """Restrict the given values to a newly selected subnetwork (+ rescaling)."""
        spec = self._given_precision
        self._full_network = spec.clone()
        if self._rescaling:
            spec = spec * (layout.n_subnet / layout.n_params)
        self._structure = None
        self.set_precision(spec, layout)
        self.set_mean(self._given_mean, layout)

    def load(
        self,
        layout: SubnetLayout,
        precision: torch.Tensor,
        mean: torch.Tensor,
        structure: str,
        rescaling: bool,
        full_network: torch.Tensor | None,
    ) -> None:
        """Restore a saved subnetwork prior as it was (no rescaling applied)."""
        self._given_precision = self._tensor(precision, "prior_precision")
        self._given_mean = self._tensor(mean, "prior_mean")
        self._structure = PriorStructure(structure)
        self.set_precision(self._given_precision, layout)
        self.set_mean(self._given_mean, layout)
        self._rescaling = bool(rescaling)
        self._full_network = (
            None if full_network is None else torch.as_tensor(full_network).clone()
        )
