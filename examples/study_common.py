"""Metrics, predictive helpers and seed bookkeeping shared by the two studies
(``rotated_mnist.py``, ``bayesian_lora_text.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from laplace_subnet_ext.diagnostics.metrics import ECE_BINS as N_BINS
from laplace_subnet_ext.diagnostics.metrics import classification_metrics, ood_auroc
from laplace_subnet_ext.diagnostics.metrics import probit as probit  # re-exported

#: the paper's validation grid for prior precisions: 1e-2 .. 1e4, 13 values
GRID = torch.logspace(-2, 4, 13)
METRICS = ("acc", "nll", "ece", "brier")


def metrics(p: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, NLL, ECE (10 equal-width bins) and Brier score of ``(n, c)``
    probabilities (the package's :func:`classification_metrics`)."""
    return classification_metrics(p, y, N_BINS)


def _bins(conf: torch.Tensor) -> torch.Tensor:
    """Equal-width confidence bins (lo, hi], as torchmetrics."""
    return ((conf * N_BINS).ceil().long() - 1).clamp(0, N_BINS - 1)


def reliability(p: torch.Tensor, y: torch.Tensor) -> dict:
    """Per confidence bin: count, summed confidence, summed hits (add over seeds)."""
    conf, pred = p.double().max(-1)
    bins = _bins(conf)
    hit = (pred == y).double()
    return {
        "count": torch.bincount(bins, minlength=N_BINS).tolist(),
        "conf": torch.zeros(N_BINS, dtype=torch.float64)
        .index_add_(0, bins, conf)
        .tolist(),
        "hits": torch.zeros(N_BINS, dtype=torch.float64)
        .index_add_(0, bins, hit)
        .tolist(),
    }


#: AUROC of predictive entropy separating out- from in-distribution inputs
auroc = ood_auroc


def grid_pick(nll_along_grid: list[float]) -> float:
    """The grid value of smallest validation NLL."""
    return float(GRID[int(torch.tensor(nll_along_grid).argmin())])


def summarise(runs: list[dict], key: str) -> list[dict]:
    """Mean and standard error over seeds per ``(method, prior, row[key])``."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run["rows"]:
            groups.setdefault((r["method"], r["prior"], r[key]), []).append(r)
    out = []
    for (m, prior, k), rs in groups.items():
        agg = {"method": m, "prior": prior, key: k, "n_seeds": len(rs)}
        for name in (*METRICS, "ood_auroc"):
            if name in rs[0]:
                v = torch.tensor([r[name] for r in rs], dtype=torch.float64)
                agg[name] = float(v.mean())
                agg[name + "_se"] = (
                    float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
                )
        out.append(agg)
    return out


def seed_path(out: Path, seed: int) -> Path:
    return out.with_name(f"{out.name}_seed{seed}.json")


def finished_seeds(out: Path) -> list[dict]:
    """Every finished seed's JSON written next to ``out``."""
    runs = [
        json.loads(p.read_text())
        for p in sorted(out.parent.glob(f"{out.name}_seed*.json"))
    ]
    if not runs:
        raise SystemExit(f"no finished seeds at {out}_seed*.json")
    return runs
