r"""Greedy-Laplace selection: add the weight that captures the most predictive variance.

Index conventions: ``n`` training inputs, ``c``/``k`` outputs, ``p`` all
parameters, ``q`` candidate parameters, ``s`` chosen parameters.

The objective (Raha, Khare & Patra, 2026) is the linearised predictive variance
the subnetwork captures at evaluation inputs :math:`x_m`, with the full
network's prior :math:`\lambda` and noise :math:`\sigma`:

.. math:: F(S) = \sum_m \operatorname{tr} J_{m,S}\, P_{SS}^{-1} J_{m,S}^\top,
          \qquad P = H/\sigma^2 + \lambda I ,

:math:`H` the GGN of the training data. Where the variance is counted (issue 40,
decided here): the 2026 objective counts it at the training inputs, where a weight
that matters only between or beyond the data carries none. The default
(``eval_inputs="auto"``) counts it at the training inputs, interpolations between
random pairs of them and perturbations around them, in equal parts
(:func:`augmented_inputs`), within the same ``max_data`` inputs; inputs that are
not floating-point tensors (token ids, dict batches) keep the training inputs.
The greedy steps are myopic and :math:`F` is not submodular: a set of weights
that only explains variance together (e.g. a unit's input weight and bias, which
move its kink) can beat the greedy path. So the default also scores the top S by
Gradient-Laplace score on the same :math:`F` (one Cholesky of :math:`P_{SS}`,
:func:`subset_objective`) and keeps the better of the two (``compare_scores``).

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
score on the objective's own ``max_data`` inputs, zero-curvature weights dropped;
one pass over them, :meth:`.SubnetJacobians.diagonal`). Per step, one row of :math:`P` over the pool
(:math:`\sum_n J_{nj}^\top \Lambda_n J_{nq}`), a rank-one update of the
residuals :math:`R = J_{\cdot q} - J_{\cdot S} U` and of the Schur complements.
Memory :math:`O(S C + n c C)` - the residuals, the pool's Jacobians and the
Cholesky rows; never a D x D or C x C matrix. Time :math:`O(S (S + n c^2) C)`,
streamed once per step when exact; above a work bound (``block="auto"``)
:func:`greedy_schur` takes the steps in blocks whose pool updates are matrix
products. The curvature enters as square-root rows :math:`A_n^\top J_n`
(:math:`A_n A_n^\top = \Lambda_n`), the centred evaluation Jacobians as c - 1
rows per input (:func:`centred`), both exact. Above :data:`MAX_GREEDY_WORK`
multiply-adds, or half the free memory, the greedy steps do not run and the
Gradient-Laplace top S is kept (logged; ``greedy_skipped``): at the paper's
S = 42,438 on a 2.8M-weight ResNet the steps would be 2.9e14 multiply-adds
with 58 GB of Cholesky rows.
"""

from __future__ import annotations

import logging
import time

import torch
import tqdm
from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.batching import (
    batch_size,
    iter_inputs,
    slice_batch,
    split_batch,
)
from laplace_subnet_ext.numerics.curvature import output_hessian_root
from laplace_subnet_ext.numerics.memory import available_bytes
from laplace_subnet_ext.selection.base import (
    TrainableSubnetMask,
    resolve_n_params_subnet,
)
from laplace_subnet_ext.selection.registry import register
from laplace_subnet_ext.selection.scores import GradientLaplaceMask

__all__ = [
    "GreedyLaplaceMask",
    "greedy_schur",
    "GREEDY_BLOCK",
    "GREEDY_SHORTLIST",
    "EXACT_GREEDY_WORK",
    "augmented_inputs",
    "subset_objective",
    "AUGMENT_NOISE",
    "column_dots",
    "centred",
    "MAX_GREEDY_WORK",
    "GREEDY_MEMORY_FRACTION",
]

logger = logging.getLogger("laplace_subnet_ext")


#: steps per block of the blocked greedy (``block="auto"`` above the work bound)
GREEDY_BLOCK = 64
#: the shortlist of a block, as a multiple of its steps
GREEDY_SHORTLIST = 4
#: ``block="auto"``: exact sequential greedy (block 1) while S x rows x pool, the
#: entries streamed per step times the steps, stays below this (about 10-20 s on
#: 2 cores; the digits CNN's S = 500 was 1e10, 122 s)
EXACT_GREEDY_WORK = 2e9
#: the greedy steps run while their work, S x C x (curvature rows + S / 2 +
#: evaluation rows) multiply-adds, is at most this: about 10 minutes on 2 CPU
#: cores (the blocked steps ran at 2e10 multiply-adds/s in float64, measured on
#: the rotated-MNIST ResNet's pool at S = 2,000); above it the default keeps the
#: Gradient-Laplace top S (see ``GreedyLaplaceMask``'s ``max_greedy_work``)
MAX_GREEDY_WORK = 1.2e13
#: ... and while their arrays (curvature rows, residuals and Cholesky rows over
#: the pool, float64) take at most this fraction of the free memory
GREEDY_MEMORY_FRACTION = 0.5


def greedy_schur(
    J: torch.Tensor,
    Lam: torch.Tensor | None,
    n_select: int,
    prior_precision: float,
    sigma_noise: float = 1.0,
    E: torch.Tensor | None = None,
    progress_bar: bool = False,
    block: int = 1,
    shortlist: int = GREEDY_SHORTLIST,
    overwrite_eval: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Greedy maximisation of :math:`F(S)` over the columns of ``J``, in blocks.

    Each block of ``block`` steps (i) shortlists the ``shortlist * block``
    candidates of largest current gain, (ii) runs the exact greedy steps over the
    shortlist in its Gram domain (:math:`G = R_T^\top R_T`, :math:`O(m^2)` per
    step, never the residual matrix), stopping early once the best gain in the
    shortlist falls below the largest gain outside it at the block's start, and
    (iii) updates the residuals, Schur complements and Cholesky rows of the whole
    pool with matrix products (BLAS-3, :math:`O(b\,(nc + s) C)` per block):

    .. math:: W_B = L_B^{-1} M_B,\quad M_B = P_{B,\cdot} - W_{\cdot B}^\top W,
              \quad R \leftarrow R - R_{\cdot B} L_B^{-\top} W_B,

    :math:`L_B` the Cholesky factor of the block's Schur complement. ``block=1``
    is exact greedy (every step an argmax over the whole pool). With
    ``block > 1`` a step is an argmax over the shortlist, which equals the exact
    one while the gains of the other candidates do not grow within a block (the
    lazy-greedy condition; the objective is not submodular in general, so it
    may pick differently). Every reported gain is the exact increment of
    :math:`F` along the chosen path either way.

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
    block : int, default=1
        Steps per block; 1 is exact greedy.
    shortlist : int, default=GREEDY_SHORTLIST
        Candidates per block, as a multiple of ``block``.
    overwrite_eval : bool, default=False
        Use ``E``'s memory for the residuals (it is overwritten) instead of a
        copy: for a caller that built ``E`` for this call only. Ignored without
        ``E`` (``J`` is never overwritten).

    Returns
    -------
    order : torch.Tensor
        ``(s,)`` positions in ``q``, in the order chosen.
    gains : torch.Tensor
        ``(s,)`` :math:`F(S \cup j) - F(S)` at each step (non-increasing in
        practice, not in general).
    """
    if not (isinstance(block, int) and block >= 1):
        raise ValueError(f"block must be a positive int; got {block!r}.")
    if not (isinstance(shortlist, int) and shortlist >= 1):
        raise ValueError(f"shortlist must be a positive int; got {shortlist!r}.")
    n, c, q = J.shape
    Jf = J.reshape(n * c, q)
    LJ = Jf if Lam is None else (Lam @ J).reshape(n * c, q)
    inv_s2 = 1.0 / sigma_noise**2
    # diag P over the pool
    schur = (column_dots(Jf) if Lam is None else (Jf * LJ).sum(0)) * inv_s2
    schur += prior_precision
    # residual output gradients (in E's own memory when the caller allows it)
    R = Jf.clone() if E is None else E.reshape(-1, q)
    if E is not None and not overwrite_eval:
        R = R.clone()
    rnorm = column_dots(R)  # ||R_q||^2
    W = torch.zeros(n_select, q, dtype=J.dtype, device=J.device)  # Cholesky rows
    taken = torch.zeros(q, dtype=torch.bool, device=J.device)
    order = torch.empty(n_select, dtype=torch.long)
    gains = torch.empty(n_select, dtype=J.dtype)
    pbar = tqdm.tqdm(total=n_select, disable=not progress_bar, desc="[Greedy-Laplace]")
    k = 0
    while k < n_select:
        b = min(block, n_select - k)
        gain = rnorm / schur
        gain[taken] = float("-inf")
        m = min(q - k, shortlist * b)
        T = gain.topk(m).indices  # the shortlist
        outside = ~taken
        outside[T] = False
        g_out = float(gain[outside].max()) if bool(outside.any()) else float("-inf")
        RT = R[:, T]
        G = RT.T @ RT  # (m, m) Gram of the shortlist's residuals
        MT = (LJ[:, T].T @ Jf[:, T]) * inv_s2
        MT.diagonal().add_(prior_precision)
        MT -= W[:k, T].T @ W[:k, T]  # the shortlist's Schur complement
        sc = MT.diagonal().clone()
        in_block = torch.zeros(m, dtype=torch.bool, device=J.device)
        L = torch.zeros(b, m, dtype=J.dtype, device=J.device)  # rows of W over T
        chosen: list[int] = []
        for i in range(b):
            g = G.diagonal().clamp(min=0) / sc
            g[in_block] = float("-inf")
            jj = int(g.argmax())
            if i > 0 and float(g[jj]) < g_out:
                break  # a candidate outside the shortlist may be better: refresh
            chosen.append(jj)
            in_block[jj] = True
            order[k + i], gains[k + i] = int(T[jj]), g[jj]
            root = sc[jj].sqrt()
            w = (MT[jj] - L[:i, jj] @ L[:i]) / root  # the new row of W, over T
            v = G[:, jj] / root  # R_T^T u, u = R_T[:, jj] / root
            # R_T <- R_T - u w^T, in the Gram domain
            G += torch.outer(w, w * (G[jj, jj] / root**2)) - torch.outer(v, w)
            G -= torch.outer(w, v)
            sc -= w.pow(2)
            L[i] = w
        bb = len(chosen)
        pos = torch.tensor(chosen, device=J.device)
        B = T[pos]
        LB = L[:bb, pos].T  # (bb, bb) lower triangular
        M = (LJ[:, B].T @ Jf) * inv_s2  # rows of P over the pool
        M[torch.arange(bb, device=J.device), B] += prior_precision
        M -= W[:k, B].T @ W[:k]
        WB = torch.linalg.solve_triangular(LB, M, upper=False)
        U = torch.linalg.solve_triangular(LB, R[:, B].T, upper=False).T
        R.addmm_(U, WB, alpha=-1)
        rnorm = column_dots(R)
        schur -= WB.pow(2).sum(0)
        W[k : k + bb] = WB
        taken[B] = True
        k += bb
        pbar.update(bb)
    pbar.close()
    return order, gains


#: rows per chunk of :func:`column_dots`
COLUMN_CHUNK = 256


def column_dots(X: torch.Tensor) -> torch.Tensor:
    r"""``(q,)`` squared column norms :math:`\sum_r X_{rq}^2` of a row-major
    ``(r, q)`` matrix, by chunks of :data:`COLUMN_CHUNK` rows: no ``(r, q)``
    temporary, and about 10x faster than ``vector_norm(X, dim=0)`` on the
    greedy's residuals (measured on CPU, float64, 10,230 x 8,000: 0.065 s
    against 0.66 s)."""
    out = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
    for i in range(0, X.shape[0], COLUMN_CHUNK):
        x = X[i : i + COLUMN_CHUNK]
        out.add_((x * x).sum(0))
    return out


def subset_objective(
    J: torch.Tensor,
    Lam: torch.Tensor | None,
    positions: torch.Tensor,
    prior_precision: float,
    sigma_noise: float = 1.0,
    E: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The increments of :math:`F` along a given order of columns: with
    :math:`P_{SS} = L L^\top` (Cholesky, in that order) and
    :math:`W = L^{-1} E_S^\top`, :math:`F(S_{1:k}) = \sum_{i \le k} \|W_i\|^2`
    (the leading block of a Cholesky factor is the factor of the leading block).
    Same arguments as :func:`greedy_schur`; ``positions`` are columns of ``J``.
    One :math:`s \times s` matrix; :math:`O(s^2 (nc + m k) + s^3)` time.

    Returns
    -------
    torch.Tensor
        ``(s,)`` :math:`F(S_{1:k}) - F(S_{1:k-1})`; their sum is :math:`F(S)`.
    """
    n, c, _ = J.shape
    pos = torch.as_tensor(positions, device=J.device).long()
    JS = J[..., pos]
    LJ = JS if Lam is None else Lam @ JS
    P = LJ.reshape(n * c, -1).T @ JS.reshape(n * c, -1) / sigma_noise**2
    P.diagonal().add_(prior_precision)
    L = torch.linalg.cholesky(P)
    ES = (J if E is None else E)[..., pos]
    W = torch.linalg.solve_triangular(L, ES.reshape(-1, len(pos)).T, upper=False)
    return W.pow(2).sum(1)


#: the ``eval_inputs`` strings: training inputs with interpolations and
#: perturbations, at three times or at the default's evaluation budget
AUGMENTED = ("augmented", "augmented_equal")
#: the ``eval_inputs`` values that are not inputs: ``"auto"`` (the default) and
#: the two above
EVAL_MODES = ("auto", *AUGMENTED)
#: ``eval_inputs="augmented"``: Gaussian perturbations of the training inputs with
#: this multiple of each input feature's standard deviation
AUGMENT_NOISE = 0.5


def augmented_inputs(
    batches: list, max_data: int, seed: int = 0, equal_budget: bool = False
) -> list:
    r"""The training inputs, as many convex combinations of random pairs of them
    (:math:`\alpha x_i + (1 - \alpha) x_j`, :math:`\alpha \sim U(0, 1)`: the
    region between the data) and as many Gaussian perturbations (standard
    deviation :data:`AUGMENT_NOISE` times each feature's): three batches of at
    most ``max_data`` inputs. ``equal_budget``: a third of the training inputs
    used each (the first ``min(n, max_data) // 3`` of them, and as many of the
    other two), so that the three together cost the default objective's
    evaluation Jacobians.
    Floating-point tensor inputs only."""
    if not _interpolable(batches):
        raise TypeError(
            "eval_inputs='augmented' needs floating-point tensor inputs (it "
            "interpolates and perturbs them); pass eval_inputs=<your inputs> for "
            "token ids or dict batches."
        )
    X = torch.cat(batches)[:max_data]
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = len(X)
    i, j = torch.randint(n, (2, n), generator=g)
    alpha = torch.rand(n, *[1] * (X.ndim - 1), generator=g).to(X)
    between = alpha * X[i] + (1 - alpha) * X[j]
    std = X.std(0, keepdim=True) if n > 1 else torch.ones_like(X[:1])
    noise = torch.randn(X.shape, generator=g).to(X)
    around = X + AUGMENT_NOISE * std * noise
    if equal_budget:
        m = max(1, n // 3)
        return [X[:m], between[:m], around[:m]]
    return [X, between, around]


def _stack_rows(pieces, n: int) -> torch.Tensor:
    """The first ``n`` rows of the ``(b, c, q)`` pieces, float64, written into one
    preallocated array (``torch.cat`` would hold the pieces and the result at
    once: twice the pool's Jacobians)."""
    out, filled = None, 0
    for piece in pieces:
        take = min(len(piece), n - filled)
        if out is None:
            out = piece.new_empty((n, *piece.shape[1:]), dtype=torch.float64)
        if take > 0:
            out[filled : filled + take] = piece[:take]
        filled += take
        del piece
    if out is None or filled < n:
        raise RuntimeError(f"expected {n} inputs' Jacobians, got {filled}.")
    return out


def _interpolable(inputs: list) -> bool:
    return all(torch.is_tensor(X) and X.is_floating_point() for X in inputs)


def centred(E: torch.Tensor) -> torch.Tensor:
    r"""``(m, c - 1, q)`` rows with the Gram of the centred logits' Jacobians,
    :math:`Q^\top E_m` for :math:`Q` ``(c, c - 1)`` an orthonormal basis of
    :math:`\mathbf 1^\perp` (:math:`Q Q^\top = I - \mathbf 1 \mathbf 1^\top / c`):
    :math:`F` depends on the evaluation Jacobians only through their Gram, and the
    centred ones have rank c - 1 per input, so one row per input fewer."""
    c = E.shape[1]
    if c == 1:
        return E - E  # a single centred logit is zero
    centring = torch.eye(c, dtype=E.dtype) - 1.0 / c
    _, V = torch.linalg.eigh(centring)  # eigenvalues 0, then c - 1 ones
    Q = V[:, 1:].to(E.device)
    return torch.einsum("mcq,ck->mkq", E, Q)


class _Batches:
    """Fixed batches read like a loader (``len(dataset)`` = their inputs)."""

    def __init__(self, batches: list, n_inputs: int) -> None:
        self.batches = batches
        self.dataset = range(n_inputs)

    def __iter__(self):
        return iter(self.batches)


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
    eval_inputs : "auto", tensor, dict, iterable of batches, "augmented", "augmented_equal" or None, default="auto"
        Where the captured variance is counted; the curvature always comes from
        the training data. ``"auto"``: the training inputs, interpolations
        between and perturbations around them (:func:`augmented_inputs`) within
        ``max_data`` inputs in all: all three sets whole while they fit
        (``"augmented"``), else a third of the first ``max_data`` training
        inputs each (``"augmented_equal"``: the cost of the training inputs
        alone); inputs that are not floating-point tensors keep the training
        inputs (logged).
        ``None``: the training inputs (the 2026 objective). Inputs: pass
        unlabelled inputs from where predictions will be made (a wider input
        range, the deployment distribution) to target them.
        ``"augmented"`` / ``"augmented_equal"``: those sets whatever their size.
    compare_scores : bool, default=True
        Also score the top S by Gradient-Laplace score (the pool's screening) on
        the same objective and keep it when it captures more than the greedy
        path (module docstring; logged). Skipped (logged) when its
        :math:`S \times S` precision would be larger than the pool's Jacobians.
    memory_budget : int or str, optional
        For ``n_params_subnet="auto"``.
    progress_bar : bool, default=False
        Show ``tqdm`` bars over the scoring batches and the greedy steps
        (``DenseSubnetLaplace.fit(progress_bar=True)`` sets it).
    block : int or "auto", default="auto"
        Steps per block of :func:`greedy_schur`; 1 is exact greedy. ``"auto"``:
        1 while S x (inputs x outputs) x C is at most :data:`EXACT_GREEDY_WORK`,
        else :data:`GREEDY_BLOCK` (logged; ``block_used`` records it).
    max_greedy_work : float or None, default=MAX_GREEDY_WORK
        The greedy steps run while their work, S x C x (curvature rows + S/2 +
        evaluation rows) multiply-adds, is at most this (None: neither bound) and
        their float64 arrays, (curvature rows + evaluation rows + S) x C
        entries, fit in :data:`GREEDY_MEMORY_FRACTION` of the free memory.
        Above either, decided before the pool's Jacobians are formed, the
        selection is the Gradient-Laplace top S (the pool screening's ranking,
        the comparison's candidate, unscored): logged, ``chosen_by`` is
        ``"gradient_laplace"`` and ``greedy_skipped`` says why. At the
        rotated-MNIST ResNet's 1,024 inputs x 10 classes the bound falls
        between S = 10,000 (greedy) and the paper's S = 42,438.

    Attributes
    ----------
    order : torch.Tensor
        ``(s,)`` chosen weights (indices into D) in the order chosen.
    gains : torch.Tensor
        ``(s,)`` captured variance added by each.
    n_zero_curvature : int
        Weights dropped for zero curvature before the pool was formed.
    pool_size : int
        C, the candidates the greedy steps choose from.
    stage_seconds : dict
        Seconds of the pool screening, the pool's Jacobians and the greedy
        steps.
    eval_used : str
        Where the variance was counted: ``"training inputs"``, ``"augmented"``,
        ``"augmented_equal"`` or ``"given"``.
    objective : dict
        :math:`F` of each candidate subset scored (``"greedy"``, and
        ``"gradient_laplace"`` under ``compare_scores``).
    chosen_by : str
        The candidate kept (the larger :math:`F`), or ``"gradient_laplace"``
        when the greedy steps were over their bound.
    greedy_skipped : str or None
        Why the greedy steps did not run (``max_greedy_work``), or None.
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
        eval_inputs="auto",
        compare_scores: bool = True,
        memory_budget: int | str | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        progress_bar: bool = False,
        block: int | str = "auto",
        max_greedy_work: float | None = MAX_GREEDY_WORK,
    ) -> None:
        super().__init__(model)
        self._n_params_subnet = resolve_n_params_subnet(
            n_params_subnet, self._n_params, memory_budget
        )
        if not candidates >= 1:
            raise ValueError(f"candidates must be >= 1; got {candidates}.")
        if isinstance(eval_inputs, str) and eval_inputs not in EVAL_MODES:
            raise ValueError(
                "eval_inputs must be inputs, None (the training inputs), 'auto', "
                f"'augmented' or 'augmented_equal'; got {eval_inputs!r}."
            )
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
        self.compare_scores = bool(compare_scores)
        self.eval_used: str | None = None
        self.objective: dict[str, float] = {}
        self.chosen_by: str | None = None
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.progress_bar = bool(progress_bar)
        if block != "auto" and not (isinstance(block, int) and block >= 1):
            raise ValueError(f"block must be 'auto' or a positive int; got {block!r}.")
        self.block = block
        if max_greedy_work is not None and not max_greedy_work > 0:
            raise ValueError(
                "max_greedy_work must be a positive number of multiply-adds or None "
                f"(no bound); got {max_greedy_work!r}."
            )
        self.max_greedy_work = max_greedy_work
        self.greedy_skipped: str | None = None
        self.block_used: int | None = None
        self.pool_size: int | None = None
        self.stage_seconds: dict[str, float] = {}
        self.order: torch.Tensor | None = None
        self.gains: torch.Tensor | None = None
        self.n_zero_curvature = 0

    def _first_batches(self, train_loader: DataLoader) -> _Batches:
        """The loader's first batches, up to ``max_data`` inputs, read once: the
        objective's data, and the pool screening's (a weight without curvature
        on them has no gain in the objective, whatever the rest of the data)."""
        out, seen = [], 0
        for batch in train_loader:
            X, _ = split_batch(batch, self.dict_key_y)
            out.append(batch)
            seen += batch_size(X, self.dict_key_x)
            if seen >= self.max_data:
                break
        return _Batches(out, seen)

    def _inputs(self, batches: _Batches) -> list:
        return [split_batch(b, self.dict_key_y)[0] for b in batches]

    def _block(self, S: int, rows: int, C: int) -> int:
        """``block``, or by the work rule under ``"auto"`` (logged)."""
        if self.block != "auto":
            return self.block
        work = S * rows * C
        block = 1 if work <= EXACT_GREEDY_WORK else GREEDY_BLOCK
        logger.info(
            "GreedyLaplaceMask: block=%d (S x rows x pool = %.2g %s %.0e: %s)",
            block,
            work,
            "<=" if block == 1 else ">",
            EXACT_GREEDY_WORK,
            "exact greedy" if block == 1 else "blocked greedy, BLAS-3 updates",
        )
        return block

    def _eval_count(self, n: int) -> int:
        """How many evaluation inputs :math:`F` will count (before computing
        them); a given iterable that is not a tensor, dict, loader or list is
        counted as ``n``."""
        mode = self.eval_inputs
        if mode is None:
            return n
        if isinstance(mode, str):
            if mode == "auto":
                mode = "augmented" if 3 * n <= self.max_data else "augmented_equal"
            return 3 * n if mode == "augmented" else 3 * max(1, n // 3)
        if torch.is_tensor(mode) or isinstance(mode, dict):
            return batch_size(mode, self.dict_key_x)
        if hasattr(mode, "dataset"):
            return len(mode.dataset)
        if isinstance(mode, (list, tuple)):
            return sum(
                batch_size(split_batch(b, self.dict_key_y)[0], self.dict_key_x)
                for b in mode
            )
        return n

    def _over_bound(self, jac, batches: _Batches, S: int, C: int) -> str | None:
        """Why the greedy steps would pass ``max_greedy_work`` or the memory
        bound, else None; the outputs c from one input's Jacobians."""
        if self.max_greedy_work is None:
            return None
        X0 = self._inputs(batches)[0]
        c = jac(slice_batch(X0, 0, 1, batch_size(X0, self.dict_key_x)))[1].shape[-1]
        n = min(len(batches.dataset), self.max_data)
        keep_c = c - 1 if self.center_logits and self.likelihood != "regression" else c
        rows, eval_rows = n * c, self._eval_count(n) * max(keep_c, 1)
        work = S * C * (rows + S / 2 + eval_rows)
        need = 8 * C * (rows + eval_rows + S)
        free = GREEDY_MEMORY_FRACTION * available_bytes(
            next(iter(jac.model.parameters())).device
        )
        if work > self.max_greedy_work:
            return (
                f"S x C x (rows + S/2 + eval rows) = {S} x {C} x ({rows} + {S // 2} "
                f"+ {eval_rows}) = {work:.2g} > max_greedy_work = "
                f"{self.max_greedy_work:.2g}"
            )
        if need > free:
            return (
                f"its arrays, {need / 1e9:.1f} GB, > {GREEDY_MEMORY_FRACTION} of the "
                f"free memory ({free / GREEDY_MEMORY_FRACTION / 1e9:.1f} GB)"
            )
        return None

    def _eval_rows(self, J: torch.Tensor) -> torch.Tensor:
        """Evaluation Jacobians as the objective's rows: centred (c - 1 rows per
        input) under ``center_logits`` for classification."""
        J = J.double()
        if self.center_logits and self.likelihood != "regression":
            return centred(J)
        return J

    def _eval_jacobians(self, jac, batches: _Batches) -> torch.Tensor:
        """The Jacobians where :math:`F` counts the variance (``eval_inputs`` not
        None); sets ``eval_used``."""
        mode = self.eval_inputs
        inputs = self._inputs(batches)
        # never more inputs at once than the training loader's first batch: the
        # augmented sets come as batches of up to max_data inputs, whose
        # activations alone can pass the memory the training batches need
        # (ViT-B/16: 32 inputs at once where the loader gives 8)
        largest = max(1, batch_size(inputs[0], self.dict_key_x))
        if not isinstance(mode, str):
            self.eval_used = "given"
            evals = iter_inputs(mode, self.dict_key_y)
        else:
            if mode == "auto":
                n = min(sum(len(X) for X in inputs), self.max_data)
                mode = "augmented" if 3 * n <= self.max_data else "augmented_equal"
            self.eval_used = mode
            evals = augmented_inputs(
                inputs, self.max_data, equal_budget=mode == "augmented_equal"
            )
        evals = list(evals)
        sizes = [batch_size(X, self.dict_key_x) for X in evals]
        pieces = (
            self._eval_rows(jac(slice_batch(X, i, min(i + largest, n), n))[0])
            for X, n in zip(evals, sizes)
            for i in range(0, n, largest)
        )
        return _stack_rows(pieces, sum(sizes))

    def get_subnet_mask(self, train_loader: DataLoader) -> torch.Tensor:
        if train_loader is None:
            raise ValueError(
                "GreedyLaplaceMask needs train_loader in select(train_loader)."
            )
        S = self._n_params_subnet
        t0 = time.perf_counter()
        batches = self._first_batches(train_loader)
        pool_mask = GradientLaplaceMask(self.model, S)
        scores = pool_mask.compute_param_scores(batches)
        scores = pool_mask.drop_zero_curvature(scores, batches)
        self.n_zero_curvature = pool_mask.n_zero_curvature
        kept = self._n_params - self.n_zero_curvature  # >= S, or the pool raised
        C = min(kept, max(int(round(self.candidates * S)), self.min_candidates))
        pool = scores.topk(C).indices.sort().values
        t1 = time.perf_counter()
        jac = SubnetJacobians(
            self.model, SubnetLayout(self.model, pool), dict_key_x=self.dict_key_x
        )
        self.pool_size = C
        self.greedy_skipped = self._over_bound(jac, batches, S, C)
        if self.greedy_skipped is not None:
            logger.info(
                "GreedyLaplaceMask: the greedy steps are over their bound (%s); "
                "keeping the Gradient-Laplace top S",
                self.greedy_skipped,
            )
            self.order = scores.topk(S).indices
            self.gains, self.objective, self.chosen_by = None, {}, "gradient_laplace"
            self.block_used = None
            self.eval_used = None
            self.stage_seconds = {"screening": t1 - t0}
            chosen = torch.zeros(self._n_params, dtype=torch.bool, device=pool.device)
            chosen[self.order] = True
            return chosen
        # the curvature as square-root rows, A_n^T J_n with A_n A_n^T = Lambda_n
        # (P = rows^T rows / sigma^2 + lambda): one (n, c, C) array, not two;
        # the Jacobians themselves are kept only where F counts the variance at
        # the training inputs
        keep_J = self.eval_inputs is None or (
            self.eval_inputs == "auto" and not _interpolable(self._inputs(batches))
        )
        if keep_J and self.eval_inputs is not None:
            logger.info(
                "GreedyLaplaceMask: eval_inputs='auto' counts the variance at the "
                "training inputs (they are not floating-point tensors, which cannot "
                "be interpolated)"
            )
        n_data = min(len(batches.dataset), self.max_data)
        Js: list = []

        def curvature_rows():
            for X in self._inputs(batches):
                J, f = jac(X)
                J = J.double()
                root = output_hessian_root(f.double(), self.likelihood)
                if keep_J:
                    Js.append(J)
                yield J if root is None else torch.einsum("nck,ncq->nkq", root, J)

        A = _stack_rows(curvature_rows(), n_data)  # filled in place, no copy
        # a subsample's curvature, scaled to the whole training set's
        N = len(getattr(train_loader, "dataset", ())) or n_data
        sigma = self.sigma_noise * (n_data / max(N, n_data)) ** 0.5
        if keep_J:
            E = _stack_rows((self._eval_rows(J) for J in Js), n_data)
            del Js
            self.eval_used = "training inputs"
        else:
            E = self._eval_jacobians(jac, batches)
        t_compare = time.perf_counter()
        # the challenger: the pool's top S by screening score, on the same F
        challenger = None
        if self.compare_scores and S < C:
            if S * S <= A.numel():
                top = scores[pool].topk(S).indices
                challenger = subset_objective(
                    A, None, top, self.prior_precision, sigma, E=E
                )
            else:
                logger.info(
                    "GreedyLaplaceMask: compare_scores skipped (S x S = %.2g entries > "
                    "the pool's Jacobians, %.2g)",
                    S * S,
                    A.numel(),
                )
        t_compare = time.perf_counter() - t_compare
        self.block_used = self._block(S, A.shape[0] * A.shape[1], C)
        t2 = time.perf_counter()
        order, gains = greedy_schur(
            A,
            None,
            S,
            self.prior_precision,
            sigma,
            E=E,
            progress_bar=self.progress_bar,
            block=self.block_used,
            overwrite_eval=True,  # E was built for this call
        )
        self.objective = {"greedy": float(gains.sum())}
        self.chosen_by = "greedy"
        if challenger is not None:
            self.objective["gradient_laplace"] = float(challenger.sum())
            if self.objective["gradient_laplace"] > self.objective["greedy"]:
                order, gains, self.chosen_by = top, challenger, "gradient_laplace"
            logger.info(
                "GreedyLaplaceMask: kept the %s choice (captured variance: greedy "
                "%.4g, Gradient-Laplace top S %.4g)",
                self.chosen_by,
                self.objective["greedy"],
                self.objective["gradient_laplace"],
            )
        self.order = pool[order.to(pool.device)]
        self.gains = gains
        self.stage_seconds = {
            "screening": t1 - t0,
            "jacobians": t2 - t1 - t_compare,
            "compare": t_compare,
            "greedy": time.perf_counter() - t2,
        }
        chosen = torch.zeros(self._n_params, dtype=torch.bool, device=pool.device)
        chosen[self.order] = True
        logger.info(
            "GreedyLaplaceMask: S=%d from a pool of %d (%d zero-curvature dropped); "
            "screening %.1f s, pool Jacobians %.1f s, comparison %.1f s, greedy %.1f s",
            S,
            C,
            self.n_zero_curvature,
            *self.stage_seconds.values(),
        )
        return chosen
