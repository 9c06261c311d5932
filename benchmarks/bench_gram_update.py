"""H's per-batch update at large S: full ``addmm_`` vs the block-upper Gram update.

``fit`` adds each batch's curvature to H. With S above ``GRAM_BLOCK`` it adds
:math:`R^\\top R` (square-root rows of the output Hessian) to the blocks on and
above the block diagonal only, and mirrors them once when the fit ends: about
half the flops of the full ``addmm_`` :math:`J^\\top (\\Lambda J)`. This times
both on the same problem in one process, alternating, fastest of ``--repeats``:
the trained MLP 256-1024-780-10 of ``bench_large_s.py`` (D = 1,070,478), N
generated inputs x 10 classes of rows, a random subnetwork, float32 curvature.

    python benchmarks/bench_gram_update.py --sizes 8000 16000 --n 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from bench_large_s import mlp_problem
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.numerics import curvature

HERE = os.path.dirname(os.path.abspath(__file__))


def problem(n: int):
    model, X, y = mlp_problem(n)
    return model, DataLoader(TensorDataset(X, y), batch_size=32)


def fit_seconds(model, dl, idx, block: int) -> tuple[float, torch.Tensor]:
    curvature.GRAM_BLOCK = block
    la = DenseSubnetLaplace(model, "classification", idx, curvature_dtype=torch.float32)
    t = time.perf_counter()
    la.fit(dl)
    return time.perf_counter() - t, la.H


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "gram_update"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, dl = problem(a.n)
    D = sum(p.numel() for p in model.parameters())
    default_block = curvature.GRAM_BLOCK
    rows = []
    for S in a.sizes:
        g = torch.Generator().manual_seed(1)
        idx = torch.randperm(D, generator=g)[:S].sort()[0]
        times = {"full": [], "gram": []}
        for _ in range(a.repeats):
            t_full, H_full = fit_seconds(model, dl, idx, 10**12)
            times["full"].append(t_full)
            del H_full
            t_gram, H_gram = fit_seconds(model, dl, idx, default_block)
            times["gram"].append(t_gram)
        # same H (float32 sums in another order): compare once, outside the timing
        _, H_full = fit_seconds(model, dl, idx, 10**12)
        rel = float((H_gram - H_full).abs().amax() / H_full.abs().amax())
        del H_full, H_gram
        row = {
            "S": S,
            "N": a.n,
            "rows": a.n * 10,
            "gram_block": default_block,
            "threads": a.threads,
            "load1": os.getloadavg()[0],
            "full_s": min(times["full"]),
            "gram_s": min(times["gram"]),
            "all_s": times,
            "speedup": min(times["full"]) / min(times["gram"]),
            "max_rel_diff_H": rel,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    curvature.GRAM_BLOCK = default_block
    with open(a.out + ".json", "w") as fh:
        json.dump({"rows": rows}, fh, indent=1)
    print(
        f"\n{'S':>6} {'rows':>6} {'full s':>7} {'gram s':>7} {'ratio':>6} {'rel diff':>9}"
    )
    for r in rows:
        print(
            f"{r['S']:>6} {r['rows']:>6} {r['full_s']:7.1f} {r['gram_s']:7.1f} "
            f"{r['speedup']:6.2f} {r['max_rel_diff_H']:9.1e}"
        )


if __name__ == "__main__":
    main()
