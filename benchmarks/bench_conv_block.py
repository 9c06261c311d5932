"""Fast-path weight entries: gathered entry by entry vs one dense matmul block.

Part 1 (the choice ``BLOCK_RATIO`` makes) times one output's contraction for a
weight use, both ways, on the shapes of the rotated-MNIST ResNet-18 (width 32,
28x28 inputs): random selections of several densities inside one tensor, and
the ``fill`` = selected entries / (their rows x their columns) that
:func:`laplace_subnet_ext.jacobians.engine._plan` compares with ``1 / BLOCK_RATIO``.

Part 2 (end to end) times ``la.jacobians`` of that ResNet on ``--n`` images for
two subnetworks of 10,000 weights, with the block path off (``BLOCK_RATIO = 0``,
the previous behaviour) and on (the default), alternating, fastest of
``--repeats``: random over all weights, and concentrated in the 14x14 layers
(as the Wasserstein rule picked on rotated MNIST, where the predictive took
667 s against random selection's 250 s).

    python benchmarks/bench_conv_block.py --threads 2 --out benchmarks/results/conv_block
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
from rotated_mnist import ResNet18  # noqa: E402

from laplace_subnet_ext import DenseSubnetLaplace  # noqa: E402
from laplace_subnet_ext.jacobians import engine  # noqa: E402
from laplace_subnet_ext.jacobians.layout import TensorSelection  # noqa: E402
from laplace_subnet_ext.jacobians.rules import Conv2dRule  # noqa: E402

# (name, cin, cout, kernel, stride, input side) of the ResNet's convolutions
LAYERS = [
    ("blocks.0.conv1 (t=196)", 32, 32, 3, 1, 14),
    ("blocks.2.conv2 (t=49)", 64, 64, 3, 1, 7),
    ("blocks.4.conv2 (t=16)", 128, 128, 3, 1, 4),
    ("blocks.6.conv2 (t=4)", 256, 256, 3, 1, 2),
]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def contraction_rows(n: int, repeats: int) -> list[dict]:
    rows = []
    for name, cin, cout, k, stride, side in LAYERS:
        conv = torch.nn.Conv2d(cin, cout, k, stride, 1, bias=False)
        a = torch.randn(n, cin, side, side)
        z = conv(a)
        (use,) = Conv2dRule().uses(conv, (a,), z)
        dz = torch.randn_like(z)
        numel = conv.weight.numel()
        for frac in (0.001, 0.01, 0.05, 0.25, 1.0):
            local = torch.randperm(numel)[: max(1, int(frac * numel))].sort().values
            sel = TensorSelection("w", conv.weight, conv, "weight", local, local)
            in_f = use.outer.in_features
            fill = local.numel() / (
                (local // in_f).unique().numel() * (local % in_f).unique().numel()
            )
            row = {"layer": name, "selected": local.numel(), "fill": fill}
            for ratio in (0, float("inf")):
                engine.BLOCK_RATIO = ratio
                plan = engine._plan(sel, use)

                def one(plan=plan, dz=dz):
                    return plan.contract(dz)

                row["gathered" if ratio == 0 else "blocked"] = best(one, repeats)
            row["blocked/gathered"] = row["blocked"] / row["gathered"]
            rows.append(row)
            print(
                f"{name:24s} s={local.numel():7d} fill={fill:.4f} "
                f"gathered {row['gathered'] * 1e3:8.2f} ms  "
                f"blocked {row['blocked'] * 1e3:8.2f} ms  "
                f"ratio {row['blocked/gathered']:.3f}",
                flush=True,
            )
    return rows


def end_to_end(n: int, repeats: int, ratio: float) -> list[dict]:
    torch.manual_seed(0)
    model = ResNet18(32).eval()
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    D = start
    g = torch.Generator().manual_seed(0)
    early = torch.cat(
        [
            torch.arange(*offsets[f"blocks.{b}.conv{c}.weight"])
            for b in (0, 1)
            for c in (1, 2)
        ]
    )
    subnets = {
        "random 10k over all weights": torch.randperm(D, generator=g)[:10_000],
        "10k in the 14x14 convolutions": early[
            torch.randperm(early.numel(), generator=g)[:10_000]
        ],
    }
    X = torch.randn(n, 1, 28, 28)
    out = []
    for label, idx in subnets.items():
        la = DenseSubnetLaplace(model, "classification", idx.sort().values)
        la.jacobians(X[:4])  # the run-time check, once
        row = {"subnetwork": label, "n_inputs": n}
        for name, r in (("block path off", 0), ("block path on", ratio)):
            engine.BLOCK_RATIO = r
            row[name] = best(lambda la=la: la.jacobians(X), repeats)
        engine.BLOCK_RATIO = ratio
        row["speed-up"] = row["block path off"] / row["block path on"]
        out.append(row)
        print(
            f"{label:32s} off {row['block path off']:7.2f} s  "
            f"on {row['block path on']:7.2f} s  x{row['speed-up']:.1f}",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="inputs per batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/conv_block")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    default = engine.BLOCK_RATIO
    result = {
        "threads": a.threads,
        "BLOCK_RATIO": default,
        "contraction": contraction_rows(a.n, a.repeats),
        "end_to_end": end_to_end(a.n, a.repeats, default),
    }
    engine.BLOCK_RATIO = default
    with open(a.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {a.out}.json")


if __name__ == "__main__":
    main()
