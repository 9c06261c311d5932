"""Large S on a memory budget: the plan, the refusal before allocating, the knobs.

The dense posterior needs two S x S matrices (the curvature H and one factor
buffer): 2 S^2 x 8 bytes in float64, which is the default up to S = 10,000, and
float32 above it. Before allocating anything the posterior checks that plan
against free memory or ``memory_budget=``, and a ``ValueError`` names the largest
S that fits. Above S = 10,000 the prior is tuned by stochastic Lanczos quadrature
plus an exact correction (``marglik_method="slq"``) instead of an S^3
eigendecomposition.

    python examples/tutorials/large_s_budget.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from common import digits, loader, train_map  # registers the plugin
from laplace import Laplace
from torch import nn


def main(quick: bool = False) -> dict:
    torch.manual_seed(0)
    train, _, test = digits(seed=0)
    width = 64 if quick else 256
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 10),
    )  # fmt: skip
    model = train_map(model, train, epochs=5 if quick else 20)
    S, budget = (1_500, "40MB") if quick else (12_000, "1.2GB")
    kw = dict(subset_of_weights="subnetwork", hessian_structure="full")

    # 1. too large for the budget: refused before any S x S allocation
    try:
        Laplace(model, "classification", **kw, n_params_subnet=S, memory_budget="10MB")
    except ValueError as err:
        print("refused:", err)

    # 2. let the budget choose S: "auto" is the largest S whose plan fits
    auto = Laplace(
        model, "classification", **kw, n_params_subnet="auto",
        subnetwork_mask="gradient_laplace", memory_budget=budget,
    )  # fmt: skip
    auto.fit(loader(train, 256))
    print(
        f"n_params_subnet='auto' with memory_budget={budget!r}: S = {auto.n_params_subnet}"
    )

    # 3. a large S in float32, prior tuned on the large-S path
    la = Laplace(
        model, "classification", **kw, n_params_subnet=S,
        subnetwork_mask="gradient_laplace", curvature_dtype=torch.float32,
        marglik_method="slq",  # "auto" switches to it above S = 10,000
    )  # fmt: skip
    la.fit(loader(train, 256))
    la.optimize_prior_precision(method="marglik")
    info = la.marglik_tuning_info
    print(
        f"S = {la.n_params_subnet}: H is {la.H.dtype}, {la.H.numel() * 4 / 1e6:.0f} MB; "
        f"λ = {float(la.prior_precision):.3g} ({info['path']} path)"
    )
    probs = la(test[0], pred_type="glm", link_approx="probit")
    acc = float((probs.argmax(-1) == test[1]).double().mean())
    print(f"test accuracy {acc:.3f}; predictive in blocks of <= 256 MiB of Jacobians")
    print(
        "Out of memory? Lower n_params_subnet (or 'auto' + memory_budget), pass "
        "curvature_dtype=torch.float32, predict in smaller batches or lower "
        "predictive_block_bytes; docs: guide/large-s.md."
    )
    return {"S_auto": auto.n_params_subnet, "S": la.n_params_subnet, "acc": acc}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (tests)")
    main(ap.parse_args().quick)
