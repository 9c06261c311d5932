"""Turn a ``subnetwork_mask=`` argument (instance, class or name) into indices."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext.selection.registry import get

__all__ = ["select_indices", "build_mask"]


def build_mask(cls: type, model: nn.Module, kwargs: dict[str, Any], **offered: Any):
    """``cls(model=model, **kwargs)`` plus each ``offered`` value (None: not
    offered) that ``cls``'s constructor takes and ``kwargs`` does not set."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {"model": model, **kwargs}
    for name, value in offered.items():
        if name in params and value is not None:
            kwargs.setdefault(name, value)
    return cls(**kwargs)


def select_indices(
    mask: Any,
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader | None,
    n_params_subnet: int | float | str | None = None,
    mask_kwargs: dict[str, Any] | None = None,
    progress_bar: bool = False,
    memory_budget: int | str | None = None,
    built: list | None = None,
) -> torch.Tensor:
    """Indices chosen by ``mask``.

    ``mask`` may be a laplace/our ``SubnetMask`` instance (used as is if already
    selected), a class (built with ``model``, ``n_params_subnet`` and
    ``likelihood`` where its constructor takes them, plus ``mask_kwargs``), or a
    registered name. ``progress_bar`` and ``memory_budget`` (the posterior's, for
    ``n_params_subnet="auto"``) reach a class whose constructor takes them.
    ``built``: a list the mask object that selected is appended to (its
    attributes record what the selection did).

    Raises
    ------
    TypeError
        If ``mask`` is none of these.
    """
    kwargs = dict(mask_kwargs or {})
    if isinstance(mask, str):
        mask = get(mask)
    if isinstance(mask, type):
        mask = build_mask(
            mask,
            model,
            kwargs,
            n_params_subnet=n_params_subnet,
            likelihood=likelihood,
            progress_bar=progress_bar,
            memory_budget=memory_budget,
        )
    if not hasattr(mask, "select"):
        raise TypeError(
            "subnetwork_mask must be a SubnetMask instance or class, or a registered "
            f"name; got {type(mask).__name__}."
        )
    if built is not None:
        built.append(mask)
    if getattr(mask, "_indices", None) is not None:
        return mask.indices
    return mask.select(train_loader)
