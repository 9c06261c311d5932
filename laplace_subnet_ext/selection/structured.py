r"""Layer- and unit-level selection: by name, last layer, whole neurons / channels.

Index conventions: ``p`` all parameters, ``u`` units (neurons or channels).

``StructuredMask`` keeps whole units, as group-L1 / L0 channel pruning does
(Wen et al., 2016; Louizos et al., 2018), but to *keep* them: a unit is an output
neuron of ``nn.Linear`` (its weight row and bias) or an output channel of
``nn.Conv*`` (its filter and bias); its score is the sum of a per-weight score
over those entries; units are kept by score while they fit in S.
"""

from __future__ import annotations

import torch
from torch import nn

from laplace_subnet_ext.selection.base import (
    TrainableSubnetMask,
    resolve_n_params_subnet,
    trainable,
)
from laplace_subnet_ext.selection.registry import get, register

__all__ = ["NameMask", "LastLayerMask", "StructuredMask"]


def _offsets(model: nn.Module) -> dict[int, int]:
    """Start of every trainable tensor in the posterior's parameter vector."""
    out, start = {}, 0
    for p in trainable(model):
        out[id(p)] = start
        start += p.numel()
    return out


@register("by_name")
class NameMask(TrainableSubnetMask):
    """All weights of the named parameters and/or of the named modules (recursively,
    so parameters owned by non-leaf modules are included)."""

    def __init__(
        self,
        model: nn.Module,
        parameter_names: list[str] | None = None,
        module_names: list[str] | None = None,
    ) -> None:
        super().__init__(model)
        if not parameter_names and not module_names:
            raise ValueError(
                "NameMask needs a non-empty parameter_names or module_names; got neither."
            )
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        bad = [n for n in parameter_names or [] if n not in params]
        bad += [n for n in module_names or [] if n not in modules]
        if bad:
            raise ValueError(
                f"unknown names {bad}; parameters are {list(params)[:8]}..., modules "
                f"{list(modules)[:8]}..."
            )
        self.chosen = [params[n] for n in parameter_names or []]
        for n in module_names or []:
            self.chosen += [p for p in modules[n].parameters() if p.requires_grad]
        frozen = [n for n in parameter_names or [] if not params[n].requires_grad]
        if frozen or not self.chosen:
            raise ValueError(
                f"the named tensors must require grad; frozen: {frozen or 'all'}. "
                "Unfreeze them or name trainable ones."
            )

    def get_subnet_mask(self, train_loader) -> torch.Tensor:
        mask = torch.zeros(self._n_params, dtype=torch.bool, device=self._device)
        off = _offsets(self.model)
        for p in self.chosen:
            mask[off[id(p)] : off[id(p)] + p.numel()] = True
        return mask


@register("last_layer")
class LastLayerMask(NameMask):
    """The last module (in registration order) that owns parameters, or ``last_layer_name``."""

    def __init__(self, model: nn.Module, last_layer_name: str | None = None) -> None:
        if last_layer_name is None:
            owners = [
                n for n, m in model.named_modules() if list(m.parameters(recurse=False))
            ]
            if not owners:
                raise ValueError("the model has no parameters.")
            last_layer_name = owners[-1]
        super().__init__(model, module_names=[last_layer_name])
        self.last_layer_name = last_layer_name


@register("structured")
class StructuredMask(TrainableSubnetMask):
    """Whole neurons / channels with the largest summed score, up to S weights.

    Parameters
    ----------
    model : torch.nn.Module
    n_params_subnet : int, float or "auto"
        Upper bound S; the chosen units may total slightly fewer weights.
    score : str, default="magnitude"
        A registered score-based strategy (``"magnitude"``, ``"obd"``,
        ``"gradient_energy"``, ``"wasserstein"``, ...) giving per-weight scores.
    score_kwargs : dict, optional
        Constructor arguments of that strategy (e.g. ``likelihood``).
    """

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet,
        *,
        score: str = "magnitude",
        score_kwargs: dict | None = None,
        memory_budget=None,
    ) -> None:
        super().__init__(model)
        self.max_params = resolve_n_params_subnet(
            n_params_subnet, self._n_params, memory_budget
        )
        self.scorer = get(score)(model, self.max_params, **(score_kwargs or {}))

    def units(self) -> list[torch.Tensor]:
        """Index sets ``(p,)`` of every unit; parameters of other modules are singletons."""
        off = _offsets(self.model)
        units, covered = [], set()
        for m in self.model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                w = m.weight
                if id(w) not in off or (m.bias is not None and id(m.bias) not in off):
                    continue  # frozen: not in the posterior's parameter vector
                per = w[0].numel()
                for o in range(w.shape[0]):
                    idx = [
                        torch.arange(off[id(w)] + o * per, off[id(w)] + (o + 1) * per)
                    ]
                    if m.bias is not None:
                        idx.append(torch.tensor([off[id(m.bias)] + o]))
                    units.append(torch.cat(idx))
                covered |= {id(w)} | ({id(m.bias)} if m.bias is not None else set())
        for p in trainable(self.model):
            if id(p) not in covered:
                units += list(torch.arange(off[id(p)], off[id(p)] + p.numel()).split(1))
        return units

    def get_subnet_mask(self, train_loader) -> torch.Tensor:
        scores = self.scorer.compute_param_scores(train_loader).detach().flatten()
        units = self.units()
        unit_scores = torch.stack([scores[u].sum() for u in units])
        mask = torch.zeros(self._n_params, dtype=torch.bool, device=scores.device)
        used = 0
        for k in unit_scores.argsort(descending=True).tolist():
            size = units[k].numel()
            if used + size <= self.max_params:
                mask[units[k]] = True
                used += size
        if used == 0:
            raise ValueError(
                f"n_params_subnet={self.max_params} is smaller than the smallest unit; "
                "raise it."
            )
        self.units_kept = int(sum(bool(mask[u].all()) for u in units))
        return mask
