"""Exact vs blocked Greedy-Laplace, side by side in one process.

Part 1 (``--models``): the selection study's models (``examples/selection_study.py``,
same training, same exact full-network reference), greedy with ``block=1``
(exact) and ``block=GREEDY_BLOCK`` at the study's sizes: captured share (centred
logits for classification) and selection seconds.

Part 2 (``--synthetic``): ``greedy_schur`` alone on random Jacobians with
``rows`` = inputs x outputs rows and a pool of ``C = 4 S`` columns (float64),
exact and blocked alternated; ``--large`` adds the blocked run at the rotated-MNIST
scale (S = 10,000, C = 40,000, 10,240 rows: about 13 GB).

    python benchmarks/bench_greedy.py --models --synthetic [--large]

Writes benchmarks/results/greedy_blocked.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import laplace_subnet_ext  # noqa: E402, F401
from laplace_subnet_ext.diagnostics import (  # noqa: E402
    FullNetworkReference,
    selection_quality,
)
from laplace_subnet_ext.selection.greedy import GREEDY_BLOCK, greedy_schur  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "greedy_blocked.json"


def study_greedy(
    names: list[str], variants: dict[str, dict], last_layer_size: bool = True
) -> list[dict]:
    """Greedy-Laplace variants (label -> mask keywords) on the selection study's
    models, at its sizes (and the last layer's), against its exact reference:
    one row per (model, variant, S) with the captured share and seconds."""
    import selection_study as study

    rows = []
    for name in names:
        model, lik, loader, test, sigma, head = study.MODELS[name](0, False)
        ref = FullNetworkReference(
            model, lik, loader, test, prior_precision="marglik", sigma_noise=sigma
        )
        D = ref.H.shape[0]
        sizes = {max(1, round(f * D)) for f in study.FRACTIONS}
        if last_layer_size:
            sizes.add(study.last_layer_mask(model, head)[1])
        res = selection_quality(
            model, lik, loader, test, reference=ref,
            sizes=[s for s in sorted(sizes) if s < D],
            strategies=dict.fromkeys(variants, "greedy_laplace"),
            strategy_kwargs=variants,
        )  # fmt: skip
        for r in res:
            share = r["share_centered"] if lik == "classification" else r["share"]
            row = {"model": name, "D": D, "strategy": r["strategy"], "S": r["S"],
                   "share": share, "seconds": r["seconds"]}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    return rows


def models(names: list[str] | None) -> list[dict]:
    import selection_study as study

    variants = {
        "exact (block 1)": {"block": 1},
        f"blocked (block {GREEDY_BLOCK})": {"block": GREEDY_BLOCK},
    }
    return study_greedy(names or list(study.MODELS), variants)


def synthetic(sizes: list[int], rows_: int, large: bool) -> list[dict]:
    out = []
    for S in sizes + ([10_000] if large else []):
        C = 4 * S
        g = torch.Generator().manual_seed(S)
        J = torch.randn(rows_, 1, C, generator=g, dtype=torch.float64)
        J *= torch.rand(C, generator=g, dtype=torch.float64) ** 3
        blocks = [GREEDY_BLOCK] if S >= 10_000 else [1, GREEDY_BLOCK, 1, GREEDY_BLOCK]
        for block in blocks:
            t0 = time.perf_counter()
            _, gains = greedy_schur(J, None, S, 1.0, block=block)
            row = {"S": S, "C": C, "rows": rows_, "block": block,
                   "seconds": time.perf_counter() - t0,
                   "captured": float(gains.sum()),
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # fmt: skip
            print(row, flush=True)
            out.append(row)
        del J
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="study models (all)")
    ap.add_argument("--synthetic", nargs="*", type=int, default=None, help="sizes S")
    ap.add_argument("--rows", type=int, default=10_240)
    ap.add_argument("--large", action="store_true")
    a = ap.parse_args()
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    res["threads"] = torch.get_num_threads()
    if a.models is not None:
        res["models"] = models(a.models or None)
        OUT.write_text(json.dumps(res, indent=1))
    if a.synthetic is not None:
        res["synthetic"] = synthetic(a.synthetic or [1000, 2000], a.rows, a.large)
        OUT.write_text(json.dumps(res, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
