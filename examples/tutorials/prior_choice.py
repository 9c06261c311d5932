"""Which prior precision for which goal: one sweep, three choices.

The subnetwork posterior trades calibration in distribution against robustness
under shift through one number, the prior precision λ. ``diagnostics.prior_sweep``
evaluates the GLM predictive along a grid of λ from one eigendecomposition (no
refit), on validation data and on any shifted sets you have, and marks the
marginal-likelihood and validation-NLL choices.

    python examples/tutorials/prior_choice.py [--quick]
"""

from __future__ import annotations

import argparse

from common import digits, digits_mlp, loader, noisy  # registers the plugin
from laplace import Laplace

from laplace_subnet_ext.diagnostics import prior_sweep


def main(quick: bool = False) -> dict[str, float]:
    train, val, test = digits(seed=0)
    model = digits_mlp(seed=0, epochs=10 if quick else 40)
    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        n_params_subnet=100 if quick else 500,
        subnetwork_mask="gradient_laplace",  # one pass over the data
    )
    la.fit(loader(train))

    # one sweep: clean validation, a shifted copy of it, and the clean test set
    sweep = prior_sweep(
        la,
        val,
        {
            "val+noise": (noisy(val[0], seed=1), val[1]),
            "test+noise": (noisy(test[0]), test[1]),
        },
    )
    noisy_val = sweep.column("nll", "val+noise")
    choices = {
        # no validation data: the evidence (Bayesian model selection)
        "marginal likelihood": sweep.marks["marglik"],
        # calibration in distribution: best clean validation NLL
        "validation NLL": sweep.marks["gridsearch"],
        # robustness to a shift you can simulate: best NLL on shifted validation
        "shifted-validation NLL": float(
            sweep.prior_precisions[noisy_val.index(min(noisy_val))]
        ),
    }
    print(
        f"{'choice':<24} {'λ':>9} {'val NLL':>8} {'val ECE':>8} {'test+noise NLL':>15}"
    )
    for name, lam in choices.items():
        v, t = sweep.at(lam, "val"), sweep.at(lam, "test+noise")
        print(f"{name:<24} {lam:9.3g} {v['nll']:8.3f} {v['ece']:8.3f} {t['nll']:15.3f}")
    print(
        "Pick by goal: validation NLL for in-distribution calibration (often the "
        "grid's top, i.e. the MAP), shifted-validation NLL for an anticipated "
        "shift, the marginal likelihood when there is no validation data."
    )
    return choices


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (tests)")
    main(ap.parse_args().quick)
