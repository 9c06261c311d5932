"""Curvature dtype: float32 or float64 storage of the S x S curvature of a float32 model.

1. The case that failed (README's tabular note): Friedman #1, MLPs of width 100
   and 200, Wasserstein subnetworks of S = 3,151, the example's prior grid
   (lambda in 1e-2..1e3, chosen by validation log-likelihood). For each curvature
   dtype: at how many grid priors the Cholesky factorisation of the posterior
   precision fails (the posterior then falls back to a clipped eigendecomposition
   with a RuntimeWarning), the smallest eigenvalue of the stored H relative to
   its largest (float64 ``eigvalsh`` of the stored matrix), the chosen prior and
   the test log-likelihood.
2. Cost of float64: ``cholesky`` and ``eigvalsh`` of an S x S GGN-like matrix
   (rank 256 plus the identity) at S = 2,000, 5,000, 10,000 in both dtypes.

    python benchmarks/bench_curvature_dtype.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import tabular_regression as tab  # noqa: E402  (the example's data, nets, grid)
from laplace import Laplace  # noqa: E402

from laplace_subnet_ext import selection  # noqa: E402


def friedman_case(width: int, k: int, S: int) -> list[dict]:
    X, y = tab.dataset("friedman1")
    tr, va, te = tab.split(X, y, "standard", k)
    model = tab.train(width, tr, va, k, 400)
    with torch.no_grad():
        sigma = (model(tr[0]) - tr[1]).pow(2).mean().sqrt().item()
    loader = DataLoader(TensorDataset(*tr), batch_size=256)
    idx = selection.get("wasserstein")(
        model, S, likelihood="regression", sigma_noise=sigma
    ).select(loader)
    return [
        posterior(model, idx, sigma, loader, va, te, dtype)
        | {"width": width, "split": k}
        for dtype in (torch.float32, torch.float64)
    ]


def posterior(model, idx, sigma, loader, va, te, dtype) -> dict:
    la = Laplace(
        model, "regression", "subnetwork", "full",
        subnetwork_indices=idx, sigma_noise=sigma, curvature_dtype=dtype,
    )  # fmt: skip
    t = time.perf_counter()
    la.fit(loader)
    fit_s = time.perf_counter() - t
    e = torch.linalg.eigvalsh(la.H.double())
    failed, best = [], (-float("inf"), None)
    for lam in tab.PRIOR_GRID:
        la.prior_precision = float(lam)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            mu, var = la(va[0])
        if any("not numerically positive definite" in str(x.message) for x in w):
            failed.append(float(lam))
        v = tab.gaussian_ll(mu, var.reshape(-1, 1) + sigma**2, va[1])
        best = max(best, (v, float(lam)), key=lambda t: t[0])
    la.prior_precision = best[1]
    mu, var = la(te[0])
    return {
        "S": idx.numel(),
        "dtype": str(dtype).removeprefix("torch."),
        "fit_s": fit_s,
        "H_min_over_max_eig": float(e[0] / e[-1]),
        "H_max_eig": float(e[-1]),
        "grid_priors_not_pd": failed,
        "n_grid": len(tab.PRIOR_GRID),
        "prior": best[1],
        "test_ll": tab.gaussian_ll(mu, var.reshape(-1, 1) + sigma**2, te[1]),
    }


def timing(S: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(S, 256, generator=g, dtype=torch.float64)
    H = (A @ A.T).to(dtype)
    H.diagonal().add_(1.0)
    out = {"S": S, "dtype": str(dtype).removeprefix("torch.")}
    for name, fn in (("cholesky_s", torch.linalg.cholesky), ("eigvalsh_s", torch.linalg.eigvalsh)):  # fmt: skip
        t = time.perf_counter()
        fn(H)
        out[name] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--widths", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--timing-sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "curvature_dtype"))
    a = ap.parse_args()
    cases, times = [], []
    for w in a.widths:
        for k in a.splits:
            for r in friedman_case(w, k, 3151):
                print(json.dumps(r), flush=True)
                cases.append(r)
    for S in a.timing_sizes:
        for dt in (torch.float32, torch.float64):
            r = timing(S, dt)
            print(json.dumps(r), flush=True)
            times.append(r)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"friedman": cases, "timing": times}, fh, indent=1)
    print(f"\n{'width':>5} {'split':>5} {'dtype':>8} {'min/max eig H':>13} "
          f"{'not PD':>7} {'prior':>7} {'test LL':>8}")  # fmt: skip
    for r in cases:
        print(
            f"{r['width']:>5} {r['split']:>5} {r['dtype']:>8} "
            f"{r['H_min_over_max_eig']:13.2e} "
            f"{len(r['grid_priors_not_pd']):>3}/{r['n_grid']:<3} "
            f"{r['prior']:7.3g} {r['test_ll']:8.4f}"
        )
    print(f"\n{'S':>6} {'dtype':>8} {'cholesky s':>10} {'eigvalsh s':>10}")
    for r in times:
        print(
            f"{r['S']:>6} {r['dtype']:>8} {r['cholesky_s']:10.2f} {r['eigvalsh_s']:10.2f}"
        )


if __name__ == "__main__":
    main()
