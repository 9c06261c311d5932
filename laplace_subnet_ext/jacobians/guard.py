r"""Decide from the autograd graph which parameters the recorded uses fully explain.

The chain rule makes :math:`\partial f / \partial \theta` a sum over the edges of
the autograd graph that enter :math:`\theta`'s ``AccumulateGrad`` node: one edge
per differentiable use in the forward pass. A fast rule covers the uses it
recorded; it is exact for :math:`\theta` if and only if *every* edge into
:math:`\theta` reachable from the output lies inside exactly one recorded use
(the nodes between the use's output ``z`` and its inputs). Any other edge - a
parameter used functionally by a parent, a hook that never fired, a weight tied
to a module without a rule, a view or a split of the weight - leaves
:math:`\theta` unexplained, and it takes the generic path for that forward pass.

The walk is over graph nodes only (no tensors are touched), once per forward.
It also records two facts of the graph:

* a custom ``torch.autograd.Function`` (e.g. reentrant
  ``torch.utils.checkpoint``) may use parameters that are not among its graph
  inputs, so the edges cannot prove anything: every tracked parameter is
  unexplained in a graph that contains one;
* the lowest floating-point precision of any node's output (a float32
  sub-computation inside a float64 model, e.g. an RMSNorm that upcasts), which
  sets the tolerance of the numerical checks.

Edges prove *which operations* use a parameter, not *which sample* a row of the
operation belongs to; that is checked numerically on every forward pass by
:func:`misattributed`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from laplace_subnet_ext.jacobians.rules import Use

__all__ = ["GraphReport", "explained_params", "misattributed", "identity_tolerance"]


@dataclass
class GraphReport:
    """What the autograd graph of one forward pass proves.

    Attributes
    ----------
    ok : set of int
        ids of the parameters whose every use is a recorded use.
    reasons : dict
        ``id(param) -> why`` for the others.
    live : set of int
        ids of the parameters that have a recorded use reachable from the output.
    compute_eps : float
        Machine epsilon of the least precise floating dtype in the graph.
    """

    ok: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)
    compute_eps: float = 0.0


def _accumulated(node) -> torch.Tensor | None:
    return (
        getattr(node, "variable", None)
        if type(node).__name__ == "AccumulateGrad"
        else None
    )


def _param_edges(roots: list, tracked: dict[int, torch.Tensor], stop: set) -> tuple:
    """Walk from ``roots``; return (edges into each tracked param, visited nodes).

    An edge is ``(id(node), input_index)``; nodes in ``stop`` are not entered.
    """
    edges: dict[int, Counter] = {}
    seen: set = set()
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        for i, (nxt, _) in enumerate(node.next_functions):
            if nxt is None:
                continue
            var = _accumulated(nxt)
            if var is not None:
                if id(var) in tracked:
                    edges.setdefault(id(var), Counter())[(id(node), i)] += 1
            else:
                stack.append(nxt)
    return edges, seen


def _opaque(nodes: set) -> str | None:
    """Name of a custom ``autograd.Function`` node among ``nodes``, if any."""
    for node in nodes:
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return type(node).__name__
    return None


def _lowest_precision(nodes: set, dtype: torch.dtype) -> float:
    """Largest machine epsilon among the floating outputs of ``nodes``."""
    eps = torch.finfo(dtype).eps
    for node in nodes:
        for meta in getattr(node, "_input_metadata", ()):  # torch private; optional
            dt = getattr(meta, "dtype", None)
            if dt is not None and dt.is_floating_point:
                eps = max(eps, torch.finfo(dt).eps)
    return eps


def explained_params(
    f: torch.Tensor, uses: dict[int, list[Use]], params: dict[int, torch.Tensor], n: int
) -> GraphReport:
    """Which tracked parameters are fully explained by their recorded uses.

    Parameters
    ----------
    f : torch.Tensor
        ``(n, c)`` model output of the forward pass that recorded ``uses``.
    uses : dict
        ``id(param) -> [Use, ...]`` from :class:`.capture.FastCapture`.
    params : dict
        ``id(param) -> param``, the tracked parameters.
    n : int
        Batch size of ``f``; a use whose rows hold another number of samples
        does not explain anything.

    Returns
    -------
    GraphReport
        An unused parameter is explained: its columns are zero.
    """
    total, reachable = _param_edges([f.grad_fn], params, set())
    report = GraphReport(compute_eps=_lowest_precision(reachable, f.dtype))
    ok, reasons = report.ok, report.reasons
    opaque = _opaque(reachable)
    for pid in params:
        live = [
            u
            for u in uses.get(pid, [])
            if u.z.grad_fn is not None and u.z.grad_fn in reachable
        ]
        if live:
            report.live.add(pid)
        if opaque is not None:
            reasons[pid] = (
                f"the graph holds a custom autograd.Function ({opaque}) whose "
                "uses of parameters are not visible"
            )
            continue
        inside: Counter = Counter()
        for u in live:
            stop = {t.grad_fn for t in u.inputs if t.grad_fn is not None}
            e, _ = _param_edges([u.z.grad_fn], {pid: params[pid]}, stop)
            inside.update(e.get(pid, Counter()))
        want = total.get(pid, Counter())
        if any(u.n != n for u in live):
            reasons[pid] = "a recorded use does not have the batch as leading dimension"
        elif inside != want:
            reasons[pid] = (
                f"{sum(want.values())} use(s) in the autograd graph, "
                f"{sum(inside.values())} explained by fast rules"
            )
        else:
            ok.add(pid)
    return report


def identity_tolerance(compute_eps: float) -> float:
    """Relative tolerance of :func:`misattributed`: ``min(0.05, 1000 eps)`` of the
    graph's least precise dtype (float64: 2.2e-13, float32: 1.2e-4)."""
    return min(0.05, 1e3 * compute_eps)


def misattributed(
    per_output: torch.Tensor, weighted: torch.Tensor, magnitude: torch.Tensor
) -> float:
    r"""Relative error of a use's sample crediting, from two backward passes.

    A fast rule credits row :math:`r` of a use's output :math:`z` to sample
    :math:`b(r)` (``Use.sample_rows``). That is right if and only if
    :math:`\partial f_{b'} / \partial z_r = 0` for every :math:`b' \ne b(r)`.
    With :math:`d_k = \partial (\sum_b f_{bk}) / \partial z` (the engine's
    per-output passes) and one more pass of :math:`\sum_{bk} u_{bk} f_{bk}`
    for random :math:`u`, the crediting implies

    .. math:: \partial_{z_r} \textstyle\sum_{bk} u_{bk} f_{bk}
              = \sum_k u_{b(r) k}\, (d_k)_r ,

    and any row that reaches another sample, or another sample's output
    (gathered / scattered / sorted rows, batch statistics, a sequence-first
    layout mistaken for batch-first), breaks it for almost every :math:`u`.

    Parameters
    ----------
    per_output : torch.Tensor
        ``(n, m)``: :math:`\sum_k u_{b(r)k} (d_k)_r` in the use's sample layout.
    weighted : torch.Tensor
        ``(n, m)``: the gradient of :math:`\sum_{bk} u_{bk} f_{bk}` at ``z``.
    magnitude : torch.Tensor
        ``(n, m)``: :math:`\sum_k |u_{b(r)k}| |(d_k)_r|`, the scale of the
        round-off in ``per_output`` (no cancellation).
    """
    scale = magnitude.norm() + weighted.norm()
    if float(scale) == 0.0:
        return 0.0
    return float((per_output - weighted).norm() / scale)
