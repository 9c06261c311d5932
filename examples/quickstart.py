"""Quickstart: subnetwork Laplace on scikit-learn's digits (ships offline).

Trains a small MLP to its MAP, selects 600 weights by Wasserstein selection (the
plugin's default strategy), fits a dense linearized Laplace posterior over them
through ``laplace.Laplace``, and prints accuracy / NLL / ECE of the MAP network and
of the subnetwork Laplace predictive with three prior precisions - by marginal
likelihood, by validation NLL, and by NLL on noisy validation data - on the test set and on the test set with
Gaussian pixel noise (a distribution shift), then the validation NLL along the
prior precision: the in-distribution / shift trade-off in numbers.

    python examples/quickstart.py
"""

from __future__ import annotations

import argparse

import torch
from laplace import Laplace
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext.diagnostics import prior_sweep


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins."""
    conf, pred = probs.max(-1)
    edges = torch.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            total += (
                inb.float().mean()
                * ((pred[inb] == y[inb]).float().mean() - conf[inb].mean()).abs()
            )
    return float(total)


def metrics(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {
        "acc": float((probs.argmax(-1) == y).float().mean()),
        "nll": float(-probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()),
        "ece": ece(probs, y),
    }


def main(n_subnet: int = 600, epochs: int = 60, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed)
    Xtr, Xva, ytr, yva = train_test_split(Xtr, ytr, test_size=0.2, random_state=seed)
    train = DataLoader(TensorDataset(Xtr, ytr), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()

    g = torch.Generator().manual_seed(seed)

    def noisy(x: torch.Tensor) -> torch.Tensor:  # the distribution shift
        return (x + 0.6 * torch.randn(x.shape, generator=g)).clamp(0, 1)

    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        subnetwork_mask="wasserstein",  # the plugin's default strategy
        n_params_subnet=n_subnet,
        prior_precision=1.0,
        prior_rescaling=True,
    )
    la.fit(DataLoader(TensorDataset(Xtr, ytr), batch_size=256))
    # where each tuning puts the prior precision: one eigendecomposition, O(S^2)
    # per grid value (the paper tunes on validation NLL; laplace's default is the
    # marginal likelihood)
    sweep = prior_sweep(la, (Xva, yva), {"val+noise": (noisy(Xva), yva)})
    noisy_nll = sweep.column("nll", "val+noise")
    tuned = {
        "marglik": sweep.marks["marglik"],
        "val NLL": sweep.marks["gridsearch"],
        "noisy-val NLL": float(sweep.prior_precisions[noisy_nll.index(min(noisy_nll))]),
    }

    tests = {"test": Xte, "test+noise": noisy(Xte)}
    rows = {}
    for split, xs in tests.items():
        with torch.no_grad():
            rows[("MAP", split)] = metrics(torch.softmax(model(xs), -1), yte)
        for name, lam in tuned.items():
            la.prior_precision = lam
            probs = la(xs, pred_type="glm", link_approx="probit")
            rows[(f"subnet-LA, {name}", split)] = metrics(probs, yte)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{type(la).__name__}: Wasserstein subnetwork of S={la.n_params_subnet} of "
        f"D={n_params} weights. Prior precision by marginal likelihood "
        f"{tuned['marglik']:.3g}, by validation NLL {tuned['val NLL']:.3g} (the "
        f"grid's top: the MAP), by NLL on noisy validation data "
        f"{tuned['noisy-val NLL']:.3g}"
    )
    print(f"{'method':<28} {'split':<11} {'acc':>6} {'nll':>7} {'ece':>7}")
    for (name, split), m in rows.items():
        print(f"{name:<28} {split:<11} {m['acc']:6.3f} {m['nll']:7.4f} {m['ece']:7.4f}")
    print("prior precision sweep (validation NLL, clean / noisy):")
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0):
        clean, shifted = sweep.at(lam, "val"), sweep.at(lam, "val+noise")
        print(
            f"  {clean['prior_precision']:9.3g}  {clean['nll']:7.4f} / "
            f"{shifted['nll']:7.4f}"
        )
    return {f"{name} {split}": m for (name, split), m in rows.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-subnet", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.n_subnet, a.epochs, a.seed)
