"""Markdown tables (for README.md) from the JSON files in examples/results/.

python examples/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def toy() -> str:
    res = _load("toy_regression")
    if res is None:
        return ""
    lines = [
        f"Toy regression ({res['seeds']} seeds; subnetworks with λ·S/D; mean ± s.e.):",
        "",
        "| method | fraction | S | dist to full | gap std | test LL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["summary"]:
        if r["method"] not in ("full", "diagonal", "last_layer") and not r["rescaled"]:
            continue
        lines.append(
            f"| {r['method']} | {r['fraction']:.0%} | {r['S']} | {r['dist']:.3f} ± "
            f"{r['dist_se']:.3f} | {r['gap_std']:.3f} | {r['test_ll']:.3f} ± "
            f"{r['test_ll_se']:.3f} |"
        )
    return "\n".join(lines)


def tabular() -> str:
    res = _load("tabular_regression")
    if res is None:
        return ""
    lines = [
        "Tabular regression (test log-likelihood, standardised targets, mean ± s.e. "
        "over splits):",
        "",
        "| dataset | split | width | method | S | D | test LL |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in res["summary"]:
        lines.append(
            f"| {r['dataset']} | {r['split']} | {r['width']} | {r['method']} | "
            f"{r['S'] or '-'} | {r['D']} | {r['test_ll']:.3f} ± {r['test_ll_se']:.3f} |"
        )
    return "\n".join(lines)


def tabular_paired() -> str:
    """Subnetwork in a large net minus full Laplace over the small net with D = S,
    paired by split (the paper's Fig. 3 claim is that this is positive)."""
    res = _load("tabular_regression")
    if res is None:
        return ""
    rows = res["rows"]
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["dataset"], r["split"], r["width"], r["method"]), {})[
            r["k"]
        ] = r["test_ll"]
    lines = [
        "Subnetwork minus full Laplace at equal S (test LL, paired by split):",
        "",
        "| dataset | split | S | large width | difference ± s.e. | subnet better |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (d, sp, w, m), sub in by_key.items():
        if not m.startswith("subnet S=D("):
            continue
        small = int(m[len("subnet S=D(") : -1])
        full = by_key[(d, sp, small, "full Laplace")]
        diff = [sub[k] - full[k] for k in sub]
        n = len(diff)
        mean = sum(diff) / n
        se = (sum((x - mean) ** 2 for x in diff) / (n - 1)) ** 0.5 / n**0.5
        S = next(r["S"] for r in rows if r["method"] == m and r["width"] == w)
        lines.append(
            f"| {d} | {sp} | {S} | {w} | {mean:+.3f} ± {se:.3f} | "
            f"{sum(x > 0 for x in diff)}/{n} |"
        )
    return "\n".join(lines)


def shift(
    name: str = "shift_classification", prior: str = "marginal likelihood"
) -> str:
    res = _load(name)
    if res is None:
        return ""
    s = res["summary"]
    lines = [
        f"Shift classification, Laplace priors by {prior} ({res['seeds']} seeds; "
        "shifted = mean over all rotations > 0° and corruptions):",
        "",
        "| method | clean acc | clean LL | shifted acc | shifted LL | shifted ECE "
        "| shifted Brier |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in dict.fromkeys(r["method"] for r in s):
        clean = [
            r
            for r in s
            if r["method"] == m and r["shift"] == "rotation" and r["level"] == 0
        ]
        shifted = [r for r in s if r["method"] == m and r["level"] != 0]

        def avg(k, rs):
            return sum(r[k] for r in rs) / len(rs)

        lines.append(
            f"| {m} | {avg('acc', clean):.3f} | {avg('ll', clean):.3f} | "
            f"{avg('acc', shifted):.3f} | {avg('ll', shifted):.3f} | "
            f"{avg('ece', shifted):.3f} | {avg('brier', shifted):.3f} |"
        )
    return "\n".join(lines) + "\n\n" + _shift_by_family(s)


def _shift_by_family(s: list[dict]) -> str:
    """Test log-likelihood per shift family (mean over its levels > 0, ± mean s.e.)."""
    families = list(dict.fromkeys(r["shift"] for r in s))
    lines = [
        "Test log-likelihood per shift family (mean over its shifted levels):",
        "",
        "| method | " + " | ".join(families) + " |",
        "|---|" + "---:|" * len(families),
    ]
    for m in dict.fromkeys(r["method"] for r in s):
        cells = []
        for fam in families:
            rs = [r for r in s if r["method"] == m and r["shift"] == fam and r["level"]]
            ll = sum(r["ll"] for r in rs) / len(rs)
            se = sum(r["ll_se"] for r in rs) / len(rs)
            cells.append(f"{ll:.3f} ± {se:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection() -> str:
    """Captured share per model and S: the recommended default, the best other
    strategy, the old default, random, magnitude, SWAG; then the cost of each."""
    res = _load("selection_study")
    if res is None:
        return ""
    cols = [
        "greedy_laplace",
        "wasserstein (function_space)",
        "wasserstein (swag)",
        "gradient_laplace",
        "magnitude",
        "obd",
        "random",
    ]
    lines = [
        "Share of the full-network GLM predictive variance kept (classification: "
        "centred logits; raw-logit share in the JSON), on 200 test inputs (the "
        "toy's grid; the digits models' clean test digits); off the data: the "
        "toy's gap between its clusters, the digits rotated by 30°:",
        "",
        "| model (D) | S | "
        + " | ".join(cols)
        + " | best other | last layer | default ≥ 95 % of best | off the data: "
        "default | off the data: best |",
        "|---|---:|" + "---:|" * len(cols) + "---|---:|---|---:|---|",
    ]
    costs: dict[str, dict[str, float]] = {}
    for m in res["results"]:
        metric = m["verdicts"][0]["metric"]
        rows = [r for r in m["rows"] if "share" in r]
        for v in m["verdicts"]:
            at = {r["strategy"]: r[metric] for r in rows if r["S"] == v["S"]}
            others = {
                k: x
                for k, x in at.items()
                if k != "greedy_laplace" and "eval inputs" not in k
            }
            other = max(others, key=others.get)
            ll = f"{v['last_layer_share']:.3f}" if "last_layer_share" in v else ""
            cells = [f"{at[c]:.3f}" if c in at else "n/a" for c in cols]
            off = (
                f" {v['region_default_share']:.3f} | {v['region_best']} "
                f"{v['region_best_share']:.3f} |"
                if "region" in v
                else " | |"
            )
            lines.append(
                f"| {m['model']} ({m['D']}) | {v['S']} ({v['S'] / m['D']:.1%}) | "
                + " | ".join(cells)
                + f" | {other} {others[other]:.3f} | {ll} | "
                f"{'yes' if v['within_5pct_of_best'] else '**no**'} |" + off
            )
        for r in rows:
            costs.setdefault(r["strategy"], {}).setdefault(m["model"], 0.0)
            costs[r["strategy"]][m["model"]] = max(
                costs[r["strategy"]][m["model"]], r["seconds"]
            )
    told = [
        (m["model"], r)
        for m in res["results"]
        for r in m["rows"]
        if "eval inputs" in r["strategy"] and "share" in r
    ]
    if told:
        lines += [
            "",
            "Told where predictions are made (`eval_inputs=`): "
            + ", ".join(f"{mm} S={r['S']}: {r['share']:.3f}" for mm, r in told),
        ]
    models = [m["model"] for m in res["results"]]
    lines += [
        "",
        "Selection wall time, slowest S (seconds, under the conditions the page "
        "states; the reference's cost is not included):",
        "",
        "| strategy | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for k, per in costs.items():
        if k == "last layer":
            continue
        lines.append(
            f"| {k} | "
            + " | ".join(f"{per.get(mm, float('nan')):.2f}" for mm in models)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    tables = (
        selection(),
        toy(),
        tabular(),
        tabular_paired(),
        shift(),
        shift("shift_classification_gridsearch", "validation-NLL grid search"),
    )
    print("\n\n".join(t for t in tables if t))
