r"""Greedy-Laplace selection: add the weight that captures the most predictive variance.

Index conventions: ``n`` training inputs, ``c``/``k`` outputs, ``p`` all
parameters, ``q`` candidate parameters, ``s`` chosen parameters.

The objective (Raha, Khare & Patra, 2026) is the linearised predictive variance
the subnetwork captures on the training inputs, with the full network's prior
:math:`\lambda` and noise :math:`\sigma`:

.. math:: F(S) = \sum_n \operatorname{tr} J_{n,S}\, P_{SS}^{-1} J_{n,S}^\top,
          \qquad P = H/\sigma^2 + \lambda I .

Adding weight :math:`j` to :math:`S` changes it by (block inverse of
:math:`P_{S\cup j}`)

.. math:: F(S \cup j) - F(S) = \frac{\|J_{\cdot j} - J_{\cdot S} u_j\|^2}{s_j},
          \qquad u_j = P_{SS}^{-1} P_{Sj}, \quad s_j = P_{jj} - P_{jS} u_j,

the part of :math:`j`'s output gradient that the chosen weights do not already
explain, over its conditional precision (a Schur complement). Unlike a score per
weight this accounts for the off-diagonal precision: two weights that move the
output the same way are not both worth keeping.

Implementation: a pivoted incremental Cholesky of :math:`P` over a candidate pool
of C weights (the top ``max(candidates * S, min_candidates)`` by Gradient-Laplace
score, zero-curvature weights dropped). Per step, one row of :math:`P` over the pool
(:math:`\sum_n J_{nj}^\top \Lambda_n J_{nq}`), a rank-one update of the
residuals :math:`R = J_{\cdot q} - J_{\cdot S} U` and of the Schur complements.
Memory :math:`O(S C + n c C)` - the residuals, the pool's Jacobians and the
Cholesky rows; never a D x D or C x C matrix. Time :math:`O(S (S + n c^2) C)`.
"""

from __future__ import annotations

import logging

import torch
import tqdm
from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import iter_inputs, split_batch
from laplace_subnet_ext.numerics.curvature import output_hessian
from laplace_subnet_ext.selection.base import (
    TrainableSubnetMask,
    resolve_n_params_subnet,
)
from laplace_subnet_ext.selection.registry import register
from laplace_subnet_ext.selection.scores import GradientLaplaceMask

__all__ = ["GreedyLaplaceMask", "greedy_schur"]

logger = logging.getLogger("laplace_subnet_ext")


def greedy_schur(
    J: torch.Tensor,
    Lam: torch.Tensor | None,
    n_select: int,
    prior_precision: float,
    sigma_noise: float = 1.0,
    E: torch.Tensor | None = None,
    progress_bar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Greedy maximisation of :math:`F(S)` over the columns of ``J``.

    Parameters
    ----------
    J : torch.Tensor
        ``(n, c, q)`` Jacobians of the candidates on the training inputs (the
        curvature; also the evaluation inputs of :math:`F` unless ``E`` is given).
    Lam : torch.Tensor or None
        ``(n, c, k)`` output Hessians; ``None`` for the identity (regression).
    n_select : int
        How many to choose (at most ``q``).
    E : torch.Tensor, optional
        ``(m, k, q)`` Jacobians at the evaluation inputs of :math:`F` (e.g.
        centred logits); default ``J``.
    progress_bar : bool, default=False
        Show a ``tqdm`` bar over the steps.

    Returns
    -------
    order : torch.Tensor
        ``(s,)`` positions in ``q``, in the order chosen.
    gains : torch.Tensor
        ``(s,)`` :math:`F(S \cup j) - F(S)` at each step (non-increasing in
        practice, not in general).
    """
    n, c, q = J.shape
    Jf = J.reshape(n * c, q)
    LJ = Jf if Lam is None else (Lam @ J).reshape(n * c, q)
    inv_s2 = 1.0 / sigma_noise**2
    schur = (Jf * LJ).sum(0) * inv_s2 + prior_precision  # diag P over the pool
    R = (Jf if E is None else E.reshape(-1, q)).clone()  # residual output gradients
    rnorm = R.pow(2).sum(0)  # ||R_q||^2, updated without re-reading R
    W = torch.zeros(n_select, q, dtype=J.dtype, device=J.device)  # Cholesky rows
    taken = torch.zeros(q, dtype=torch.bool, device=J.device)
    order = torch.empty(n_select, dtype=torch.long)
    gains = torch.empty(n_select, dtype=J.dtype)
    for k in tqdm.trange(n_select, disable=not progress_bar, desc="[Greedy-Laplace]"):
        gain = rnorm / schur
        gain[taken] = float("-inf")
        j = int(gain.argmax())
        order[k], gains[k] = j, gain[j]
        taken[j] = True
        root = schur[j].sqrt()
        row = (LJ[:, j] @ Jf) * inv_s2  # P_{j, pool} without the prior
        row[j] += prior_precision
        w = (row - W[:k, j] @ W[:k]) / root
        u = R[:, j] / root
        # ||R_q - u w_q||^2 = ||R_q||^2 - 2 w_q u^T R_q + w_q^2 ||u||^2
        rnorm += w * (w * (u @ u) - 2 * (u @ R))
        rnorm.clamp_(min=0)
        R.addr_(u, w, alpha=-1)  # in place: no (n c, q) temporary
        schur -= w.pow(2)
        W[k] = w
    return order, gains


@register("greedy_laplace")
class GreedyLaplaceMask(TrainableSubnetMask):
    r"""Greedy-Laplace: greedily maximise the captured predictive variance (module
    docstring).

    Parameters
    ----------
    model : torch.nn.Module
    n_params_subnet : int, float or "auto"
    likelihood : {"classification", "regression"}
    prior_precision : float, default=1
        Full-network scalar prior of the objective.
    sigma_noise : float, default=1
    candidates : float, default=4
        Pool size as a multiple of S: C = max(candidates * S, min_candidates),
        at most the weights with curvature.
    min_candidates : int, default=2048
        Smallest pool: at small S the best weights are often not among the top
        few by Gradient-Laplace score.
    max_data : int, default=1024
        Training inputs used (the first ones of the loader); their curvature is
        scaled by N / max_data to stand for the whole training set.
    center_logits : bool, default=True
        Classification: the objective counts the variance of the centred logits
        :math:`(I - \mathbf 1\mathbf 1^\top/c) f` only. The variance along
        :math:`\mathbf 1` does not change a softmax prediction and has no
        curvature (the prior alone sets it), so without centring the greedy
        choice chases weights that move all logits together.
    eval_inputs : tensor, dict or iterable of batches, optional
        Where the captured variance is counted (default: the training inputs).
        Pass unlabelled inputs from where predictions will be made (e.g. a wider
        input range, or the deployment distribution) to target them; the
        curvature still comes from the training data.
    memory_budget : int or str, optional
        For ``n_params_subnet="auto"``.
    progress_bar : bool, default=False
        Show ``tqdm`` bars over the scoring batches and the greedy steps
        (``DenseSubnetLaplace.fit(progress_bar=True)`` sets it).

    Attributes
    ----------
    order : torch.Tensor
        ``(s,)`` chosen weights (indices into D) in the order chosen.
    gains : torch.Tensor
        ``(s,)`` captured variance added by each.
    n_zero_curvature : int
        Weights dropped for zero curvature before the pool was formed.
    """

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet,
        *,
        likelihood: str = "classification",
        prior_precision: float = 1.0,
        sigma_noise: float = 1.0,
        candidates: float = 4.0,
        min_candidates: int = 2048,
        max_data: int = 1024,
        center_logits: bool = True,
        eval_inputs=None,
        memory_budget: int | str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(model)
        self._n_params_subnet = resolve_n_params_subnet(
            n_params_subnet, self._n_params, memory_budget
        )
        if not candidates >= 1:
            raise ValueError(f"candidates must be >= 1; got {candidates}.")
        if not (isinstance(max_data, int) and max_data >= 1):
            raise ValueError(f"max_data must be a positive int; got {max_data!r}.")
        self.likelihood = likelihood
        self.prior_precision = float(prior_precision)
        self.sigma_noise = float(sigma_noise)
        self.candidates = candidates
        self.min_candidates = int(min_candidates)
        self.max_data = max_data
        self.center_logits = center_logits
        self.eval_inputs = eval_inputs
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.progress_bar = bool(progress_bar)
        self.order: torch.Tensor | None = None
        self.gains: torch.Tensor | None = None
        self.n_zero_curvature = 0

    def _inputs(self, train_loader: DataLoader) -> list:
        out, seen = [], 0
        for batch in train_loader:
            X, _ = split_batch(batch, self.dict_key_y)
            out.append(X)
            seen += len(next(iter(X.values())) if isinstance(X, dict) else X)
            if seen >= self.max_data:
                break
        return out

    def get_subnet_mask(self, train_loader: DataLoader) -> torch.Tensor:
        if train_loader is None:
            raise ValueError(
                "GreedyLaplaceMask needs train_loader in select(train_loader)."
            )
        S = self._n_params_subnet
        pool_mask = GradientLaplaceMask(self.model, S)
        scores = pool_mask.compute_param_scores(train_loader)
        scores = pool_mask.drop_zero_curvature(scores, train_loader)
        self.n_zero_curvature = pool_mask.n_zero_curvature
        kept = self._n_params - self.n_zero_curvature  # >= S, or the pool raised
        C = min(kept, max(int(round(self.candidates * S)), self.min_candidates))
        pool = scores.topk(C).indices.sort().values
        jac = SubnetJacobians(
            self.model, SubnetLayout(self.model, pool), dict_key_x=self.dict_key_x
        )
        Js, Lams = [], []
        for X in self._inputs(train_loader):
            J, f = jac(X)
            Js.append(J.double())
            Lam = output_hessian(f.double(), self.likelihood)
            Lams.append(Lam)
        J = torch.cat(Js)[: self.max_data]
        Lam = None if Lams[0] is None else torch.cat(Lams)[: self.max_data]
        # a subsample's curvature, scaled to the whole training set's
        N = len(getattr(train_loader, "dataset", ())) or len(J)
        sigma = self.sigma_noise * (len(J) / max(N, len(J))) ** 0.5
        E = J
        if self.eval_inputs is not None:
            E = torch.cat(
                [
                    jac(X)[0].double()
                    for X in iter_inputs(self.eval_inputs, self.dict_key_y)
                ]
            )
        if self.center_logits and self.likelihood != "regression":
            E = E - E.mean(1, keepdim=True)
        order, gains = greedy_schur(
            J,
            Lam,
            S,
            self.prior_precision,
            sigma,
            E=None if E is J else E,
            progress_bar=self.progress_bar,
        )
        self.order = pool[order.to(pool.device)]
        self.gains = gains
        chosen = torch.zeros(self._n_params, dtype=torch.bool, device=pool.device)
        chosen[self.order] = True
        logger.info(
            "GreedyLaplaceMask: S=%d from a pool of %d (%d zero-curvature dropped)",
            S,
            C,
            self.n_zero_curvature,
        )
        return chosen
