"""Plot a :class:`~.sweep.PriorSweep` (matplotlib imported on use only)."""

from __future__ import annotations

from laplace_subnet_ext.diagnostics.sweep import PriorSweep

__all__ = ["plot_prior_sweep", "pyplot"]


def pyplot(caller: str):
    """``matplotlib.pyplot``, or an ``ImportError`` naming ``caller`` and the fix."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{caller} needs matplotlib; pip install matplotlib.") from e
    return plt


_STYLE = {"marglik": ("tab:red", "--"), "gridsearch": ("tab:green", ":")}


def plot_prior_sweep(sweep: PriorSweep, metrics=("nll", "ece"), axes=None, title=""):
    """Metric vs prior precision (one line per set) and, with a shifted set, the
    clean-vs-shifted NLL trade-off curve; tuned values marked. Returns the axes.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install matplotlib``).
    """
    plt = pyplot("plot_prior_sweep")
    sets = list(dict.fromkeys(r["set"] for r in sweep.rows))
    metrics = [m for m in metrics if m in sweep.rows[0]]
    n_panels = len(metrics) + (len(sets) > 1)
    if axes is None:
        _, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels, 3.2))
    axes = list(axes) if n_panels > 1 else [axes]
    lam = sweep.prior_precisions.tolist()
    for ax, m in zip(axes, metrics):
        for s in sets:
            ax.plot(lam, sweep.column(m, s), "o-", ms=2, label=s)
        for name, value in sweep.marks.items():
            color, ls = _STYLE.get(name, ("k", "-"))
            ax.axvline(value, color=color, ls=ls, label=f"{name} ({value:.3g})")
        ax.set_xscale("log")
        ax.set_xlabel("prior precision (subnetwork)")
        ax.set_ylabel(m)
    axes[0].legend(fontsize=7)
    if len(sets) > 1:
        ax = axes[-1]
        clean = sweep.column("nll", sets[0])
        for s in sets[1:]:
            ax.plot(clean, sweep.column("nll", s), "o-", ms=2, label=s)
            for name, value in sweep.marks.items():
                row_c, row_s = sweep.at(value, sets[0]), sweep.at(value, s)
                color, _ = _STYLE.get(name, ("k", "-"))
                ax.plot(row_c["nll"], row_s["nll"], "*", ms=10, color=color)
        ax.set_xlabel(f"{sets[0]} NLL")
        ax.set_ylabel("shifted NLL")
        ax.set_title("trade-off (stars: tuned)", fontsize=8)
        ax.legend(fontsize=7)
    if title:
        axes[0].figure.suptitle(title, fontsize=9)
    return axes
