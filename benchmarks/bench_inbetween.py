"""In-between uncertainty (issue 40): what each strategy keeps between and beyond
the data, on the selection study's toy regression (two clusters, x in
[-2.3, -1.0] and [1.0, 2.3], a 2x50 ReLU MLP, D = 2,701; test grid [-4, 4]).

Regions of the test grid, fixed before any strategy was tuned: ``between`` the
clusters (|x| < 1), ``beyond`` them (|x| > 2.3), ``near`` (the rest, inside the
clusters' range). Strategies: the default (greedy on the training inputs),
greedy with ``eval_inputs="augmented"`` (training inputs plus interpolations
between and perturbations around them), OBD, magnitude, Gradient-Laplace,
random; S = 1 %, 3 %, 10 % of D. Reference: the exact full-network Laplace at
its marginal-likelihood prior (``diagnostics.FullNetworkReference``).

    python benchmarks/bench_inbetween.py

Writes benchmarks/results/inbetween.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import laplace_subnet_ext  # noqa: E402, F401
from laplace_subnet_ext.diagnostics import (  # noqa: E402
    FullNetworkReference,
    selection_quality,
)

OUT = ROOT / "benchmarks" / "results" / "inbetween.json"
STRATEGIES = {
    "greedy (default)": "greedy_laplace",
    "greedy, augmented eval": "greedy_laplace",
    "obd": "obd",
    "magnitude": "magnitude",
    "gradient_laplace": "gradient_laplace",
    "random": "random",
}
KWARGS = {"greedy, augmented eval": {"eval_inputs": "augmented"}}


def main() -> None:
    import selection_study as study

    model, lik, loader, test, sigma, _ = study.toy_problem(0, False)
    x = test[:, 0]
    regions = {"between": x.abs() < 1.0, "beyond": x.abs() > 2.3}
    regions["near"] = ~(regions["between"] | regions["beyond"])
    ref = FullNetworkReference(
        model, lik, loader, test, prior_precision="marglik", sigma_noise=sigma
    )
    D = ref.H.shape[0]
    rows = selection_quality(
        model, lik, loader, test, reference=ref, strategies=STRATEGIES,
        strategy_kwargs=KWARGS, sizes=[0.01, 0.03, 0.1], regions=regions,
    )  # fmt: skip
    keys = ("share", "share_between", "share_beyond", "share_near", "seconds")
    out = [
        {"strategy": r["strategy"], "S": r["S"], **{k: r[k] for k in keys}}
        for r in rows
    ]
    for r in out:
        print(
            f"{r['strategy']:24s} S={r['S']:4d} all {r['share']:.3f} between "
            f"{r['share_between']:.3f} beyond {r['share_beyond']:.3f} near "
            f"{r['share_near']:.3f} ({r['seconds']:.2f} s)"
        )
    OUT.write_text(
        json.dumps({"D": D, "prior": ref.prior_precision, "rows": out}, indent=1)
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
