"""Sequence-first vs batch-first transformer: same weights, same subnetwork.

Builds the transformer benchmark's token classifier (``bench_vs_laplace``) twice,
``batch_first=True`` and ``False`` with one state dict, fits our
``DenseSubnetLaplace`` on both (alternating, ``--repeats`` times, the fastest
fit of each kept), and records the fit times, their ratio, how many tensors took
the generic path in each, and the largest difference between the two H.

    python benchmarks/bench_seq_first.py --width 128 --n-train 200 --n-subnet 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_laplace import TokenTransformer  # noqa: E402

from laplace_subnet_ext import DenseSubnetLaplace  # noqa: E402


def fit(model, dl, idx, dtype):
    la = DenseSubnetLaplace(model, "classification", idx, curvature_dtype=dtype)
    t = time.perf_counter()
    la.fit(dl)
    return time.perf_counter() - t, la


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-subnet", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--without-layout",
        action="store_true",
        help="also fit the sequence-first model with the layout rule switched off "
        "(the previous behaviour: its Linear / LayerNorm tensors take torch.func)",
    )
    ap.add_argument("--out", default="benchmarks/results/seq_first")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    models = {
        bf: TokenTransformer(a.width, layers=a.layers, batch_first=bf)
        for bf in (True, False)
    }
    models[False].load_state_dict(models[True].state_dict())
    D = sum(p.numel() for p in models[True].parameters())
    idx = torch.randperm(D)[: a.n_subnet].sort().values  # spread over all tensors
    X = torch.randint(1000, (a.n_train, 32))
    y = torch.randint(10, (a.n_train,))
    dl = DataLoader(TensorDataset(X, y), batch_size=100)
    times = {True: [], False: []}
    las = {}
    for _ in range(a.repeats):
        for bf in (True, False):
            t, las[bf] = fit(models[bf], dl, idx, torch.float32)
            times[bf].append(t)
            print(f"batch_first={bf}: fit {t:.1f} s", flush=True)
    H_t, H_f = las[True].H, las[False].H
    extra = {}
    if a.without_layout:
        import laplace_subnet_ext.jacobians.capture as capture

        keep = capture.sequence_first_modules
        capture.sequence_first_modules = lambda model: set()
        try:
            t, la = fit(models[False], dl, idx, torch.float32)
        finally:
            capture.sequence_first_modules = keep
        print(f"batch_first=False without the layout rule: fit {t:.1f} s", flush=True)
        extra = {
            "fit_s_seq_first_without_layout": t,
            "generic_tensors_without_layout": len(la.generic_reasons),
            "max_rel_diff_H_without_layout": float(
                (H_t - la.H).abs().max() / H_t.abs().max()
            ),
        }
    row = {
        "D": D,
        "S": a.n_subnet,
        "n_train": a.n_train,
        "width": a.width,
        "layers": a.layers,
        "fit_s_batch_first": min(times[True]),
        "fit_s_seq_first": min(times[False]),
        "all_fit_s": {"batch_first": times[True], "seq_first": times[False]},
        "ratio_seq_over_batch": min(times[False]) / min(times[True]),
        "generic_tensors_batch_first": sorted(las[True].generic_reasons),
        "generic_tensors_seq_first": sorted(las[False].generic_reasons),
        "max_rel_diff_H": float((H_t - H_f).abs().max() / H_t.abs().max()),
        **extra,
    }
    print(json.dumps(row, indent=1))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"args": vars(a), "cpu_threads": 2, "row": row}, fh, indent=1)


if __name__ == "__main__":
    main()
