"""Tabular regression (paper Fig. 3): full inference in small nets vs subnetwork
inference of the same size in large nets, on data that ships with scikit-learn.

Datasets: ``load_diabetes`` (442 x 10) and Friedman #1 (``make_friedman1``,
generated, 1,000 x 10). Splits: standard random splits and "gap" splits (sort by
one input feature, hold out the middle third as test). 15 % of the training data
is the validation set (early stopping, prior precision grid). MLPs with 2 hidden
ReLU layers of width 10, 50, 100, 200. The small nets (10, 50) get full-network
GGN Laplace; the large nets (100, 200) get Wasserstein subnetworks of exactly the
small nets' sizes. Metric: mean test log-likelihood (standardised targets) +-
standard error over splits. Writes JSON and PNG.

    python examples/tabular_regression.py            # 5 splits per setting
    python examples/tabular_regression.py --quick    # 2 splits, diabetes only
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
import tqdm
from laplace import Laplace
from sklearn.datasets import load_diabetes, make_friedman1
from study_common import mean_se, train_epochs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext import selection

WIDTHS_SMALL = (10, 50)
WIDTHS_LARGE = (100, 200)
PRIOR_GRID = torch.logspace(-2, 3, 16)


def dataset(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "diabetes":
        X, y = load_diabetes(return_X_y=True)
    else:
        X, y = make_friedman1(n_samples=1000, n_features=10, noise=1.0, random_state=0)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[
        :, None
    ]


def split(X, y, kind: str, k: int):
    n = len(X)
    if kind == "standard":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(k))
        te, tr = perm[: n // 10], perm[n // 10 :]
    else:  # gap: feature k, middle third out
        order = X[:, k % X.shape[1]].argsort()
        te = order[n // 3 : 2 * n // 3]
        tr = torch.cat([order[: n // 3], order[2 * n // 3 :]])
        tr = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(k))]
    nva = int(0.15 * len(tr))
    va, tr = tr[:nva], tr[nva:]
    mx, sx = X[tr].mean(0), X[tr].std(0).clamp_min(1e-6)
    my, sy = y[tr].mean(0), y[tr].std(0)
    f = lambda i: ((X[i] - mx) / sx, (y[i] - my) / sy)  # noqa: E731
    return f(tr), f(va), f(te)


def mlp(n_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 1),
    )


def train(width, tr, va, seed, epochs):
    """Adam (lr 3e-3, weight decay 1e-4), batches of 32, early stopping on the
    validation MSE (patience 30 epochs), the best weights restored."""
    torch.manual_seed(seed)
    model = mlp(tr[0].shape[1], width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loader = DataLoader(
        TensorDataset(*tr),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    best = {"mse": float("inf"), "state": None, "patience": 0}

    def early_stop(epoch: int) -> bool:
        model.eval()
        with torch.no_grad():
            v = nn.functional.mse_loss(model(va[0]), va[1]).item()
        if v < best["mse"] - 1e-5:
            best["mse"], best["patience"] = v, 0
            best["state"] = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            best["patience"] += 1
        return best["patience"] >= 30

    mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    train_epochs(model, loader, opt, epochs, mse, after_epoch=early_stop)
    model.load_state_dict(best["state"])
    return model.eval()


def gaussian_ll(mu, var, y) -> float:
    return float(
        (-0.5 * (math.log(2 * math.pi) + var.log() + (y - mu) ** 2 / var)).mean()
    )


def map_ll(model, tr, te) -> tuple[float, float]:
    """Test LL of the MAP net with the maximum-likelihood noise, and that noise."""
    with torch.no_grad():
        sigma = (model(tr[0]) - tr[1]).pow(2).mean().sqrt().item()
        ll = gaussian_ll(model(te[0]), torch.full_like(te[1], sigma**2), te[1])
    return ll, sigma


def laplace_ll(model, idx, tr, va, te) -> tuple[float, float]:
    """Fit subnetwork Laplace, choose the prior on validation LL, return test LL."""
    with torch.no_grad():
        sigma = (model(tr[0]) - tr[1]).pow(2).mean().sqrt().item()
    la = Laplace(
        model,
        "regression",
        "subnetwork",
        "full",
        subnetwork_indices=idx,
        sigma_noise=sigma,
    )
    la.fit(DataLoader(TensorDataset(*tr), batch_size=256))
    best = (-float("inf"), None)
    for lam in PRIOR_GRID:
        la.prior_precision = float(lam)
        mu, var = la(va[0])
        v = gaussian_ll(mu, var.reshape(-1, 1) + sigma**2, va[1])
        best = max(best, (v, float(lam)), key=lambda t: t[0])
    la.prior_precision = best[1]
    mu, var = la(te[0])
    return gaussian_ll(mu, var.reshape(-1, 1) + sigma**2, te[1]), best[1]


def run(quick: bool, datasets: list[str] | None = None) -> list[dict]:
    datasets = datasets or (["diabetes"] if quick else ["diabetes", "friedman1"])
    n_splits = 2 if quick else 5
    widths_large = WIDTHS_LARGE[:1] if quick else WIDTHS_LARGE
    epochs = 100 if quick else 400
    rows = []
    jobs = [
        (d, kind, k)
        for d in datasets
        for kind in ("standard", "gap")
        for k in range(n_splits)
    ]
    for d, kind, k in tqdm.tqdm(jobs, desc="splits"):
        X, y = dataset(d)
        tr, va, te = split(X, y, kind, k)

        def row(**kw):
            return dict(dataset=d, split=kind, k=k, **kw)  # noqa: B023

        sizes = {}
        for w in WIDTHS_SMALL:
            model = train(w, tr, va, k, epochs)
            D = sum(p.numel() for p in model.parameters())
            sizes[w] = D
            ll_map, sigma = map_ll(model, tr, te)
            rows.append(
                row(
                    width=w,
                    S=D,
                    D=D,
                    method="MAP",
                    test_ll=ll_map,
                )
            )
            ll, lam = laplace_ll(model, torch.arange(D), tr, va, te)
            rows.append(
                row(
                    width=w,
                    S=D,
                    D=D,
                    method="full Laplace",
                    test_ll=ll,
                    prior=lam,
                )
            )
        for w in widths_large:
            model = train(w, tr, va, k, epochs)
            D = sum(p.numel() for p in model.parameters())
            ll_map, sigma = map_ll(model, tr, te)
            rows.append(
                row(
                    width=w,
                    S=0,
                    D=D,
                    method="MAP",
                    test_ll=ll_map,
                )
            )
            loader = DataLoader(TensorDataset(*tr), batch_size=256)
            for small_w, S in sizes.items():
                mask = selection.get("wasserstein")(
                    model, S, likelihood="regression", sigma_noise=sigma
                )
                idx = mask.select(loader)
                ll, lam = laplace_ll(model, idx, tr, va, te)
                rows.append(
                    row(
                        width=w,
                        S=S,
                        D=D,
                        method=f"subnet S=D({small_w})",
                        test_ll=ll,
                        prior=lam,
                    )
                )
    return rows


def summarise(rows):
    """Mean test log-likelihood and its standard error (``test_ll_se``) over the
    splits per (dataset, split kind, width, method)."""
    return mean_se(
        rows, ("dataset", "split", "width", "method"), ("test_ll",), keep=("S", "D")
    )


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["dataset"], r["split"]) for r in summary))
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False
    )
    for ax, (d, s) in zip(axes[0], groups):
        rs = [
            r
            for r in summary
            if r["dataset"] == d and r["split"] == s and r["method"] != "MAP"
        ]
        labels = [f"w{r['width']} {r['method']}" for r in rs]
        ax.errorbar(
            range(len(rs)),
            [r["test_ll"] for r in rs],
            yerr=[r["test_ll_se"] for r in rs],
            fmt="o",
        )
        ax.set_xticks(range(len(rs)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{d} / {s}", fontsize=9)
        ax.set_ylabel("test log-likelihood")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="examples/results/tabular_regression")
    ap.add_argument(
        "--datasets",
        nargs="+",
        choices=["diabetes", "friedman1"],
        default=None,
        help="default: both (quick: diabetes)",
    )
    a = ap.parse_args()
    rows = run(a.quick, a.datasets)
    summary = summarise(rows)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"summary": summary, "rows": rows}, fh, indent=1)
    print(
        f"{'dataset':<10} {'split':<9} {'width':>5} {'method':<18} {'S':>6} {'D':>6} {'test LL':>16}"
    )
    for r in summary:
        print(
            f"{r['dataset']:<10} {r['split']:<9} {r['width']:>5} {r['method']:<18} {r['S']:>6} {r['D']:>6} "
            f"{r['test_ll']:8.3f}±{r['test_ll_se']:.3f}"
        )
    plot(summary, a.out + ".png")
    print(f"wrote {a.out}.json and {a.out}.png")


if __name__ == "__main__":
    main()
