r"""Cheap full-network marginal posterior variances for Wasserstein selection.

Index conventions: ``p`` all parameters.

Each estimator returns :math:`\sigma_d^2` for all D weights (``(p,)``), from
laplace's own classes where one exists:

``diag_laplace``  :math:`1/(h H_{dd} + \lambda)`, diagonal GGN (or EF)
``kfac``          diagonal of the KFAC Laplace covariance (``KronLaplace``)
``exact``         diagonal of the full Laplace covariance (small nets only)
``swag``          diagonal SWAG over SGD iterates of a *copy* of the model,
                  accumulated with a centred Welford update (no E[p^2] - E[p]^2)
"""

from __future__ import annotations

import copy
import warnings

import torch
from laplace import DiagLaplace, FullLaplace, KronLaplace
from laplace.curvature import BackPackEF, BackPackGGN, CurvlinopsEF, CurvlinopsGGN
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

__all__ = ["diag_curvature", "laplace_variance", "swag_variance"]


def diag_curvature(
    model: nn.Module, likelihood: str, train_loader: DataLoader, kind: str = "ggn"
) -> torch.Tensor:
    """``(p,)`` diagonal of the GGN (``kind="ggn"``) or empirical Fisher (``"ef"``).

    Uses laplace's BackPACK backend (fast, exact diagonal) on a copy of the model,
    so BackPACK's hooks never touch the caller's model; models BackPACK cannot
    handle (non-sequential containers, custom modules) fall back to Curvlinops.
    """
    backends = (
        (BackPackGGN, CurvlinopsGGN) if kind == "ggn" else (BackPackEF, CurvlinopsEF)
    )
    for backend in backends:
        work = copy.deepcopy(model) if backend in (BackPackGGN, BackPackEF) else model
        try:
            la = DiagLaplace(work, likelihood, backend=backend)
            with warnings.catch_warnings():
                # BackPACK's hooks on the copy; harmless, and not the user's model
                warnings.filterwarnings(
                    "ignore", message="Full backward hook is firing"
                )
                la.fit(train_loader)
            return la.H.detach()
        except (NotImplementedError, RuntimeError, TypeError, ValueError):
            if backend is backends[-1]:
                raise
    raise AssertionError("unreachable")


def laplace_variance(
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader,
    structure: str,
    prior_precision: float,
    sigma_noise: float = 1.0,
) -> torch.Tensor:
    """``(p,)`` marginal variances of a full-network Laplace of ``structure``."""
    cls = {"diag": DiagLaplace, "kron": KronLaplace, "full": FullLaplace}[structure]
    la = cls(
        model, likelihood, prior_precision=prior_precision, sigma_noise=sigma_noise
    )
    la.fit(train_loader)
    if structure == "diag":
        return la.posterior_variance.detach()
    if structure == "kron":
        return la.posterior_precision.diag(exponent=-1).detach()
    return la.posterior_covariance.diagonal().detach()


def swag_variance(
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader,
    *,
    n_snapshots_per_epoch: int = 1,
    n_epochs: int = 10,
    lr: float = 0.01,
    weight_decay: float = 3e-4,
    momentum: float = 0.9,
) -> torch.Tensor:
    """``(p,)`` diagonal SWAG variance of the trainable parameters; ``model`` is
    left exactly as given."""
    work = copy.deepcopy(model)
    work.train()
    params = [p for p in work.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss() if likelihood == "classification" else nn.MSELoss()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n_batches = len(train_loader)
    every = max(1, n_batches // max(1, n_snapshots_per_epoch))
    mean = torch.zeros_like(parameters_to_vector(params))
    m2 = torch.zeros_like(mean)
    count = 0
    for _ in range(n_epochs):
        for i, (X, y) in enumerate(train_loader):
            opt.zero_grad()
            loss_fn(work(X), y).backward()
            opt.step()
            if (i + 1) % every == 0:
                theta = parameters_to_vector(params).detach()
                count += 1
                delta = theta - mean
                mean += delta / count
                m2 += delta * (theta - mean)
    if count < 2:
        raise ValueError(
            f"SWAG needs at least 2 snapshots; got {count}. Raise n_epochs or "
            "n_snapshots_per_epoch."
        )
    return (m2 / count).clamp_min(0.0)
