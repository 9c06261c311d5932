"""Selection quality: captured share of the full predictive variance vs S, per strategy."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from laplace_subnet_ext.diagnostics.capture import FullNetworkReference
from laplace_subnet_ext.diagnostics.plot import pyplot
from laplace_subnet_ext.selection.registry import get
from laplace_subnet_ext.selection.resolve import build_mask

#: Exceptions that mean "this strategy does not apply to this model or size";
#: :func:`selection_quality` records them as a row's ``error``.
_NOT_APPLICABLE = (ValueError, NotImplementedError)

__all__ = ["selection_quality", "plot_selection_quality"]


def _build(strategy: Any, model, likelihood, S: int, ref: FullNetworkReference, kw):
    if callable(strategy) and not isinstance(strategy, type):
        return strategy(S)
    cls = get(strategy) if isinstance(strategy, str) else strategy
    return build_mask(
        cls,
        model,
        dict(kw),
        n_params_subnet=S,
        likelihood=likelihood,
        prior_precision=ref.prior_precision,
        sigma_noise=ref.sigma_noise,
    )


def selection_quality(
    model: nn.Module,
    likelihood: str,
    train_loader,
    test_inputs,
    *,
    strategies: Mapping[str, str | type | Callable[[int], Any]],
    sizes: Sequence[int | float],
    reference: FullNetworkReference | None = None,
    prior_precision: float | str = "marglik",
    sigma_noise: float = 1.0,
    strategy_kwargs: Mapping[str, dict] | None = None,
    regions: Mapping[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Captured share and Wasserstein distance of each strategy at each S.

    Parameters
    ----------
    strategies : mapping
        Label -> a registered name, a mask class (built with ``model``,
        ``n_params_subnet`` and, where it takes them, ``likelihood``,
        ``prior_precision``, ``sigma_noise`` of the reference), or a callable
        ``S -> mask``. A mask whose size is fixed (e.g. the last layer) is
        measured at its own size.
    sizes : sequence of int or float
        S, or fractions of D in (0, 1).
    reference : FullNetworkReference, optional
        Built here from ``train_loader`` and ``test_inputs`` if not given.
    strategy_kwargs : mapping, optional
        Label -> extra constructor keywords.
    regions : mapping, optional
        Name -> boolean mask (or indices) of ``test_inputs``: each row also gets
        ``share_<name>``, the share within that region (centred logits for
        classification), e.g. the inputs between and beyond the training data.

    Returns
    -------
    list of dict
        One row per (strategy, S): ``strategy``, ``S``, ``fraction`` (S / D),
        ``share``, ``wasserstein``, ``wasserstein_map``, ``share_centered``,
        ``wasserstein_centered`` (classification; see
        :class:`~.capture.CaptureResult`), ``seconds`` (the
        selection's wall time), ``n_zero_curvature``; a strategy that does not
        apply to the model (it raised ``ValueError``, e.g. a size it refuses, or
        ``NotImplementedError``, e.g. laplace's KFAC on a layer it does not
        support) has ``error`` instead of the measurements. Any other exception
        propagates: it is a bug, not a measurement.
    """
    ref = reference or FullNetworkReference(
        model,
        likelihood,
        train_loader,
        test_inputs,
        prior_precision=prior_precision,
        sigma_noise=sigma_noise,
    )
    D = ref.H.shape[0]
    rows = []
    for S in sizes:
        S = int(round(S * D)) if isinstance(S, float) and S < 1 else int(S)
        for label, strategy in strategies.items():
            row: dict[str, Any] = {"strategy": label, "S": S}
            t0 = time.perf_counter()
            try:
                mask = _build(
                    strategy,
                    model,
                    likelihood,
                    S,
                    ref,
                    dict((strategy_kwargs or {}).get(label, {})),
                )
                idx = torch.as_tensor(mask.select(train_loader)).flatten()
            except _NOT_APPLICABLE as e:
                row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                continue
            row["seconds"] = time.perf_counter() - t0
            res = ref.evaluate(idx, regions)
            row.update(
                S=res.n_subnet,
                fraction=res.n_subnet / D,
                share=res.share,
                wasserstein=res.wasserstein,
                wasserstein_map=res.wasserstein_map,
                share_centered=res.share_centered,
                wasserstein_centered=res.wasserstein_centered,
                n_zero_curvature=getattr(mask, "n_zero_curvature", None),
                **{f"share_{k}": v for k, v in res.region_shares.items()},
            )
            rows.append(row)
    return rows


def plot_selection_quality(
    rows: Sequence[dict],
    ax=None,
    title: str = "",
    metric: str = "share",
    colors: Mapping[str, Any] | None = None,
):
    """``metric`` (``"share"`` or ``"share_centered"``) vs S (log x), one line per
    strategy, median selection time in the legend; ``colors`` (label -> colour)
    keeps strategies recognisable across panels. Returns the axes.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install matplotlib``).
    """
    plt = pyplot("plot_selection_quality")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    ok = [r for r in rows if r.get(metric) is not None]
    for label in dict.fromkeys(r["strategy"] for r in ok):
        pts = sorted(
            (r["S"], r[metric], r["seconds"]) for r in ok if r["strategy"] == label
        )
        secs = sorted(p[2] for p in pts)[len(pts) // 2]
        style = "o" if len(pts) == 1 else ".-"
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            style,
            label=f"{label} ({secs:.2g} s)",
            color=(colors or {}).get(label),
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("S (weights in the subnetwork)")
    ax.set_ylabel(
        "share of full predictive variance"
        + (" (centred logits)" if metric == "share_centered" else "")
    )
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=6)
    return ax
