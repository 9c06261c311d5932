"""Marginal-likelihood prior tuning at large S: laplace 0.3 vs ours, side by side.

Both tune a scalar prior precision with laplace's own loop
(``optimize_prior_precision(method="marglik", n_steps=100)``) on the *same*
curvature: each child process fits our ``DenseSubnetLaplace`` once and, for
laplace, copies H / mean / loss into a ``laplace.FullSubnetLaplace``; only the
tuning is timed. Each run has a wall-time cap ("did not finish" is recorded).
Prints a table and writes JSON.

    python benchmarks/bench_marglik.py --n-subnet 2000 5000 20000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time


def _run(impl: str, n_subnet: int, n_train: int, q) -> None:
    import torch
    from laplace import FullSubnetLaplace
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from laplace_subnet_ext import DenseSubnetLaplace

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(100, 300),
        nn.ReLU(),
        nn.Linear(300, 300),
        nn.ReLU(),
        nn.Linear(300, 10),
    )
    D = sum(p.numel() for p in model.parameters())
    X, y = torch.randn(n_train, 100), torch.randint(10, (n_train,))
    idx = torch.randperm(D)[:n_subnet]
    # "ours": float32 curvature, as laplace's; "ours_default": the default
    # curvature dtype (float64 up to S = 10,000 for this float32 model)
    dtype = None if impl == "ours_default" else torch.float32
    ours = DenseSubnetLaplace(model, "classification", idx, curvature_dtype=dtype)
    t = time.perf_counter()
    ours.fit(DataLoader(TensorDataset(X, y), batch_size=100))
    out = {"impl": impl, "D": D, "S": n_subnet, "fit_ours_s": time.perf_counter() - t}
    la = ours
    if impl == "laplace":
        la = FullSubnetLaplace(model, "classification", idx)
        la.H, la.mean, la.loss = ours.H, ours.mean, ours.loss
        la.n_data, la.n_outputs = ours.n_data, ours.n_outputs
        del ours
    t = time.perf_counter()
    la.optimize_prior_precision(method="marglik", n_steps=100)
    out["marglik_s"] = time.perf_counter() - t
    out["prior_precision"] = float(la.prior_precision.reshape(-1)[0])
    out["log_marglik"] = float(la.log_marginal_likelihood())
    out["curvature_dtype"] = str(la.H.dtype)
    if impl != "laplace":  # what of the tuning is the one eigvalsh of H
        la.precision.invalidate()
        t = time.perf_counter()
        la.precision.eigvalsh()
        out["eigvalsh_s"] = time.perf_counter() - t
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    q.put(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-subnet", type=int, nargs="+", default=[2000, 5000, 20000])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--cap", type=float, default=600.0)
    ap.add_argument("--impls", nargs="+", default=["laplace", "ours", "ours_default"])
    ap.add_argument("--out", default="benchmarks/results/marglik")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for s in a.n_subnet:
        for impl in a.impls:
            q = ctx.Queue()
            p = ctx.Process(target=_run, args=(impl, s, a.n_train, q))
            p.start()
            p.join(a.cap)
            if p.is_alive():
                p.kill()
                p.join()
                row = {
                    "impl": impl,
                    "S": s,
                    "status": f"did not finish in {a.cap:.0f} s",
                }
            elif q.empty():
                row = {"impl": impl, "S": s, "status": f"killed (exit {p.exitcode})"}
            else:
                row = {**q.get(), "status": "ok"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"args": vars(a), "rows": rows}, fh, indent=1)
    print(
        f"\n{'impl':<13} {'S':>6} {'marglik s':>10} {'eigvalsh s':>10} "
        f"{'prior prec':>11} {'log marglik':>12}  status"
    )
    for r in rows:
        ms = f"{r['marglik_s']:.2f}" if "marglik_s" in r else "-"
        pp = f"{r['prior_precision']:.4g}" if "prior_precision" in r else "-"
        lm = f"{r['log_marglik']:.6g}" if "log_marglik" in r else "-"
        ev = f"{r['eigvalsh_s']:.2f}" if "eigvalsh_s" in r else "-"
        print(
            f"{r['impl']:<13} {r['S']:>6} {ms:>10} {ev:>10} {pp:>11} {lm:>12}  "
            f"{r['status']}"
        )


if __name__ == "__main__":
    main()
