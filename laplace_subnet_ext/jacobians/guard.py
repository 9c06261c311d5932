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
"""

from __future__ import annotations

from collections import Counter

import torch

from laplace_subnet_ext.jacobians.rules import Use

__all__ = ["explained_params"]


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


def explained_params(
    f: torch.Tensor, uses: dict[int, list[Use]], params: dict[int, torch.Tensor], n: int
) -> tuple[set[int], dict[int, str]]:
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
    ok : set of int
        ids of the explained parameters (an unused parameter is explained: its
        columns are zero).
    reasons : dict
        ``id(param) -> why`` for the others.
    """
    total, reachable = _param_edges([f.grad_fn], params, set())
    ok: set[int] = set()
    reasons: dict[int, str] = {}
    for pid in params:
        live = [
            u
            for u in uses.get(pid, [])
            if u.z.grad_fn is not None and u.z.grad_fn in reachable
        ]
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
    return ok, reasons
