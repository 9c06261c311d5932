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
from collections.abc import Mapping

import torch
from laplace import DiagLaplace, FullLaplace, KronLaplace
from laplace.curvature import BackPackEF, BackPackGGN
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

__all__ = [
    "blocked_diag_curvature",
    "diag_curvature",
    "laplace_variance",
    "swag_variance",
]


def diag_curvature(
    model: nn.Module, likelihood: str, train_loader: DataLoader, kind: str = "ggn"
) -> torch.Tensor:
    """``(p,)`` diagonal of the GGN (``kind="ggn"``) or empirical Fisher (``"ef"``).

    Uses laplace's BackPACK backend (fast, exact diagonal) on a copy of the model,
    so BackPACK's hooks never touch the caller's model. Models BackPACK cannot
    handle (non-sequential containers, attention, Hugging Face models) fall back to
    :func:`blocked_diag_curvature`, exact and memory-bounded.
    """
    backend = BackPackGGN if kind == "ggn" else BackPackEF
    try:
        la = DiagLaplace(copy.deepcopy(model), likelihood, backend=backend)
        with warnings.catch_warnings():
            # BackPACK's hooks on the copy; harmless, and not the user's model
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            la.fit(train_loader)
        return la.H.detach()
    except (NotImplementedError, RuntimeError, TypeError, ValueError, AttributeError):
        return blocked_diag_curvature(model, likelihood, train_loader, kind)


def blocked_diag_curvature(
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader,
    kind: str = "ggn",
    block_bytes: int = 2**28,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
) -> torch.Tensor:
    r"""``(p,)`` exact diagonal GGN / EF from this package's subnetwork Jacobians.

    Columns are processed in blocks whose Jacobian ``(b, c, block)`` stays below
    ``block_bytes``; each block costs one pass over the data. Per batch:
    :math:`\sum_b \operatorname{diag}(J_b^\top \Lambda_b J_b)` (GGN) or
    :math:`\text{factor} \sum_b g_b^2` with :math:`g_b = J_b^\top \partial\ell/\partial f_b`
    (EF), the conventions of laplace's backends (:mod:`laplace_subnet_ext.posterior.curvature`).
    """
    from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
    from laplace_subnet_ext.jacobians.batching import batch_size
    from laplace_subnet_ext.posterior.curvature import output_curvature
    from laplace_subnet_ext.selection.base import trainable

    curv = output_curvature(
        BackPackGGN if kind == "ggn" else BackPackEF, {}, likelihood
    )

    def batches():
        for data in train_loader:
            if isinstance(data, Mapping):
                yield data, data[dict_key_y]
            else:
                yield data[0], data[1]

    params = trainable(model)
    D = sum(p.numel() for p in params)
    X0, _ = next(iter(batches()))
    with torch.no_grad():
        c = model(X0).shape[-1]
    b = batch_size(X0, dict_key_x)
    itemsize = params[0].element_size()
    block = max(1, min(D, block_bytes // (itemsize * b * c)))
    diag = torch.zeros(D, dtype=params[0].dtype, device=params[0].device)
    for start in range(0, D, block):
        idx = torch.arange(start, min(D, start + block), device=diag.device)
        jac = SubnetJacobians(model, SubnetLayout(model, idx), dict_key_x=dict_key_x)
        for X, y in batches():
            Js, f = jac(X)
            y = y.to(f.device)
            if kind == "ef":
                f_ = f.detach().requires_grad_(True)
                with torch.enable_grad():
                    (r,) = torch.autograd.grad(curv.lossfunc(f_, y), f_)
                g = torch.einsum("bcs,bc->bs", Js, r)
                diag[idx] += curv.factor * g.pow(2).sum(0)
                continue
            Lam = curv._get_functional_hessian(f)
            diag[idx] += (
                Js.pow(2).sum((0, 1))
                if Lam is None
                else torch.einsum("bcs,bck,bks->s", Js, Lam, Js)
            )
    return diag


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
