"""Choosing S and the selection strategy: measure what each subnetwork keeps.

On a model small enough for the exact full-network Laplace (D x D), the share of
the full GLM predictive variance a subnetwork keeps on held-out inputs tells
you how large S must be and which strategy to use; on your large model, use the
strategy that wins on a small one of the same kind and the largest S your memory
allows (``n_params_subnet="auto"`` with ``memory_budget=``).

    python examples/tutorials/choosing_s.py [--quick]
"""

from __future__ import annotations

import argparse

from common import digits, digits_mlp, loader  # registers the plugin

from laplace_subnet_ext import selection
from laplace_subnet_ext.diagnostics import selection_quality


def main(quick: bool = False) -> list[dict]:
    train, _, test = digits(seed=0)
    model = digits_mlp(seed=0, width=16 if quick else 32, epochs=10 if quick else 40)
    print("registered strategies:", ", ".join(selection.available()))
    rows = selection_quality(
        model,
        "classification",
        loader(train),
        test[0][:100],
        strategies={
            "greedy_laplace (default)": "greedy_laplace",
            "gradient_laplace": "gradient_laplace",
            "wasserstein": "wasserstein",
            "random": "random",
        },
        sizes=[0.01, 0.05] if quick else [0.01, 0.03, 0.1],  # fractions of D
    )
    print(f"{'strategy':<26} {'S':>5} {'kept':>6} {'seconds':>8}")
    for r in rows:
        kept = r["share_centered"]  # classification: centred logits
        print(f"{r['strategy']:<26} {r['S']:5d} {kept:6.3f} {r['seconds']:8.2f}")
    print(
        "'kept' is the share of the full network's predictive variance (centred "
        "logits) that the subnetwork's posterior keeps, at the same prior."
    )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (tests)")
    main(ap.parse_args().quick)
