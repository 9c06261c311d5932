r"""The one seam through which the posterior gets its Jacobians.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``p`` all parameters,
``s`` subnetwork parameters, ``t`` positions sharing a weight.

:class:`SubnetJacobians` returns :math:`J_S(x)` ``(b, c, s)`` and :math:`f(x)`
``(b, c)``. Methods:

``"auto"`` (default)
    Fast path for tensors covered by a rule (:mod:`.rules`), generic
    ``torch.func`` path (:mod:`.functional`) for every other touched tensor.
    The fast path is exact by construction, in three layers:

    1. a tensor is a candidate only if a module with a rule holds it;
    2. after each forward pass the autograd graph must show that *every* use of
       the tensor lies inside a recorded use (:mod:`.guard`), and one extra
       backward pass with random per-sample output weights must show that every
       row of every use belongs to the sample the rule credits it to
       (:func:`.guard.misattributed`: gathers, scatters, sorting, batch
       statistics, a sequence-first layout); otherwise the tensor takes the
       generic path for that pass (and from then on);
    3. on each tensor's first live use, its fast columns are compared with one
       reverse pass of the unmodified model (:mod:`.verify`, about one extra
       forward + backward pass); a tensor that disagrees moves to the generic
       path with a warning naming it. ``verify=False`` skips this check.
``"functional"``
    Generic path for all touched tensors: ``torch.func``, and where it cannot
    differentiate the model, one plain ``backward()`` per (sample, output).
``"backend"``
    laplace-torch's backend Jacobians for all ``D`` parameters, then sliced:
    the reference this package replaces, kept for comparison.

For every fast use, :math:`\partial f_k/\partial\theta_s = \sum_t g_{kst} h_{st}`
(output gradient times input factor, see :mod:`.rules`): one backward pass per
output, memory ``O(b c S)`` plus activations, never ``O(b c D)``.
The fast rules assume, as BackPACK does, that samples do not interact in the
forward pass (true in eval mode for the covered modules; checked by layer 3).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch
from laplace_subnet_ext.jacobians.capture import FastCapture
from laplace_subnet_ext.jacobians.direct import DIRECT_SHAPES
from laplace_subnet_ext.jacobians.functional import (
    autograd_jacobians,
    functional_jacobians,
)
from laplace_subnet_ext.jacobians.guard import (
    explained_params,
    identity_tolerance,
    misattributed,
)
from laplace_subnet_ext.jacobians.layout import SubnetLayout, TensorSelection
from laplace_subnet_ext.jacobians.rules import rule_for
from laplace_subnet_ext.jacobians.verify import (
    mismatched_tensors,
    mismatched_vjp,
    tolerance,
)
from laplace_subnet_ext.numerics.curvature import diagonal_contraction

__all__ = ["SubnetJacobians", "JACOBIAN_METHODS"]

JACOBIAN_METHODS = ("auto", "functional", "backend")
logger = logging.getLogger(__name__)

#: default memory bound of one block of Jacobians (the predictive's blocks, one
#: generic-path call, the blocked diagonal's weight blocks): 256 MiB
BLOCK_BYTES = 2**28
#: elements of one (b, chunk, t) product; bounds the fast path's scratch memory
CHUNK_ELEMENTS = 2**24
#: a weight use's selected entries are formed as a dense block (one batched
#: matmul) when the block's work is at most BLOCK_RATIO times that of gathering
#: them one by one; BLOCK_OVERHEAD is the block's per-entry cost in positions
#: (see :func:`_plan`; measured in benchmarks/bench_conv_block.py)
BLOCK_RATIO = 32
BLOCK_OVERHEAD = 16


class SubnetJacobians:
    """Jacobians of a model's outputs w.r.t. the subnetwork parameters only.

    Parameters
    ----------
    model : torch.nn.Module
    layout : SubnetLayout
    method : {"auto", "functional", "backend"}
    dict_key_x : str
        Key of the input tensor for dict-like inputs.
    generic_chunk_size : int, optional
        Batch chunk for the generic path; default: from ``block_bytes`` (see
        :meth:`generic_plan`).
    block_bytes : int, default=256 MiB
        Memory bound of one generic-path call: its inputs are chunked, and its
        outputs (``torch.func``'s vectorised backward passes) too when one input
        alone would pass the bound.
    backend_jacobians : callable, optional
        ``x -> (Js, f)`` of laplace's backend (full then sliced); required
        for ``method="backend"``.
    verify : bool, default=True
        Compare each tensor's fast columns with plain autograd on its first
        live use.

    Attributes
    ----------
    generic_reasons : dict
        ``tensor name -> why`` for candidates of the fast path that were moved
        to the generic path (by the graph guard, the sample check or the
        run-time check).
    autograd_reason : str or None
        Why the generic path uses one ``backward()`` per (sample, output):
        the error ``torch.func`` raised on this model, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: SubnetLayout,
        *,
        method: str = "auto",
        dict_key_x: str = "input_ids",
        generic_chunk_size: int | None = None,
        backend_jacobians: Callable | None = None,
        verify: bool = True,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        if method not in JACOBIAN_METHODS:
            raise ValueError(
                f"jacobian_method must be one of {JACOBIAN_METHODS}; got {method!r}."
            )
        if method == "backend" and backend_jacobians is None:
            raise ValueError("jacobian_method='backend' needs backend_jacobians.")
        self.model = model
        self.layout = layout
        self.method = method
        self.dict_key_x = dict_key_x
        self.generic_chunk_size = generic_chunk_size
        self.block_bytes = int(block_bytes)
        #: per-input signature -> (saved activation bytes per input, outputs)
        self._activations: dict[tuple, tuple[int, int]] = {}
        self.backend_jacobians = backend_jacobians
        self.verify = bool(verify)
        #: names of the fast tensors already compared by the run-time check
        self.verified: set[str] = set()
        self.generic_reasons: dict[str, str] = {}
        self.autograd_reason: str | None = None
        #: samples may interact (a use reached other samples): never chunk
        self._whole_batch = False

    def split(self) -> tuple[list, list]:
        """Candidates of the fast path, and tensors for the generic path.

        Candidates: tensors a module rule covers, and (``"auto"``) every other
        tensor, whose direct uses in a module's own forward may be recorded
        (:mod:`.direct`); the checks of each forward pass demote the rest."""
        if self.method != "auto":
            return [], list(self.layout.selections)
        fast, slow = [], []
        for sel in self.layout.selections:
            (slow if sel.name in self.generic_reasons else fast).append(sel)
        return fast, slow

    def _covered(self) -> set[int]:
        """ids of the parameters a module rule covers."""
        return {
            id(p)
            for m in self.model.modules()
            if (rule := rule_for(m)) is not None
            for p in rule.params(m)
        }

    def generic(self) -> dict[str, str]:
        """``tensor name -> why`` for every selected tensor on the generic path:
        demoted ones (:attr:`generic_reasons`: no rule and no recorded direct
        use, or a check), and all of them under ``method="functional"``; a new
        dict."""
        _, slow = self.split()
        return {
            sel.name: self.generic_reasons.get(
                sel.name, f"jacobian_method={self.method!r}"
            )
            for sel in slow
        }

    def __call__(
        self, x: torch.Tensor | MutableMapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``Js`` ``(b, c, s)`` and ``f`` ``(b, c)``, both detached."""
        if self.method == "backend":
            Js, f = self.backend_jacobians(x)
            return Js.detach(), f.detach()
        candidates, slow = self.split()
        Js = f = None
        with torch.enable_grad():
            if candidates:
                Js, f, fast, demoted, report = self._fast(candidates, x)
                slow = slow + demoted
                new = [
                    s
                    for s in fast
                    if s.name not in self.verified and id(s.param) in report.live
                ]
                if new and self.verify:
                    slow = slow + self._check(new, Js, x, report.compute_eps)
                self.verified.update(s.name for s in new)
            if slow:
                Js, f = self._fill_generic(slow, x, Js, f)
        return Js, f

    def diagonal(
        self,
        x: torch.Tensor | MutableMapping[str, Any],
        out_factor: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
        generic: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(s,)`` :math:`\sum_b \operatorname{diag}(J_b^\top A_b A_b^\top J_b)`
        and ``f`` ``(b, c)``, without forming :math:`J_S`.

        ``out_factor`` maps the output ``f`` to :math:`A` ``(b, c, m)`` (e.g. a
        square root of the GGN's output Hessian); ``None`` is the identity
        (:math:`m = c`). On the fast path, one forward and :math:`m` backward
        passes of the batch, each tensor's per-sample gradient of
        :math:`\sum_k A_{bkj} f_{bk}` formed, squared and summed one output
        combination :math:`j` at a time: scratch memory ``O(b x numel)`` of the
        largest selected tensor, not ``O(b c s)``. The same guard, sample check
        and run-time check as :meth:`__call__` (the check compares a random
        combination of the formed gradients with plain autograd). Tensors on
        the generic path are formed by it one tensor at a time (``(b, c,
        numel)``) and contracted the same way; ``generic=False`` leaves their
        entries at zero for a caller that forms them in bounded column blocks
        (the tensors are ``split()[1]`` afterwards).
        """
        if self.method == "backend":
            Js, f = self.backend_jacobians(x)
            return diagonal_contraction(
                Js.detach(), out_factor(f.detach()) if out_factor else None
            ), f.detach()
        candidates, slow = self.split()
        diag = f = None
        with torch.enable_grad():
            if candidates:
                diag, f, slow = self._fast_diagonal(candidates, x, out_factor, slow)
            for sel in slow if generic else ():  # one tensor at a time
                Js_l, f_l = self._generic([sel], x)
                f = f_l if f is None else f
                if diag is None:
                    diag = f.new_zeros(self.layout.n_subnet)
                A = None if out_factor is None else out_factor(f)
                diag[sel.columns] = diagonal_contraction(Js_l, A)
        if diag is None:  # every tensor generic and left to the caller
            ref = self.layout.selections[0].param
            diag = torch.zeros(self.layout.n_subnet, dtype=ref.dtype, device=ref.device)
        return diag, f

    def _fast_diagonal(self, candidates: list, x, out_factor, slow: list) -> tuple:
        diag = None
        check: dict[str, torch.Tensor] = {}  # name -> sum_bk w_bk (A^T J)_bk
        weights = None

        def sink(k, sel, cols, wts):
            nonlocal diag, weights
            if diag is None:
                diag = cols.new_zeros(self.layout.n_subnet)
            weights = wts
            if self.verify and sel.name not in self.verified:
                part = wts[:, k].to(cols.dtype) @ cols
                check[sel.name] = check[sel.name] + part if sel.name in check else part
            diag[sel.columns] += cols.square_().sum(0)  # cols is ours: in place

        _, f, fast, demoted, report = self._fast(
            candidates, x, out_factor=out_factor, sink=sink
        )
        if diag is None:
            diag = f.new_zeros(self.layout.n_subnet)
        slow = slow + demoted
        new = [
            s
            for s in fast
            if s.name not in self.verified and id(s.param) in report.live
        ]
        if new and self.verify and weights is not None:
            # the reference: one reverse pass with the same random combination
            A = None if out_factor is None else out_factor(f)
            u = weights if A is None else torch.einsum("bcm,bm->bc", A, weights)
            ours = [check.get(s.name, diag.new_zeros(s.local.numel())) for s in new]
            bad = mismatched_vjp(self.model, new, ours, x, u, report.compute_eps)
            slow = slow + self._flag_mismatched(new, bad, report.compute_eps)
        self.verified.update(s.name for s in new)
        return diag, f, slow

    # ---------------------------------------------------------------- fast path
    def _demote(self, selections: list, reason: str) -> None:
        for s in selections:
            self.generic_reasons[s.name] = reason
            logger.info("%s takes the generic path: %s", s.name, reason)

    def _fast(
        self,
        candidates: list,
        x,
        out_factor: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
        sink: Callable | None = None,
    ) -> tuple:
        """The fast path's passes. Without ``sink``: ``Js`` ``(b, c, s)``. With
        ``sink``: one backward pass per output combination ``k`` of
        ``out_factor(f)`` ``(b, c, m)`` (identity if None), and
        ``sink(k, sel, cols, wts)`` called with each tensor's ``(b, s_l)``
        per-sample gradients (all its uses summed) and the sample check's
        ``(b, m)`` random weights; ``Js`` is then None."""
        params = {id(s.param): s.param for s in candidates}
        covered = self._covered()
        direct = [p for k, p in params.items() if k not in covered]
        with FastCapture(self.model, list(params.values()), direct) as cap:
            f = self.model(x)
        _check_output(f)
        b, c = f.shape
        report = explained_params(f, cap.uses, params, b)
        if cap.foreign_hooks:
            report.ok.clear()
            report.reasons.update(dict.fromkeys(params, cap.foreign_hooks))
        for s in candidates:
            if id(s.param) in report.ok:
                continue
            if id(s.param) not in covered and not cap.uses[id(s.param)]:
                self._demote(
                    [s],
                    f"no fast rule covers it (held by {type(s.module).__name__} as "
                    f"{s.attr!r}, and none of its uses is a {DIRECT_SHAPES}; see "
                    "jacobians.covered_modules(), register_rule)",
                )
            else:
                self._demote([s], report.reasons[id(s.param)])
        fast = [s for s in candidates if id(s.param) in report.ok]
        A = None if out_factor is None else out_factor(f.detach())
        m = c if A is None else A.shape[-1]
        Js = None
        if sink is None:
            Js = f.new_zeros(b, c, self.layout.n_subnet)

            def sink(k, sel, cols, wts):
                Js[:, k, sel.columns] += cols

        work: dict[int, tuple] = {}  # per tensor: (sel, [(use, plan)])
        for sel in fast:
            for u in cap.uses[id(sel.param)]:
                if u.z.requires_grad:  # input-side factors once per forward
                    work.setdefault(id(sel.param), (sel, []))[1].append(
                        (u, _plan(sel, u))
                    )
        outs = {id(u.z): u for _, ups in work.values() for u, _ in ups}
        zs = [u.z for u in outs.values()]
        # random per-sample output weights for the sample check (fixed seed)
        gen = torch.Generator(device=f.device).manual_seed(0)
        wts = torch.randn(b, m, dtype=f.dtype, device=f.device, generator=gen)
        pred = {k: None for k in outs}
        size = {k: None for k in outs}
        for k in range(m if zs else 0):
            out = f[:, k] if A is None else (f * A[:, :, k].to(f.dtype)).sum(1)
            grads = torch.autograd.grad(
                out.sum(), zs, retain_graph=True, allow_unused=True
            )
            grad_of = {id(z): g for z, g in zip(zs, grads)}
            for key, use in outs.items():
                g = grad_of[key]
                if g is not None:
                    r = use.sample_rows(g.detach())
                    w = wts[:, k, None]
                    pred[key] = w * r if pred[key] is None else pred[key] + w * r
                    a = (w * r).abs()
                    size[key] = a if size[key] is None else size[key] + a
            for sel, ups in work.values():
                cols = None
                for u, plan in ups:
                    dz = grad_of[id(u.z)]
                    if dz is not None:
                        part = plan.contract(dz.detach())
                        cols = part if cols is None else cols + part
                if cols is not None:
                    sink(k, sel, cols, wts)
        check = wts if A is None else torch.einsum("bcm,bm->bc", A.to(f.dtype), wts)
        bad = self._misattributed(f, check, zs, outs, pred, size, report.compute_eps)
        demoted = [s for s in candidates if id(s.param) not in report.ok]
        wrong = {id(outs[key].param) for key in bad}
        wrong |= {
            id(u.param) for _, ups in work.values() for u, _ in ups if id(u.z) in bad
        }
        if wrong:
            self._whole_batch = True
            err = max(bad.values())
            hit = [s for s in fast if id(s.param) in wrong]
            self._demote(
                hit,
                "rows of a recorded use are not attributable to the samples the "
                f"rule credits them to (sample check: relative error {err:.1e})",
            )
            demoted += hit
            fast = [s for s in fast if id(s.param) not in wrong]
        return Js, f.detach(), fast, demoted, report

    @staticmethod
    def _misattributed(f, wts, zs, outs, pred, size, compute_eps) -> dict:
        """``id(z) -> error`` for the uses whose sample crediting fails."""
        if not zs:
            return {}
        grads = torch.autograd.grad((f * wts).sum(), zs, allow_unused=True)
        tol = identity_tolerance(compute_eps)
        bad = {}
        for (key, use), g in zip(outs.items(), grads):
            if g is None and pred[key] is None:
                continue
            weighted = torch.zeros_like(pred[key]) if g is None else use.sample_rows(g)
            if pred[key] is None:
                err = 1.0 if bool(weighted.any()) else 0.0
            else:
                err = misattributed(pred[key], weighted.detach(), size[key])
            if err > tol:
                bad[key] = err
        return bad

    def _check(self, fast: list, Js: torch.Tensor, x, compute_eps: float) -> list:
        """Run-time verification of the fast columns; demote and warn on mismatch."""
        bad = mismatched_tensors(self.model, fast, Js, x, compute_eps)
        return self._flag_mismatched(fast, bad, compute_eps)

    def _flag_mismatched(self, fast: list, bad: dict, compute_eps: float) -> list:
        if not bad:
            return []
        tol = tolerance(compute_eps)
        for name, err in bad.items():
            self.generic_reasons[name] = (
                f"run-time check: relative error {err:.2e} > {tol:.0e}"
            )
        warnings.warn(
            "fast subnetwork Jacobians disagree with plain autograd for "
            + ", ".join(f"{n} (relative error {e:.2e})" for n, e in bad.items())
            + f" (tolerance {tol:.0e}); these tensors now take the generic path, "
            "which is exact. Please report the model at the laplace-subnet-ext "
            "issue tracker.",
            RuntimeWarning,
            stacklevel=5,
        )
        return [s for s in fast if s.name in bad]

    # ------------------------------------------------------------- generic path
    def _fill_generic(self, slow: list, x, Js, f) -> tuple:
        Js_slow, f_slow = self._generic(slow, x)
        if Js is None:
            f = f_slow
            Js = torch.empty(
                *f.shape, self.layout.n_subnet, dtype=f.dtype, device=f.device
            )
        for sel, cols in zip(slow, _split_cols(Js_slow, slow)):
            Js[:, :, sel.columns] = cols
        return Js, f

    def generic_plan(self, slow: list, x) -> tuple[int, int | None]:
        r"""``(inputs per chunk, outputs per vectorised backward)`` of the generic
        path for the batch ``x``, so that one call stays below ``block_bytes``.

        ``torch.func.jacrev`` over a chunk of :math:`m` inputs with :math:`c`
        outputs holds the forward's saved activations (:math:`A` bytes per
        input, measured on two), the backward's intermediates for all
        :math:`m c` vectorised cotangents (about :math:`A` each) and the result
        (:math:`c \cdot` touched entries): :math:`m ((1 + c) A + c\,t)` bytes.
        The chunk is the largest :math:`m` within the bound; where one input
        alone exceeds it, ``jacrev``'s ``chunk_size`` vectorises over
        :math:`k` cotangents at a time, :math:`(1 + k) A + c\,t` within the
        bound, down to one (then the bound can be exceeded by the model itself:
        one forward and one backward pass of one input)."""
        n = batch_size(x, self.dict_key_x)
        if self.generic_chunk_size is not None:
            return self.generic_chunk_size, None
        if self._whole_batch or self.autograd_reason is not None:
            return n, None
        key = _input_signature(x)
        if key not in self._activations:  # measured once per input shape
            m = min(n, 2)  # two inputs: batch statistics need more than one
            A, c = _activation_bytes(self.model, slice_batch(x, 0, m, n))
            self._activations[key] = (A // m, c)
        A, c = self._activations[key]
        touched = sum(sel.param.numel() for sel in slow)
        result = c * touched * slow[0].param.element_size()
        per_input = (1 + c) * A + result
        chunk = int(max(1, min(n, self.block_bytes // max(1, per_input))))
        if chunk > 1 or per_input <= self.block_bytes:
            return chunk, None
        k = (self.block_bytes - A - result) // max(1, A)
        return 1, int(max(1, min(c, k)))

    def _generic(self, slow: list, x) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_size(x, self.dict_key_x)
        chunk, vmap_chunk = self.generic_plan(slow, x)
        parts_J, parts_f = [], []
        for start in range(0, n, chunk):
            xc = slice_batch(x, start, min(start + chunk, n), n)
            Jc, fc = self._generic_chunk(slow, xc, vmap_chunk)
            parts_J.append(Jc.detach())
            parts_f.append(fc.detach())
        return torch.cat(parts_J), torch.cat(parts_f)

    def _generic_chunk(
        self, slow: list, x, vmap_chunk: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.func``; where it cannot differentiate the model, plain autograd."""
        if self.autograd_reason is None:
            try:
                Jc, fc = functional_jacobians(self.model, slow, x, vmap_chunk)
            except RuntimeError as err:
                self.autograd_reason = f"{type(err).__name__}: {err}"
                logger.info(
                    "torch.func cannot differentiate this model (%s); the generic "
                    "path uses one backward() per (sample, output)",
                    self.autograd_reason,
                )
            else:
                _check_output(fc)
                return Jc, fc
        try:
            Jc, fc = autograd_jacobians(self.model, slow, x)
        except RuntimeError as err:
            names = ", ".join(s.name for s in slow)
            raise NotImplementedError(
                f"cannot form the Jacobian of {type(self.model).__name__} w.r.t. "
                f"{names}: torch.func failed ({self.autograd_reason}) and plain "
                f"autograd failed ({type(err).__name__}: {err})."
            ) from err
        _check_output(fc)
        return Jc, fc


def _plan(sel: TensorSelection, use) -> _Gathered | _Blocked | _Whole:
    r"""How one use's selected entries are formed.

    A dense block of per-sample gradients over the entries' rows :math:`R` and
    columns :math:`C` (one batched matmul, :math:`|R||C|(t + w)` work for
    :math:`t` positions and a per-entry write cost :math:`w` =
    ``BLOCK_OVERHEAD``) where that is at most ``BLOCK_RATIO`` times the
    :math:`s t` products of gathering the :math:`s` entries one by one, which
    cost more each (scattered reads); else gathered."""
    if use.outer is not None:
        in_f = use.outer.in_features
        s = sel.local.numel()
        if s == sel.param.numel() and bool(
            (sel.local == torch.arange(s, device=sel.local.device)).all()
        ):  # every entry in order: the whole per-sample gradient, no gathering
            return _Whole(use.outer, sel.local.device)
        rows, r_inv = torch.unique(sel.local // in_f, return_inverse=True)
        cols, c_inv = torch.unique(sel.local % in_f, return_inverse=True)
        span = rows.numel() * cols.numel()
        if span <= BLOCK_RATIO * s:
            H = use.outer.in_cols(cols)  # (b, t, |C|)
            t = H.shape[1]
            if span * (t + BLOCK_OVERHEAD) <= BLOCK_RATIO * s * t:
                return _Blocked(use.outer, rows, H, r_inv, c_inv)
    return _Gathered(use, sel.local)


class _Gathered:
    r"""Entry by entry: :math:`\sum_t g_{bst} h_{bst}` from the use's gathered
    factors, in chunks of bounded scratch memory."""

    def __init__(self, use, local: torch.Tensor) -> None:
        self.use, self.local = use, local
        self.h = use.factor(local)  # (b, s, t) or None

    def contract(self, dz: torch.Tensor) -> torch.Tensor:
        g = self.use.gradient(dz, self.local)
        if self.h is None:
            return g.sum(-1)
        b, n, t = g.shape
        step = max(1, CHUNK_ELEMENTS // max(1, b * t))
        h = self.h
        return torch.cat(
            [
                (g[:, i : i + step] * h[:, i : i + step]).sum(-1)
                for i in range(0, n, step)
            ],
            dim=1,
        )


class _Whole:
    r"""Every entry of a weight in order: the per-sample gradients
    :math:`G_{bot} H_{bti}` flattened row-major (the parameter's own order), one
    batched matmul, no gathering. The product is the result itself (its memory
    is the caller's, e.g. :meth:`SubnetJacobians.diagonal`'s input chunk)."""

    def __init__(self, outer, device: torch.device) -> None:
        self.outer = outer
        self.H = outer.in_cols(torch.arange(outer.in_features, device=device))

    def contract(self, dz: torch.Tensor) -> torch.Tensor:
        G = self.outer.out_rows(dz)  # (b, o, t)
        return torch.bmm(G, self.H).flatten(1)


class _Blocked:
    r"""Dense block :math:`G_{bRt} H_{btC}` over the selected entries' rows
    :math:`R` and columns :math:`C` (one batched matmul per chunk of rows), the
    selected entries then picked from it. The same sums as :class:`_Gathered`
    in another order; one chunk's block holds at most ``CHUNK_ELEMENTS`` entries
    (at least one row)."""

    def __init__(self, outer, rows, H, r_inv, c_inv) -> None:
        self.outer, self.rows, self.H = outer, rows, H  # H: (b, t, |C|)
        b, _, n_cols = H.shape
        by_row = torch.argsort(r_inv, stable=True)  # entries grouped by row
        self.unsort = torch.argsort(by_row)
        r_sorted, c_sorted = r_inv[by_row], c_inv[by_row]
        step = max(1, CHUNK_ELEMENTS // max(1, b * n_cols))
        bounds = torch.arange(0, rows.numel() + step, step, device=rows.device)
        ends = torch.searchsorted(r_sorted, bounds).tolist()
        #: (first row, last row + 1, places of the chunk's entries in its block)
        self.chunks = [
            (
                r0,
                r0 + step,
                (r_sorted[lo:hi] - r0) * n_cols + c_sorted[lo:hi],
            )
            for r0, lo, hi in zip(bounds.tolist(), ends, ends[1:])
            if hi > lo
        ]

    def contract(self, dz: torch.Tensor) -> torch.Tensor:
        G = self.outer.out_rows(dz).index_select(1, self.rows)  # (b, |R|, t)
        parts = [
            torch.bmm(G[:, r0:r1], self.H).flatten(1).index_select(1, flat)
            for r0, r1, flat in self.chunks
        ]
        return torch.cat(parts, 1).index_select(1, self.unsort)


def _split_cols(Js: torch.Tensor, selections: list[TensorSelection]) -> list:
    sizes = [sel.local.numel() for sel in selections]
    return list(torch.split(Js, sizes, dim=-1))


def _input_signature(x) -> tuple:
    """Shapes (batch dimension dropped) and dtypes of the input tensors."""
    items = sorted(x.items()) if isinstance(x, MutableMapping) else [("", x)]
    return tuple(
        (k, tuple(v.shape[1:]), v.dtype) for k, v in items if torch.is_tensor(v)
    )


def _activation_bytes(model: nn.Module, x1) -> tuple[int, int]:
    """Bytes the forward pass of ``x1`` saves for the backward pass (each
    storage once, parameters not counted), and the number of outputs."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. a tensor without storage
            seen[(id(t), None)] = t.numel() * t.element_size()
        return t

    with (
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        f = model(x1)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = sum(v for (ptr, _), v in seen.items() if ptr not in params)
    return int(saved), int(f.shape[-1])


def _check_output(f: torch.Tensor) -> None:
    if f.ndim != 2:
        raise ValueError(
            "the model output must be 2-D (batch, outputs); got shape "
            f"{tuple(f.shape)}. Reshape the output, e.g. with a final nn.Flatten()."
        )
