"""Where each prior-precision choice lands on the clean-vs-shifted curve.

The seed-0 setup of ``shift_classification.py`` (digits CNN, D = 13,706, Adam with
weight decay 5e-4; 60/15/25 % train/validation/test). For every Laplace method of
that study - diagonal, KFAC (ASDL GGN) and last-layer Laplace (laplace-torch),
Wasserstein and random subnetworks of S = 2,000 (ours) - the prior precision is
swept over 1e-2..1e4 and the validation NLL / ECE and the NLL on shifted test sets
(rotation by 60 degrees, Gaussian noise of severity 3) are recorded, with marks:

* ``marglik``: ``optimize_prior_precision(method="marglik")``;
* ``gridsearch``: smallest validation NLL on the grid (the paper's protocol);
* ``weight decay``: the prior the MAP was trained with, :math:`\\lambda = wd\\cdot N`;
* ``weight decay x S/D`` (subnetworks): the same after the paper's rescaling.

Our posteriors use :func:`laplace_subnet_ext.diagnostics.prior_sweep` (one
eigendecomposition); laplace's use their own ``functional_variance`` on Jacobians
formed once per set. Both are laplace's GLM probit predictive at every grid value.

    python examples/prior_tradeoff.py            # full
    python examples/prior_tradeoff.py --quick    # small; used by the tests
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from laplace import Laplace
from laplace.lllaplace import LLLaplace
from shift_classification import (
    CNN,
    LAPLACE_BASELINES,
    corrupt,
    metrics,
    rotate,
    train,
)
from sklearn.datasets import load_digits
from study_common import seeded
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext import selection
from laplace_subnet_ext.diagnostics import PriorSweep, plot_prior_sweep, prior_sweep

WD = 5e-4


def laplace_sweep(la, sets: dict, grid: torch.Tensor) -> PriorSweep:
    """laplace-torch's GLM probit predictive along the grid, Jacobians formed once."""
    if isinstance(la, LLLaplace):
        jac = la.backend.last_layer_jacobians
    elif "asdl" in la._backend_cls.__name__.lower() and la.enable_backprop:
        jac = la.backend.functorch_jacobians  # what laplace itself calls here
    else:
        jac = la.backend.jacobians
    cached = {}
    for name, (x, y) in sets.items():
        blocks = [jac(x[i : i + 64]) for i in range(0, len(x), 64)]
        cached[name] = (
            [J.detach() for J, _ in blocks],
            [f.detach() for _, f in blocks],
            y,
        )
    saved = la.prior_precision.clone()
    sweep = PriorSweep(grid)
    for lam in grid.tolist():
        la.prior_precision = lam
        for name, (Js, fs, y) in cached.items():
            p = torch.cat(
                [
                    torch.softmax(
                        f
                        / torch.sqrt(
                            1
                            + math.pi
                            / 8
                            * la.functional_variance(J).diagonal(dim1=1, dim2=2)
                        ),
                        -1,
                    )
                    for J, f in zip(Js, fs)
                ]
            ).detach()
            m = metrics(p, y)
            sweep.rows.append(
                {
                    "prior_precision": lam,
                    "full_network_prior_precision": lam,
                    "set": name,
                    "nll": -m["ll"],
                    "acc": m["acc"],
                    "ece": m["ece"],
                    "brier": m["brier"],
                }
            )
    val_nll = torch.tensor(sweep.column("nll", "val"))
    sweep.marks["gridsearch"] = float(grid[int(val_nll.argmin())])
    la.prior_precision = 1.0
    la.optimize_prior_precision(method="marglik")
    sweep.marks["marglik"] = float(la.prior_precision.mean())
    la.prior_precision = saved
    return sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="examples/results/prior_tradeoff")
    a = ap.parse_args()
    seed = 0
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    ntr, nva = int(0.6 * len(X)), int(0.15 * len(X))
    tr = (X[:ntr], y[:ntr])
    va = (X[ntr : ntr + nva], y[ntr : ntr + nva])
    te = (X[ntr + nva :], y[ntr + nva :])
    loader = DataLoader(
        TensorDataset(*tr),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    fit_loader = DataLoader(TensorDataset(*tr), batch_size=128)
    model = train(seeded(CNN, seed), loader, 8 if a.quick else 30, seed, wd=WD)
    D = sum(p.numel() for p in model.parameters())
    S = 300 if a.quick else 2000
    g = torch.Generator().manual_seed(1000 + seed)
    sets = {
        "val": va,
        "rotation 60": (rotate(te[0], 60), te[1]),
        "gaussian noise 3": (corrupt(te[0], "gaussian_noise", 3, g), te[1]),
    }
    if a.quick:  # 64 points per set
        sets = {k: (x[:64], t[:64]) for k, (x, t) in sets.items()}
    va = sets["val"]
    grid = torch.logspace(-2, 4, 5 if a.quick else 25)
    wd_prior = WD * ntr  # Adam's L2 term on the mean loss, as a prior on the sum

    sweeps = {}
    for name, kw in LAPLACE_BASELINES:
        la = Laplace(model, "classification", **kw)
        la.fit(fit_loader)
        sweeps[name] = laplace_sweep(la, sets, grid)
        sweeps[name].marks["weight decay"] = wd_prior
        print(f"{name}: marks {sweeps[name].marks}", flush=True)
    for name, mask in [
        (
            "subnet Wasserstein",
            selection.get("wasserstein")(model, S, likelihood="classification"),
        ),
        ("subnet random", selection.get("random")(model, S, seed=seed)),
    ]:
        la = Laplace(
            model,
            "classification",
            "subnetwork",
            "full",
            subnetwork_indices=mask.select(fit_loader),
            prior_precision=wd_prior,
            prior_rescaling=True,
        )
        la.fit(fit_loader)
        shifted = {k: v for k, v in sets.items() if k != "val"}
        sweeps[name] = prior_sweep(la, va, shifted, prior_precisions=grid)
        sweeps[name].marks["weight decay"] = wd_prior
        sweeps[name].marks["weight decay x S/D"] = float(la.prior_precision)
        print(f"{name}: marks {sweeps[name].marks}", flush=True)

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump(
            {
                "D": D,
                "S": S,
                "n_train": ntr,
                "weight_decay": WD,
                "sweeps": {
                    k: {"marks": s.marks, "rows": s.rows} for k, s in sweeps.items()
                },
            },
            fh,
            indent=1,
        )
    print("\nmetrics at the grid value nearest to each choice:")
    print(
        f"{'method':<20} {'choice':<19} {'lambda':>8} {'grid':>8} {'val NLL':>8} "
        f"{'val ECE':>8} {'rot60 NLL':>9} {'noise3 NLL':>10}"
    )
    for name, s in sweeps.items():
        for mark, lam in s.marks.items():
            v, r, n = (s.at(lam, k) for k in sets)
            print(
                f"{name:<20} {mark:<19} {lam:8.3g} {v['prior_precision']:8.3g} "
                f"{v['nll']:8.3f} {v['ece']:8.3f} {r['nll']:9.3f} {n['nll']:10.3f}"
            )
    plot(sweeps, a.out)
    print(f"wrote {a.out}.json and {a.out}.png")


def plot(sweeps: dict, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sweeps), 3, figsize=(12, 2.9 * len(sweeps)))
    for row, (name, s) in zip(axes, sweeps.items()):
        plot_prior_sweep(s, metrics=("nll", "ece"), axes=row)
        row[0].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
