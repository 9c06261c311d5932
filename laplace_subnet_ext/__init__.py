"""laplace-subnet-ext: dense subnetwork Laplace for laplace-torch, at scale.

Importing this package registers :class:`DenseSubnetLaplace` as the class that
``laplace.Laplace(..., subset_of_weights="subnetwork", hessian_structure="full")``
returns. :func:`register` is idempotent; :func:`unregister` restores laplace's
own ``FullSubnetLaplace``. No other ``(subset_of_weights, hessian_structure)``
key of ``laplace.Laplace`` changes.

Verbs, in pipeline order: select (:mod:`~laplace_subnet_ext.selection`),
Jacobians (:mod:`~laplace_subnet_ext.jacobians`), posterior
(:class:`DenseSubnetLaplace`: ``fit``, ``optimize_prior_precision``), predict
(``la(x, pred_type="glm")``).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # laplace imports ASDL, whose module-level torch.jit.script calls warn on
    # torch >= 2.10 at every import; nothing a user can act on
    warnings.filterwarnings(
        "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
    )
    import laplace  # noqa: F401

from laplace_subnet_ext import selection  # noqa: E402
from laplace_subnet_ext._compat import (  # noqa: E402
    register_override,
    unregister_override,
)
from laplace_subnet_ext.jacobians import register_rule  # noqa: E402
from laplace_subnet_ext.posterior import DenseSubnetLaplace, NotFittedError  # noqa: E402
from laplace_subnet_ext.training import marglik_training  # noqa: E402

__all__ = [
    "DenseSubnetLaplace",
    "NotFittedError",
    "register",
    "unregister",
    "is_registered",
    "selection",
    "register_rule",
    "marglik_training",
    "KEY",
]
__version__ = "0.1.0"

#: the ``laplace.Laplace`` key this plugin serves
KEY = ("subnetwork", "full")


def register() -> None:
    """Route ``laplace.Laplace(..., "subnetwork", "full")`` to :class:`DenseSubnetLaplace`."""
    register_override(KEY, DenseSubnetLaplace)


def unregister() -> None:
    """Give the key back to laplace's own ``FullSubnetLaplace``."""
    unregister_override(KEY)


def is_registered() -> bool:
    """Whether :func:`register` is in effect."""
    from laplace_subnet_ext._compat import registered_overrides

    return registered_overrides().get(KEY) is DenseSubnetLaplace


register()
