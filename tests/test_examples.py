"""The examples run end to end in --quick mode and write sane results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / name
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / f"{name}.py"),
            "--quick",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_toy_regression_quick(tmp_path):
    res = run_example("toy_regression", tmp_path)
    summary = res["summary"]
    full = next(r for r in summary if r["method"] == "full")
    assert full["dist"] == 0.0
    methods = {r["method"] for r in summary}
    assert {
        "diagonal",
        "last_layer",
        "random",
        "wasserstein(function_space)",
    } <= methods
    assert all(math.isfinite(r["test_ll"]) for r in summary)
    fr = {(r["fraction"], r["rescaled"]) for r in summary if r["method"] == "random"}
    assert fr == {(f, b) for f in (0.5, 0.03, 0.01) for b in (True, False)}


def test_tabular_regression_quick(tmp_path):
    res = run_example("tabular_regression", tmp_path)
    rows = res["summary"]
    sub = [r for r in rows if r["method"].startswith("subnet")]
    small = {r["S"] for r in rows if r["method"] == "full Laplace"}
    assert sub and {r["S"] for r in sub} == small  # subnetworks match small nets' sizes
    assert all(r["D"] > r["S"] for r in sub)
    assert all(math.isfinite(r["test_ll"]) for r in rows)


def test_shift_classification_quick(tmp_path):
    res = run_example("shift_classification", tmp_path)
    methods = {r["method"] for r in res["summary"]}
    assert {
        "MAP",
        "diag Laplace",
        "KFAC Laplace",
        "last-layer Laplace",
        "subnet Wasserstein",
        "subnet random",
        "MC dropout",
        "SWAG (diag)",
    } <= methods
    for r in res["summary"]:
        assert 0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 and r["ll"] <= 0
    (info,) = [r for r in res["rows"] if "prior_precision" in r]
    laplaces = {m for m in methods if "Laplace" in m or m.startswith("subnet")}
    assert set(info["prior_precision"]) == laplaces
    assert all(v > 0 and math.isfinite(v) for v in info["prior_precision"].values())


def test_prior_tradeoff_quick(tmp_path):
    res = run_example("prior_tradeoff", tmp_path)
    sweeps = res["sweeps"]
    assert set(sweeps) == {
        "diag Laplace",
        "KFAC Laplace",
        "last-layer Laplace",
        "subnet Wasserstein",
        "subnet random",
    }
    wd_prior = res["weight_decay"] * res["n_train"]
    for name, sw in sweeps.items():
        assert {"marglik", "gridsearch", "weight decay"} <= set(sw["marks"])
        assert math.isclose(sw["marks"]["weight decay"], wd_prior)
        sets = {r["set"] for r in sw["rows"]}
        assert sets == {"val", "rotation 60", "gaussian noise 3"}
        val = [r for r in sw["rows"] if r["set"] == "val"]
        best = min(val, key=lambda r: r["nll"])["prior_precision"]
        assert math.isclose(sw["marks"]["gridsearch"], best, rel_tol=1e-6)
        assert all(math.isfinite(r["nll"]) and 0 <= r["ece"] <= 1 for r in sw["rows"])
        if name.startswith("subnet"):  # the paper's rescaling lambda * S / D
            rescaled = wd_prior * res["S"] / res["D"]
            assert math.isclose(
                sw["marks"]["weight decay x S/D"], rescaled, rel_tol=1e-5
            )


def test_transformer_lora_quick(tmp_path):
    res = run_example("transformer_lora", tmp_path)
    summary = res["summary"]
    methods = {r["method"] for r in summary}
    D = res["rows"][0]["D"]
    assert {
        "MAP",
        "last-layer Laplace",
        "KFAC Laplace (adapter)",
        f"subnet all adapter (S={D})",
    } <= methods
    assert any(m.startswith("subnet Wasserstein") for m in methods)
    assert {r["shift"] for r in summary} == {
        "clean",
        "noise 2",
        "noise 4",
        "rotation 30",
        "rotation 60",
    }
    for r in summary:
        assert 0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 and math.isfinite(r["nll"])


@pytest.mark.parametrize("script", ["bench_vs_laplace", "bench_marglik", "bench_vit"])
def test_benchmarks_parse_arguments(script):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "usage" in proc.stdout


def test_selection_study_quick(tmp_path):
    res = run_example("selection_study", tmp_path)
    assert [r["model"] for r in res["results"]] == ["toy regression MLP", "digits MLP"]
    for model in res["results"]:
        ok = [r for r in model["rows"] if "share" in r]
        assert {r["strategy"] for r in ok} >= {"greedy_laplace", "random", "last layer"}
        assert all(0 <= r["share"] <= 1 + 1e-9 for r in ok)
        assert model["verdicts"] and all(
            math.isfinite(v["best_share"]) for v in model["verdicts"]
        )


def test_rotated_mnist_quick(tmp_path):
    """With Animal-MNIST installed (README's command, CI) the OOD rows are there;
    without it the run says so on stderr and leaves them out."""
    sys.path.insert(0, str(ROOT / "examples"))
    from offline_data import animal_mnist_dir

    has_ood = animal_mnist_dir() is not None or bool(os.environ.get("CI"))
    res = run_example("rotated_mnist", tmp_path)
    summary = res["summary"]
    methods = {(r["method"], r["prior"]) for r in summary}
    laplaces = [
        "diag Laplace",
        "KFAC Laplace",
        "last-layer Laplace",
        "subnet Wasserstein",
        "subnet Wasserstein (SWAG var)",
        "subnet random",
    ]
    expected = {(m, "-") for m in ("MAP", "MC dropout", "ensemble of 2", "SWAG (diag)")}
    expected |= {(m, p) for m in laplaces for p in ("marglik", "gridsearch")}
    assert methods == expected
    for r in summary:
        if r["angle"] == "ood":
            assert 0 <= r["ood_auroc"] <= 1
        else:
            assert 0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] >= 0
            assert math.isfinite(r["brier"])
    angles = {0, 90, 180} | ({"ood"} if has_ood else set())
    assert {r["angle"] for r in summary} == angles
    (info,) = res["info"]
    for m in laplaces:
        lams = info["prior_precision"][m]
        assert set(lams) == {"marglik", "gridsearch"}
        assert all(v > 0 and math.isfinite(v) for v in lams.values())
    assert info["n_zero_curvature"]["subnet random"] >= 0


def test_rotated_mnist_defaults_quick(tmp_path):
    """The second round: every method on every rotation, corruption and OOD set,
    the cost and the trade-off figure; MAP and last-layer as in the first study."""
    res = run_example("rotated_mnist_defaults", tmp_path)
    methods = {(r["method"], r["prior"]) for r in res["summary"]}
    assert methods == {
        ("MAP", "-"),
        ("last-layer Laplace", "marglik"), ("last-layer Laplace", "gridsearch"),
        ("KFAC marglik training", "trained"),
        ("KFAC marglik training", "network alone"),
        ("KFAC marglik training, train mode", "trained"),
        ("KFAC marglik training, train mode", "network alone"),
        ("subnet default", "marglik"), ("subnet default", "gridsearch"),
        ("subnet gradient-laplace", "marglik"),
        ("subnet gradient-laplace", "gridsearch"),
        ("subnet marglik training", "trained"),
        ("subnet marglik training", "network alone"),
    }  # fmt: skip
    sets = {r["set"] for r in res["per_set"]}
    assert {"0", "90", "180", *res["corruptions"]} <= sets
    assert len(res["corruptions"]) >= 5
    for r in res["summary"]:
        for k in ("nll clean", "nll rotated", "nll corrupted"):
            assert math.isfinite(r[k]) and r[k] >= 0
        assert math.isfinite(r["cost_s"])  # a training method's: minus the MAP's
    (info,) = res["info"]
    assert sum(info["where"]["subnet default"].values()) == info["S"]
    gl = info["selection_choice"]["subnet gradient-laplace"]
    assert (
        gl["chosen_by"] == "gradient_laplace"
        and "max_greedy_work" in gl["greedy_skipped"]
    )
    assert info["margliks"]["subnet marglik training"]


def test_mnist_c_corruptions_are_fixed_shifts_of_the_same_images():
    sys.path.insert(0, str(ROOT / "examples"))
    import torch
    from rotated_mnist_defaults import CORRUPTIONS, corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g) * (
        torch.rand(6, 1, 28, 28, generator=g) > 0.7
    )
    for kind in CORRUPTIONS:
        y = corrupt(x, kind)
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
        assert torch.equal(y, corrupt(x, kind)), kind  # the same images every call
        assert (y - x).abs().mean() > 0.01, kind  # and a shift
    # translation moves every image by 5 pixels: some shift back recovers it
    y = corrupt(x, "translate")
    for i in range(len(x)):
        hits = [
            bool(
                torch.equal(
                    y[i, :, 5:-5, 5:-5], x[i, :, 5 - dy : 23 - dy, 5 - dx : 23 - dx]
                )
            )
            for dy in (-5, 0, 5)
            for dx in (-5, 0, 5)
            if (dy, dx) != (0, 0)
        ]
        assert sum(hits) == 1
    with pytest.raises(ValueError, match="kind must be one of"):
        corrupt(x, "fog")


def test_bayesian_lora_text_quick(tmp_path):
    res = run_example("bayesian_lora_text", tmp_path)
    summary = res["summary"]
    methods = {r["method"] for r in summary}
    (info,) = res["info"]
    D = info["D"]
    S = round(0.1 * D)
    assert {
        "MAP",
        "temperature scaling",
        "MC dropout",
        "ensemble of 2",
        "last-layer Laplace",
        "KFAC Laplace (adapter)",
        f"full adapter (S={D})",
        f"subnet greedy_laplace 10% (S={S})",
        f"subnet Wasserstein 10% (S={S})",
        f"subnet random 10% (S={S})",
    } == methods
    for r in summary:
        if r["set"] == "ood":
            assert 0 <= r["ood_auroc"] <= 1
        else:
            assert 0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] >= 0
            assert math.isfinite(r["brier"])
    laplaces = [m for m in methods if "Laplace" in m or "adapter" in m or "subnet" in m]
    for m in laplaces:
        lams = info["prior_precision"][m]
        assert set(lams) == {"marglik", "gridsearch"}
    # the KFAC predictive from our Jacobians matched laplace's own on a block
    assert info["kfac_predictive_check_max_abs_diff"] < 1e-5
    assert info["temperature"] > 0
