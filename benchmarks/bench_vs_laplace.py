"""Side-by-side: laplace-torch's FullSubnetLaplace vs our DenseSubnetLaplace.

Each (implementation, problem) runs in its own subprocess with a wall-time cap;
wall time of select/fit/marglik/predict and the peak resident memory of the
process are recorded; a run over its cap is recorded as "did not finish".
Prints a table, writes JSON and a PNG.

    python benchmarks/bench_vs_laplace.py --widths 100 1000 --n-subnet 1000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

PROBLEMS_HELP = "MLP 100 -> width -> width -> 10 inputs/outputs; D grows with width^2"


def _run(impl: str, width: int, n_subnet: int, n_train: int, n_test: int, lik: str, q):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(2)
    torch.manual_seed(0)
    from laplace import FullSubnetLaplace

    from laplace_subnet_ext import DenseSubnetLaplace

    model = nn.Sequential(
        nn.Linear(100, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )
    D = sum(p.numel() for p in model.parameters())
    X = torch.randn(n_train, 100)
    y = (
        torch.randint(10, (n_train,))
        if lik == "classification"
        else torch.randn(n_train, 10)
    )
    dl = DataLoader(TensorDataset(X, y), batch_size=100)
    out = {"impl": impl, "width": width, "D": D, "S": n_subnet, "lik": lik}
    t = time.perf_counter()
    idx = torch.randperm(D)[:n_subnet]
    out["select_s"] = time.perf_counter() - t
    cls = FullSubnetLaplace if impl == "laplace" else DenseSubnetLaplace
    la = cls(model, lik, idx, prior_precision=1.0)
    t = time.perf_counter()
    la.fit(dl)
    out["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    la.optimize_prior_precision(method="marglik", n_steps=100)
    out["marglik_s"] = time.perf_counter() - t
    t = time.perf_counter()
    la(
        torch.randn(n_test, 100), pred_type="glm", link_approx="probit"
    ) if lik == "classification" else la(torch.randn(n_test, 100))
    out["predict_s"] = time.perf_counter() - t
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    q.put(out)


def run_capped(impl, width, n_subnet, n_train, n_test, lik, cap_s):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(impl, width, n_subnet, n_train, n_test, lik, q))
    t = time.perf_counter()
    p.start()
    p.join(cap_s)
    if p.is_alive():
        p.kill()
        p.join()
        return {
            "impl": impl,
            "width": width,
            "S": n_subnet,
            "lik": lik,
            "status": f"did not finish in {cap_s:.0f} s",
        }
    if p.exitcode != 0 or q.empty():
        return {
            "impl": impl,
            "width": width,
            "S": n_subnet,
            "lik": lik,
            "status": f"failed (exit {p.exitcode}, e.g. out of memory)",
        }
    res = q.get()
    res["status"] = "ok"
    res["total_s"] = time.perf_counter() - t
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[300, 980])
    ap.add_argument("--n-subnet", type=int, nargs="+", default=[1000])
    ap.add_argument("--likelihoods", nargs="+", default=["classification"])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--impls", nargs="+", default=["laplace", "ours"])
    ap.add_argument("--cap", type=float, default=180.0)
    ap.add_argument("--out", default="benchmarks/results/vs_laplace")
    a = ap.parse_args()
    rows = []
    for lik in a.likelihoods:
        for width in a.widths:
            for s in a.n_subnet:
                for impl in a.impls:
                    r = run_capped(impl, width, s, a.n_train, a.n_test, lik, a.cap)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"args": vars(a), "cpu_threads": 2, "rows": rows}, fh, indent=1)
    print(
        f"\n{'impl':<8} {'lik':<15} {'D':>9} {'S':>6} {'fit s':>8} {'marglik s':>9} "
        f"{'predict s':>9} {'peak GB':>8}  status"
    )
    for r in rows:

        def f(k, r=r):
            return f"{r[k]:.2f}" if k in r else "-"

        print(
            f"{r['impl']:<8} {r['lik']:<15} {r.get('D', '-'):>9} {r['S']:>6} "
            f"{f('fit_s'):>8} {f('marglik_s'):>9} {f('predict_s'):>9} "
            f"{f('peak_rss_gb'):>8}  {r['status']}"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for impl in a.impls:
            ok = [r for r in rows if r["impl"] == impl and r["status"] == "ok"]
            axes[0].plot(
                [r["D"] for r in ok], [r["fit_s"] for r in ok], "o-", label=impl
            )
            axes[1].plot(
                [r["D"] for r in ok], [r["peak_rss_gb"] for r in ok], "o-", label=impl
            )
        for ax, lab in zip(axes, ["fit wall time [s]", "peak RSS [GB]"]):
            ax.set_xscale("log"), ax.set_xlabel("D"), ax.set_ylabel(lab), ax.legend()
        fig.tight_layout()
        fig.savefig(a.out + ".png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
