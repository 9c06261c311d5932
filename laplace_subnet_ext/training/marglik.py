r"""Online marginal-likelihood training with a dense subnetwork posterior.

laplace's ``marglik_training`` (Immer et al., ICML 2021, Algorithm 1) alternates
epochs of MAP training, whose weight decay is the prior precision, with Adam
steps on the log marginal likelihood of a Laplace posterior over *all* weights
(KFAC, diagonal or full). Here the posterior is our
:class:`~laplace_subnet_ext.DenseSubnetLaplace` over S of the D weights, and the
prior it tunes is the prior of the whole network.

What the evidence of a subnetwork says about the other D - S weights (decided
here; laplace #109 calls it open): the prior precision is *one* hyperparameter of
the shape ``prior_structure`` gives over all D weights (laplace's
``fix_prior_prec_structure``), used as the weight decay of every weight during
training, and restricted to the subnetwork for its evidence
(:func:`~laplace_subnet_ext.prior.restrict_prior_precision`). So

* ``"scalar"``: one :math:`\lambda` for all D weights, estimated from the S;
* ``"layerwise"``: one :math:`\lambda_\ell` per parameter tensor; a tensor with
  selected weights gets its value from their evidence, a tensor without any keeps
  ``prior_prec_init`` (it has no evidence);
* ``"diag"``: one per weight; the D - S unselected ones keep ``prior_prec_init``.

No :math:`S/D` rescaling is applied: the evidence is maximised over the
subnetwork's :math:`\lambda` itself, which is then the whole network's. With
S = D this is laplace's algorithm with ``hessian_structure="full"``
(``tests/test_marglik_training.py`` compares the two trajectories).

Modes (where laplace leaves the model in the mode it was given): the model is in
train mode for the training epochs and in eval mode for every selection, fit and
hyperparameter step, and it is returned in eval mode. The evidence is that of
the network that predicts (BatchNorm's running statistics, no dropout); a
posterior fitted in train mode would hold a different Jacobian at every batch
(dropout masks, batch statistics), which the fast path's run-time check rejects.

The subnetwork is selected at the first marginal-likelihood step (after
``n_epochs_burnin``; from the current weights and prior) and kept, unless
``reselect_every`` asks for a new selection every that many steps. A fixed
subnetwork keeps the evidences of different epochs comparable, which the
early stopping on the best marginal likelihood relies on; re-selection trades
that for a subnetwork that follows the weights.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from copy import deepcopy
from typing import Any

import torch
import tqdm
from laplace.utils import expand_prior_precision, fix_prior_prec_structure
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.optim import Adam, Optimizer
from torch.utils.data import DataLoader

from laplace_subnet_ext.posterior import DenseSubnetLaplace

__all__ = ["marglik_training"]

logger = logging.getLogger("laplace_subnet_ext")


def marglik_training(
    model: nn.Module,
    train_loader: DataLoader,
    likelihood: str = "classification",
    *,
    subnetwork_indices: Any = None,
    subnetwork_mask: Any = None,
    n_params_subnet: int | None = None,
    mask_kwargs: dict[str, Any] | None = None,
    reselect_every: int | None = None,
    optimizer_cls: type[Optimizer] = Adam,
    optimizer_kwargs: dict | None = None,
    scheduler_cls: type | None = None,
    scheduler_kwargs: dict | None = None,
    n_epochs: int = 300,
    lr_hyp: float = 1e-1,
    prior_structure: str = "layerwise",
    n_epochs_burnin: int = 0,
    n_hypersteps: int = 10,
    marglik_frequency: int = 1,
    prior_prec_init: float = 1.0,
    sigma_noise_init: float = 1.0,
    temperature: float = 1.0,
    fix_sigma_noise: bool = False,
    progress_bar: bool = False,
    enable_backprop: bool = False,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
    **laplace_kwargs: Any,
) -> tuple[DenseSubnetLaplace, nn.Module, list[float], list[float]]:
    r"""Train weights and prior (and noise) jointly by the subnetwork's evidence.

    laplace's ``marglik_training`` with a subnetwork posterior (module
    docstring: what the prior of the other weights is). Arguments as in laplace,
    plus the subnetwork and ``laplace_kwargs`` for
    :class:`~laplace_subnet_ext.DenseSubnetLaplace` (e.g. ``backend``,
    ``curvature_dtype``); laplace's ``hessian_structure`` is always ``"full"``
    over the subnetwork.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits (classification) or means (regression).
    train_loader : DataLoader
    likelihood : {"classification", "regression"}
    subnetwork_indices, subnetwork_mask, n_params_subnet, mask_kwargs
        The subnetwork, as for :class:`~laplace_subnet_ext.DenseSubnetLaplace`;
        exactly one of indices, a mask, or ``n_params_subnet`` alone (the
        default selection).
    reselect_every : int, optional
        Select the subnetwork anew every that many marginal-likelihood steps
        (default: once, at the first one). Ignored for fixed indices.
    optimizer_cls, optimizer_kwargs, scheduler_cls, scheduler_kwargs, n_epochs
        MAP training, as in laplace (``weight_decay`` is the prior: set to 0).
    lr_hyp, prior_structure, n_epochs_burnin, n_hypersteps, marglik_frequency
        As in laplace: Adam on the log hyperparameters, ``n_hypersteps`` steps
        every ``marglik_frequency`` epochs after ``n_epochs_burnin``.
    prior_prec_init, sigma_noise_init, temperature, fix_sigma_noise
        As in laplace.
    progress_bar, enable_backprop, dict_key_x, dict_key_y
        As in laplace.

    Returns
    -------
    la : DenseSubnetLaplace
        Fitted at the weights and hyperparameters of the best marginal likelihood.
    model : torch.nn.Module
        The model with those weights (trained in place).
    margliks : list of float
        Negative log marginal likelihood after every hyperparameter step.
    losses : list of float
        Training loss (negative log joint per datum) of every epoch.

    Raises
    ------
    ValueError
        A likelihood other than classification / regression, a bad
        ``prior_structure``, or no subnetwork given.
    """
    if likelihood not in ("classification", "regression"):
        raise ValueError(
            "likelihood must be 'classification' or 'regression' for marglik "
            f"training; got {likelihood!r}."
        )
    if prior_structure not in ("scalar", "layerwise", "diag"):
        raise ValueError(
            "prior_structure must be 'scalar', 'layerwise' or 'diag'; got "
            f"{prior_structure!r}."
        )
    given = [subnetwork_indices is not None, subnetwork_mask is not None]
    if sum(given) > 1 or (not any(given) and n_params_subnet is None):
        raise ValueError(
            "give exactly one of subnetwork_indices=..., subnetwork_mask=... (with "
            "n_params_subnet) or n_params_subnet=... alone (the default selection); "
            f"got indices={subnetwork_indices is not None}, "
            f"mask={subnetwork_mask!r}, n_params_subnet={n_params_subnet!r}."
        )
    if reselect_every is not None and not (
        isinstance(reselect_every, int) and reselect_every >= 1
    ):
        raise ValueError(
            f"reselect_every must be a positive int or None; got {reselect_every!r}."
        )
    optimizer_kwargs = dict(optimizer_kwargs or {})
    if optimizer_kwargs.get("weight_decay"):
        logger.warning("marglik_training: weight decay is the prior; set to 0.")
    optimizer_kwargs["weight_decay"] = 0.0

    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    N = len(train_loader.dataset)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log_prior_prec = fix_prior_prec_structure(
        float(torch.log(torch.tensor(temperature * prior_prec_init))),
        prior_structure,
        len(trainable),
        sum(p.numel() for p in trainable),
        device,
        dtype,
    ).requires_grad_(True)
    hyperparameters = [log_prior_prec]
    regression = likelihood == "regression"
    log_sigma_noise = None
    if regression:
        log_sigma_noise = torch.full(
            (1,), float(torch.log(torch.tensor(sigma_noise_init))), device=device,
            dtype=dtype, requires_grad=True,
        )  # fmt: skip
        hyperparameters.append(log_sigma_noise)
    criterion = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    optimizer = optimizer_cls(model.parameters(), **optimizer_kwargs)
    scheduler = (
        scheduler_cls(optimizer, **(scheduler_kwargs or {}))
        if scheduler_cls is not None
        else None
    )
    hyper_optimizer = Adam(hyperparameters, lr=lr_hyp)

    def sigma(detach: bool):
        if not regression:
            return 1.0
        if fix_sigma_noise:
            return sigma_noise_init
        s = log_sigma_noise.exp()
        return s.detach() if detach else s

    def posterior(indices, enable_backprop: bool = False) -> DenseSubnetLaplace:
        sub = (
            {"subnetwork_indices": indices}
            if indices is not None
            else {
                "subnetwork_mask": subnetwork_mask,
                "n_params_subnet": n_params_subnet,
                "mask_kwargs": mask_kwargs,
            }
        )
        return DenseSubnetLaplace(
            model,
            likelihood,
            sigma_noise=sigma(detach=True),
            prior_precision=log_prior_prec.detach().exp(),
            temperature=temperature,
            enable_backprop=enable_backprop,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
            **sub,
            **laplace_kwargs,
        )

    indices = subnetwork_indices
    best: tuple | None = None
    best_marglik = float("inf")
    margliks: list[float] = []
    losses: list[float] = []
    n_steps = 0
    for epoch in tqdm.trange(
        1, n_epochs + 1, disable=not progress_bar, desc="[Marglik training]"
    ):
        epoch_loss = 0.0
        model.train()
        for data in train_loader:
            if isinstance(data, MutableMapping):
                X, y = data, data[dict_key_y].to(device)
            else:
                X, y = data[0].to(device), data[1].to(device)
            optimizer.zero_grad()
            s = sigma(detach=True)
            crit_factor = temperature / (2 * s**2) if regression else temperature
            delta = expand_prior_precision(log_prior_prec.detach().exp(), model)
            theta = parameters_to_vector(
                [p for p in model.parameters() if p.requires_grad]
            )
            f = model(X)
            prior_term = (0.5 * (delta * theta) @ theta) / N / crit_factor
            loss = criterion(f, y) + prior_term
            loss.backward()
            optimizer.step()
            epoch_loss += loss.cpu().item() * len(y)
            if scheduler is not None:
                scheduler.step()
        losses.append(epoch_loss / N)
        if epoch % marglik_frequency != 0 or epoch < n_epochs_burnin:
            continue

        model.eval()  # the posterior of the network that predicts (module docstring)
        reselect = subnetwork_indices is None and (
            indices is None
            or (reselect_every is not None and n_steps % reselect_every == 0)
        )
        la = posterior(None if reselect else indices)
        la.fit(train_loader)
        indices = la.subnetwork_indices
        n_steps += 1
        for _ in range(n_hypersteps):
            hyper_optimizer.zero_grad()
            s = None if not regression or fix_sigma_noise else log_sigma_noise.exp()
            prior = log_prior_prec.exp()
            neg = -la.log_marginal_likelihood(prior, s)
            neg.backward()
            hyper_optimizer.step()
            margliks.append(neg.item())
        if margliks[-1] < best_marglik:  # the hyperparameters it was evaluated at
            best_marglik = margliks[-1]
            best = (
                deepcopy(model.state_dict()),
                prior.detach().clone(),
                sigma_noise_init if s is None else s.detach().clone(),
                indices,
            )
            logger.info(
                "marglik_training[epoch=%d]: new best %.3f", epoch, best_marglik
            )

    if best is not None:
        state, prior, noise, indices = best
        model.load_state_dict(state)
        with torch.no_grad():
            log_prior_prec.copy_(prior.log())
            if regression and not fix_sigma_noise:
                log_sigma_noise.copy_(noise.log())
    model.eval()
    la = posterior(indices, enable_backprop=enable_backprop)
    la.fit(train_loader)
    return la, model, margliks, losses
