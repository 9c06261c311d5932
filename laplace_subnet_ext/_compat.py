"""laplace-torch internals we rely on, in one place (tested on laplace-torch 0.3).

``laplace.Laplace`` builds ``{cls._key: cls}`` over ``_all_subclasses(BaseLaplace)``,
a *set*: when two classes share a key, which one wins depends on set order.
Registration therefore (1) gives our class the key and (2) wraps
``laplace.laplace._all_subclasses`` so that registered classes come last, i.e.
win deterministically, while every other class keeps the order laplace gives
it. :func:`unregister_override` restores the original function and an inert key.

:data:`LAPLACE_PRIVATES` lists every private name of laplace that this package
calls, overrides or reads (the posterior subclasses laplace's
``FullSubnetLaplace``, so it overrides laplace's private hooks and keeps its
private state attributes); ``tests/test_compat.py`` checks that each exists with
the expected signature, so a laplace upgrade that changes one fails there, in
one place. The output-Hessian privates of laplace's curvature interfaces are
called through :func:`functional_hessian` and :func:`mc_functional_fisher` only.

:data:`TORCH_PRIVATES` does the same for torch: the few private names the
package reads (a tensor's version counter, module hook dicts) or rebinds
(``torch.nn.functional.linear`` while an attention module runs), each behind
one function here and checked by ``tests/test_compat.py``; no other module
touches them.
"""

from __future__ import annotations

from collections.abc import Callable

import laplace.laplace as _front
import torch
import torch.nn.functional as F
from laplace.baselaplace import ParametricLaplace
from torch import nn
from torch.nn.modules import module as _torch_module

__all__ = [
    "LAPLACE_PRIVATES",
    "TORCH_PRIVATES",
    "tensor_version",
    "global_forward_hooks",
    "has_module_hooks",
    "swap_functional_linear",
    "functional_hessian",
    "init_parametric",
    "mc_functional_fisher",
    "register_override",
    "unregister_override",
    "registered_overrides",
]

#: ``(owner, name) -> parameter names`` of a method, ``"property"``, or
#: ``"attribute"`` (an instance attribute set by laplace's ``__init__``).
#: Owners: ``"FullSubnetLaplace"``, ``"GGNInterface"``, ``"ParametricLaplace"``,
#: ``"laplace.laplace"``.
LAPLACE_PRIVATES: dict[tuple[str, str], tuple[str, ...] | str] = {
    # hooks the posterior overrides (called by laplace's own methods)
    ("FullSubnetLaplace", "_init_H"): ("self",),
    ("FullSubnetLaplace", "_check_H_init"): ("self",),
    ("FullSubnetLaplace", "_compute_scale"): ("self",),
    ("FullSubnetLaplace", "_glm_predictive_distribution"): (
        "self",
        "X",
        "joint",
        "diagonal_output",
    ),
    ("FullSubnetLaplace", "_gridsearch"): (
        "self",
        "loss",
        "interval",
        "val_loader",
        "pred_type",
        "link_approx",
        "n_samples",
        "progress_bar",
    ),
    # laplace methods and properties the package calls
    ("FullSubnetLaplace", "_glm_forward_call"): (
        "self",
        "x",
        "likelihood",
        "joint",
        "link_approx",
        "n_samples",
        "diagonal_output",
    ),
    ("FullSubnetLaplace", "_H_factor"): "property",
    ("FullSubnetLaplace", "_device"): "property",
    ("FullSubnetLaplace", "_dtype"): "property",
    # state laplace's __init__ sets and its methods read
    ("FullSubnetLaplace", "_backend"): "attribute",
    ("FullSubnetLaplace", "_backend_cls"): "attribute",
    ("FullSubnetLaplace", "_backend_kwargs"): "attribute",
    ("FullSubnetLaplace", "_posterior_scale"): "attribute",
    ("FullSubnetLaplace", "_sigma_noise"): "attribute",
    ("FullSubnetLaplace", "_key"): "attribute",
    # state of laplace's SubnetMask that our strategies (its subclasses) set/read
    ("SubnetMask", "_n_params"): "attribute",
    ("SubnetMask", "_device"): "attribute",
    ("SubnetMask", "_indices"): "attribute",
    ("ScoreBasedSubnetMask", "_n_params_subnet"): "attribute",
    # output Hessians of the curvature interfaces
    ("GGNInterface", "_get_functional_hessian"): ("self", "f"),
    ("GGNInterface", "_get_mc_functional_fisher"): ("self", "f"),
    # the front door's class discovery
    ("laplace.laplace", "_all_subclasses"): ("cls",),
    # the constructor the posterior calls past FullSubnetLaplace's own (which
    # would build laplace's full-Jacobian subnetwork machinery)
    ("ParametricLaplace", "__init__"): (
        "self",
        "model",
        "likelihood",
        "sigma_noise",
        "prior_precision",
        "prior_mean",
        "temperature",
        "enable_backprop",
        "dict_key_x",
        "dict_key_y",
        "backend",
        "backend_kwargs",
        "asdl_fisher_kwargs",
    ),
}


#: torch's private names the package relies on: ``owner -> name``
TORCH_PRIVATES: dict[str, tuple[str, ...]] = {
    "torch.Tensor": ("_version",),
    "torch.nn.modules.module": ("_global_forward_hooks",),
    "torch.nn.Module": ("_forward_hooks", "_backward_hooks", "_is_full_backward_hook"),
    "torch.nn.functional": ("linear",),  # public, but rebound (see below)
}


def tensor_version(t: torch.Tensor) -> int:
    """The tensor's in-place version counter (caches keyed on it notice edits)."""
    return t._version


def global_forward_hooks() -> bool:
    """Whether global module forward hooks are registered (torch keeps them in a
    private dict; read defensively)."""
    return bool(getattr(_torch_module, "_global_forward_hooks", None))


def has_module_hooks(m: nn.Module) -> bool:
    """Whether ``m`` has forward or regular backward hooks (a regular backward
    hook, even one since removed, bars BackPACK's full backward hooks)."""
    return bool(
        m._backward_hooks or m._forward_hooks or m._is_full_backward_hook is False
    )


def swap_functional_linear(fn: Callable) -> Callable:
    """Rebind ``torch.nn.functional.linear`` to ``fn``; return the previous one.

    ``nn.MultiheadAttention`` calls ``F.linear`` by module attribute for its
    projections; the attention rule records them by swapping it for the call
    and restoring it when the module returns."""
    old = F.linear
    F.linear = fn
    return old


def init_parametric(la, model, likelihood, **kwargs) -> None:
    """Run laplace's ``ParametricLaplace.__init__`` on ``la``, skipping
    ``FullSubnetLaplace.__init__`` (it expects laplace's own subnetwork indices
    and sets up its full-Jacobian route). ``la.H`` must already be ``None`` so
    that no D x D matrix is allocated."""
    ParametricLaplace.__init__(la, model, likelihood, **kwargs)


def functional_hessian(curv, f: torch.Tensor) -> torch.Tensor | None:
    """laplace's output Hessian :math:`\\Lambda(f)` ``(b, c, k)`` of ``curv``
    (``None`` for regression: the identity)."""
    return curv._get_functional_hessian(f)


def mc_functional_fisher(curv, f: torch.Tensor) -> torch.Tensor:
    """laplace's Monte Carlo output Fisher of ``curv`` (``stochastic=True``)."""
    return curv._get_mc_functional_fisher(f)


_ORIGINAL = _front._all_subclasses
_OVERRIDES: dict[tuple, type] = {}
_INERT: dict[type, tuple] = {}


def _ordered_subclasses(cls: type) -> list[type]:
    found = _ORIGINAL(cls)
    winners = list(_OVERRIDES.values())
    return [c for c in found if c not in winners] + [c for c in winners if c in found]


def register_override(key: tuple, cls: type) -> None:
    """Make ``laplace.Laplace`` return ``cls`` for ``key`` (idempotent)."""
    if _OVERRIDES.get(key) is cls:
        return
    _INERT.setdefault(cls, cls.__dict__.get("_key"))
    cls._key = key
    _OVERRIDES[key] = cls
    _front._all_subclasses = _ordered_subclasses


def unregister_override(key: tuple) -> None:
    """Undo :func:`register_override` for ``key`` (no-op if not registered)."""
    cls = _OVERRIDES.pop(key, None)
    if cls is not None:
        cls._key = _INERT.pop(cls)
    if not _OVERRIDES:
        _front._all_subclasses = _ORIGINAL


def registered_overrides() -> dict[tuple, type]:
    """A copy of the active ``{key: class}`` overrides."""
    return dict(_OVERRIDES)
