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
from laplace.curvature import BackPackEF, BackPackGGN
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader

from laplace_subnet_ext._compat import has_module_hooks
from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch, split_batch
from laplace_subnet_ext.jacobians.engine import BLOCK_BYTES
from laplace_subnet_ext.numerics.curvature import (
    diagonal_contraction,
    output_curvature,
    output_hessian_root,
)

__all__ = [
    "backpack_applies",
    "blocked_diag_curvature",
    "diag_curvature",
    "laplace_variance",
    "swag_variance",
]


#: module types BackPACK's diagonal GGN / EF extensions derive exactly
_BACKPACK_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.LogSigmoid,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.ZeroPad2d,
)


def backpack_applies(model: nn.Module) -> bool:
    """Whether BackPACK's diagonal extensions are exact for ``model``: an
    ``nn.Sequential`` (of ``nn.Sequential``s) of the layer types it derives, with
    their own ``forward`` (BackPACK backpropagates through modules, so an
    operation outside a module would be missed), every parameter trainable
    (laplace's BackPACK backend refuses frozen ones), and no hooks already on it
    (BackPACK's own full backward hooks cannot be added beside them)."""
    if type(model) is not nn.Sequential:
        return False
    if not all(p.requires_grad for p in model.parameters()):
        return False  # laplace's BackPACK backend refuses frozen tensors
    for m in model.modules():
        # a regular backward hook, even one since removed, bars full ones
        if has_module_hooks(m):
            return False
    for m in model.children():
        if type(m) is nn.Sequential:
            if not backpack_applies(m):
                return False
        elif type(m) not in _BACKPACK_MODULES or "forward" in vars(m):
            return False
    return True


def diag_curvature(
    model: nn.Module, likelihood: str, train_loader: DataLoader, kind: str = "ggn"
) -> torch.Tensor:
    """``(p,)`` diagonal of the GGN (``kind="ggn"``) or empirical Fisher (``"ef"``).

    Where :func:`backpack_applies`, laplace's BackPACK backend on a copy of the
    model (fast; BackPACK's hooks never touch the caller's model); otherwise
    :func:`blocked_diag_curvature`, exact and memory-bounded. The route is
    decided from the model, not by catching errors.
    """
    if not backpack_applies(model):
        return blocked_diag_curvature(model, likelihood, train_loader, kind)
    backend = BackPackGGN if kind == "ggn" else BackPackEF
    la = DiagLaplace(copy.deepcopy(model), likelihood, backend=backend)
    with warnings.catch_warnings():
        # BackPACK's hooks on the copy; harmless, and not the user's model
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        la.fit(train_loader)
    return la.H.detach()


def blocked_diag_curvature(
    model: nn.Module,
    likelihood: str,
    train_loader: DataLoader,
    kind: str = "ggn",
    block_bytes: int = BLOCK_BYTES,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
    single_pass: bool = True,
) -> torch.Tensor:
    r"""``(p,)`` exact diagonal GGN / EF from this package's subnetwork Jacobians.

    Per batch: :math:`\sum_b \operatorname{diag}(J_b^\top \Lambda_b J_b)` (GGN,
    :math:`\Lambda_b = A_b A_b^\top` by :func:`~laplace_subnet_ext.numerics.curvature.output_hessian_root`)
    or :math:`\text{factor} \sum_b g_b^2` with :math:`g_b = J_b^\top
    \partial\ell/\partial f_b` (EF), the conventions of laplace's backends
    (:mod:`laplace_subnet_ext.numerics.curvature`).

    Tensors a fast rule covers: one pass over the data
    (:meth:`~laplace_subnet_ext.jacobians.SubnetJacobians.diagonal`: one
    forward and :math:`c` backward passes per chunk of inputs, each tensor's
    per-sample gradients formed and squared, never :math:`J`), in input chunks
    whose largest per-sample gradient block stays below ``block_bytes``. Every
    other tensor (and any the engine's checks demote): columns in blocks whose
    Jacobian ``(b, c, block)`` stays below ``block_bytes``, one pass over the
    data per block. ``single_pass=False`` takes the column blocks for every
    tensor (the reference route; benchmarks compare the two).
    """
    curv = output_curvature(
        BackPackGGN if kind == "ggn" else BackPackEF, {}, likelihood
    )

    def batches():
        for data in train_loader:
            yield split_batch(data, dict_key_y)

    def out_factor(f, y):
        if kind == "ggn":
            return output_hessian_root(f, likelihood)
        f_ = f.detach().requires_grad_(True)
        with torch.enable_grad():
            (r,) = torch.autograd.grad(curv.lossfunc(f_, y.to(f.device)), f_)
        return (curv.factor**0.5 * r).unsqueeze(-1)  # (b, c, 1)

    params = [p for p in model.parameters() if p.requires_grad]
    D = sum(p.numel() for p in params)
    itemsize = params[0].element_size()
    diag = torch.zeros(D, dtype=params[0].dtype, device=params[0].device)
    jac = SubnetJacobians(
        model,
        SubnetLayout(model, torch.arange(D, device=diag.device)),
        dict_key_x=dict_key_x,
        block_bytes=block_bytes,
    )
    fast = jac.split()[0] if single_pass else []
    if fast:
        idx = torch.cat([s.positions for s in fast])
        jac = SubnetJacobians(
            model, SubnetLayout(model, idx.sort().values), dict_key_x=dict_key_x
        )
        largest = max(s.param.numel() for s in fast)
        # per-sample gradients of the largest tensor, with the sum of its uses
        # and the square beside it
        chunk = max(1, block_bytes // (3 * itemsize * largest))
        part = torch.zeros(jac.layout.n_subnet, dtype=diag.dtype, device=diag.device)
        for X, y in batches():
            n = batch_size(X, dict_key_x)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                Xc, yc = slice_batch(X, start, stop, n), y[start:stop]
                d, _ = jac.diagonal(
                    Xc, lambda f, yc=yc: out_factor(f, yc), generic=False
                )
                part += d
        diag[jac.layout.indices] = part
        done = torch.zeros(D, dtype=torch.bool, device=diag.device)
        slow_now = {s.name for s in jac.split()[1]}
        for s in fast:
            if s.name not in slow_now:
                done[s.positions] = True
    else:
        done = torch.zeros(D, dtype=torch.bool, device=diag.device)
    rest = (~done).nonzero().flatten()
    if rest.numel():
        diag[rest] = 0
        X0, _ = next(iter(batches()))
        with torch.no_grad():
            c = model(X0).shape[-1]
        b = batch_size(X0, dict_key_x)
        block = max(1, min(rest.numel(), block_bytes // (itemsize * b * c)))
        for start in range(0, rest.numel(), block):
            idx = rest[start : start + block]
            cols = SubnetJacobians(
                model, SubnetLayout(model, idx), dict_key_x=dict_key_x
            )
            for X, y in batches():
                Js, f = cols(X)
                diag[idx] += diagonal_contraction(Js, out_factor(f, y))
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
    dict_key_y: str = "labels",
) -> torch.Tensor:
    """``(p,)`` diagonal SWAG variance of the trainable parameters; ``model`` is
    left exactly as given. Batches are ``(X, y)`` tuples or dicts (targets under
    ``dict_key_y``)."""
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
        for i, batch in enumerate(train_loader):
            X, y = split_batch(batch, dict_key_y)
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
