"""The only module that touches laplace-torch internals (tested on laplace-torch 0.3).

``laplace.Laplace`` builds ``{cls._key: cls}`` over ``_all_subclasses(BaseLaplace)``,
a *set*: when two classes share a key, which one wins depends on set order.
Registration therefore (1) gives our class the key and (2) wraps
``laplace.laplace._all_subclasses`` so that registered classes come last, i.e.
win deterministically, while every other class keeps the order laplace gives
it. :func:`unregister_override` restores the original function and an inert key.
"""

from __future__ import annotations

import laplace.laplace as _front

__all__ = ["register_override", "unregister_override", "registered_overrides"]

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
