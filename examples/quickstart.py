"""Quickstart: subnetwork Laplace on scikit-learn's digits (ships offline).

Trains a small MLP to its MAP, selects the 600 largest-magnitude weights, fits a dense
linearized Laplace posterior over them through ``laplace.Laplace``, picks the
prior precision by marginal likelihood, and prints
accuracy / NLL / ECE of the MAP network and of the subnetwork Laplace predictive
on the test set and on the test set with Gaussian pixel noise (a distribution shift).

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
    train = DataLoader(TensorDataset(Xtr, ytr), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()

    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        subnetwork_mask="laplace_largest_magnitude",
        n_params_subnet=n_subnet,
        prior_precision=1.0,
        prior_rescaling=True,
    )
    la.fit(DataLoader(TensorDataset(Xtr, ytr), batch_size=256))
    la.optimize_prior_precision(method="marglik", prior_structure="scalar")
    g = torch.Generator().manual_seed(seed)
    shifted = (Xte + 0.6 * torch.randn(Xte.shape, generator=g)).clamp(0, 1)
    rows = {}
    for split, xs in (("test", Xte), ("test+noise", shifted)):
        with torch.no_grad():
            p_map = torch.softmax(model(xs), -1)
        rows[f"MAP {split}"] = metrics(p_map, yte)
        rows[f"subnet-LA {split}"] = metrics(
            la(xs, pred_type="glm", link_approx="probit"), yte
        )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{type(la).__name__}: S={la.n_params_subnet} of D={n_params} weights, "
        f"prior precision {la.prior_precision.item():.3g}"
    )
    print(f"{'method / split':<22} {'acc':>6} {'nll':>7} {'ece':>7}")
    for name, m in rows.items():
        print(f"{name:<22} {m['acc']:6.3f} {m['nll']:7.4f} {m['ece']:7.4f}")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-subnet", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.n_subnet, a.epochs, a.seed)
