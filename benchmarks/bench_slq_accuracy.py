"""Accuracy of the large-S scalar prior tuning against the exact eigenvalue path.

For each problem and S: the exact maximiser of the scalar-prior log evidence
(``eigvalsh`` of H in float64, grid + golden section), laplace's default Adam
loop on the exact eigenvalues (``marglik_method="exact"``), and the large-S path
(``marglik_method="slq"``: SLQ alone and with the exact Newton correction).
Reports lambda and log evidence errors relative to the exact maximiser.

    python benchmarks/bench_slq_accuracy.py          # S = 5,000 and 10,000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.prior.large_s import tune_scalar_prior_slq

HERE = os.path.dirname(os.path.abspath(__file__))


def problem(name: str):
    torch.manual_seed(0)
    if name == "digits-mlp":  # 64-512-512-10 tanh on scikit-learn digits, N = 1,200
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X[:1200] / 16.0, dtype=torch.float32)
        y = torch.tensor(y[:1200])
        model = nn.Sequential(
            nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
            nn.Linear(512, 10),
        )  # fmt: skip
        steps, wd = 300, 1e-4
    else:  # the large-S benchmark's MLP (D = 1,070,478), N = 256 generated
        X = torch.randn(256, 256)
        with torch.no_grad():
            y = nn.Linear(256, 10)(X).argmax(-1)
        model = nn.Sequential(
            nn.Linear(256, 1024), nn.Tanh(), nn.Linear(1024, 780), nn.Tanh(),
            nn.Linear(780, 10),
        )  # fmt: skip
        steps, wd = 200, 0.0
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, DataLoader(TensorDataset(X, y), batch_size=100)


def exact_argmax(g: torch.Tensor, sc: float, h: float) -> float:
    S = g.numel()

    def psi(t):
        lam = t.exp()[:, None]
        return -0.5 * (torch.log(h * g + lam).sum(-1) - S * t + lam[:, 0] * sc)

    grid = torch.linspace(-15, 15, 3001, dtype=torch.float64)
    i = int(psi(grid).argmax())
    a, b = float(grid[i - 1]), float(grid[i + 1])
    for _ in range(100):
        c, e = b - 0.618 * (b - a), a + 0.618 * (b - a)
        fc, fe = psi(torch.tensor([c, e], dtype=torch.float64)).tolist()
        a, b = (a, e) if fc > fe else (c, b)
    return math.exp((a + b) / 2)


def run(name: str, S: int, seeds: list[int]) -> list[dict]:
    model, dl = problem(name)
    D = sum(p.numel() for p in model.parameters())
    idx = torch.randperm(D, generator=torch.Generator().manual_seed(1))[:S]
    f32 = {"curvature_dtype": torch.float32}  # the large-S storage, at S <= 10,000
    la = DenseSubnetLaplace(model, "classification", idx, marglik_method="exact", **f32)
    la.fit(dl)
    t = time.perf_counter()
    g = torch.linalg.eigvalsh(la.H.double()).clamp_min(0)
    t_eig = time.perf_counter() - t
    d = (la.mean_subnet - la.prior_mean).double()
    lam_star = exact_argmax(g, float(d @ d), float(la._H_factor))

    def evidence(lam: float) -> float:  # exact (eigenvalue path)
        return float(la.log_marginal_likelihood(torch.tensor([lam])))

    best = evidence(lam_star)
    t = time.perf_counter()
    la.optimize_prior_precision(method="marglik")
    t_adam = time.perf_counter() - t
    lam_adam = float(la.prior_precision)
    rows = [
        {"method": "exact maximiser", "lambda": lam_star, "log_evidence": best,
         "seconds": t_eig},
        {"method": "exact path (Adam, default)", "lambda": lam_adam,
         "log_evidence": evidence(lam_adam), "seconds": t_eig + t_adam},
    ]  # fmt: skip
    large = DenseSubnetLaplace(
        model, "classification", idx, marglik_method="slq", **f32
    )
    large.fit(dl)
    for seed in seeds:
        for refine in (False, True):
            t = time.perf_counter()
            info = tune_scalar_prior_slq(large, refine=refine, seed=seed)
            secs = time.perf_counter() - t
            lam = info["lambda"]
            rows.append(
                {"method": f"SLQ{' + exact correction' if refine else ''}",
                 "seed": seed, "lambda": lam, "log_evidence": evidence(lam),
                 "seconds": secs}
            )  # fmt: skip
    for r in rows:
        r.update(problem=name, S=S, D=D)
        r["lambda_rel_err"] = r["lambda"] / lam_star - 1
        r["evidence_rel_err"] = (r["log_evidence"] - best) / abs(best)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000])
    ap.add_argument("--problems", nargs="+", default=["digits-mlp", "mlp-1.07M"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "slq_accuracy"))
    a = ap.parse_args()
    rows = []
    for name in a.problems:
        for S in a.sizes:
            rows += run(name, S, a.seeds)
            os.makedirs(os.path.dirname(a.out), exist_ok=True)
            with open(a.out + ".json", "w") as fh:
                json.dump({"rows": rows}, fh, indent=1)
    print(f"{'problem':<11} {'S':>6} {'method':<28} {'seed':>4} {'lambda':>9} "
          f"{'err':>7} {'log evidence':>13} {'rel err':>9} {'s':>6}")  # fmt: skip
    for r in rows:
        print(
            f"{r['problem']:<11} {r['S']:>6} {r['method']:<28} "
            f"{r.get('seed', ''):>4} {r['lambda']:9.4g} {r['lambda_rel_err']:+7.2%} "
            f"{r['log_evidence']:13.6g} {r['evidence_rel_err']:+9.4%} "
            f"{r['seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
