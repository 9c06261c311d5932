"""The default selection at the paper's scale: the rotated-MNIST ResNet (D = 2.8M).

Part 1 (``--diagonal``): the exact diagonal curvature over all D weights that
Greedy-Laplace's pool screening (and OBD / Wasserstein off ``nn.Sequential``)
needs, side by side on the same inputs: the single pass
(``SubnetJacobians.diagonal``: per-sample gradients, one forward and c backward
passes per input chunk) against the column blocks (one pass over the data per
block of columns), and their largest relative difference. Then the single pass
alone on all 4,000 training images.

Part 2 (``--select S [S ...]``): ``GreedyLaplaceMask`` with its defaults on the
4,000 training images of ``examples/rotated_mnist.py``'s split, by stage
(screening, pool Jacobians, greedy steps: the mask's log lines carry the
stages), wall time and peak RSS.

The network is the study's ResNet with the study's training (20 epochs, seed 0;
``--untrained`` for timing only). Threads: 2.

    python benchmarks/bench_selection_scale.py --diagonal --select 10000
    python benchmarks/bench_selection_scale.py --select 42438 --state \
        examples/results/partial/rotated_mnist_defaults_seed0/model.pt

Writes benchmarks/results/selection_scale.json (merged per part).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import laplace_subnet_ext  # noqa: E402, F401
from laplace_subnet_ext.selection.greedy import GreedyLaplaceMask  # noqa: E402
from laplace_subnet_ext.selection.variance import blocked_diag_curvature  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "selection_scale.json"


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def model_and_data(trained: bool, quick: bool, state: str | None = None):
    """The study's split and network; trained as its seed-0 MAP (20 epochs), or
    loaded from ``state`` (a state dict, e.g. the study's saved seed-0 MAP)."""
    import rotated_mnist as rm

    (X, y), _, _ = rm.splits(quick)
    width, epochs = (8, 1) if quick else (32, 20)
    torch.manual_seed(0)
    model = rm.ResNet18(width)
    if state is not None:
        model.load_state_dict(torch.load(state))
    elif trained:
        t0 = time.perf_counter()
        model = rm.train(model, (X, y), epochs, seed=0)
        print(f"MAP: {time.perf_counter() - t0:.0f} s", flush=True)
    return model.eval(), X, y


def part_diagonal(model, X, y, n_side: int) -> dict:
    loader = DataLoader(TensorDataset(X[:n_side], y[:n_side]), batch_size=128)
    times, diags = {}, {}
    for name, single in (("single pass", True), ("column blocks", False)):
        t0 = time.perf_counter()
        diags[name] = blocked_diag_curvature(
            model, "regression", loader, single_pass=single
        )
        times[name] = time.perf_counter() - t0
        print(f"diagonal, {name}, N={n_side}: {times[name]:.1f} s", flush=True)
    a, b = diags["single pass"], diags["column blocks"]
    rel = float((a - b).abs().max() / b.abs().max())
    full = DataLoader(TensorDataset(X, y), batch_size=128)
    t0 = time.perf_counter()
    blocked_diag_curvature(model, "regression", full)
    t_full = time.perf_counter() - t0
    print(f"diagonal, single pass, N={len(y)}: {t_full:.1f} s", flush=True)
    return {
        "D": int(a.numel()),
        "N_side_by_side": n_side,
        "seconds": times,
        "speedup": times["column blocks"] / times["single pass"],
        "max_rel_difference": rel,
        "N_full": len(y),
        "single_pass_full_seconds": t_full,
        "peak_rss_gb": peak_gb(),
    }


def part_select(model, X, y, S: int) -> dict:
    loader = DataLoader(TensorDataset(X, y), batch_size=128)
    mask = GreedyLaplaceMask(model, S, likelihood="classification")
    t0 = time.perf_counter()
    chosen = mask.get_subnet_mask(loader)
    total = time.perf_counter() - t0
    print(f"select S={S}: {total:.1f} s, block {mask.block_used}", flush=True)
    return {
        "S": S,
        "seconds": total,
        **{f"seconds_{k}": v for k, v in mask.stage_seconds.items()},
        "chosen_by": mask.chosen_by,
        "objective": mask.objective,
        "eval_used": mask.eval_used,
        "greedy_skipped": mask.greedy_skipped,
        "max_data": mask.max_data,
        "pool": mask.pool_size,
        "block": mask.block_used,
        "n_zero_curvature": mask.n_zero_curvature,
        "chosen": int(chosen.sum()),
        "peak_rss_gb": peak_gb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diagonal", action="store_true")
    ap.add_argument("--side-by-side", type=int, default=256)
    ap.add_argument("--select", type=int, nargs="*", default=[])
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--state", help="load the network's weights from this state dict")
    ap.add_argument("--quick", action="store_true", help="tiny run (tests)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res["threads"] = torch.get_num_threads()
    model, X, y = model_and_data(not args.untrained, args.quick, args.state)
    res["D"] = sum(p.numel() for p in model.parameters())
    res["trained"] = not args.untrained
    if args.diagonal:
        n = min(args.side_by_side, len(y))
        res["diagonal"] = part_diagonal(model, X, y, n)
        out.write_text(json.dumps(res, indent=1))
    for S in args.select:
        res.setdefault("select", {})[str(S)] = part_select(model, X, y, S)
        out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
