"""Markdown tables (for README.md) from the JSON files in benchmarks/results/.

python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _f(row: dict, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(row[key]) if key in row else "-"


def vs_laplace(names: list[str]) -> str:
    lines = [
        "| impl | model / likelihood | D | S | fit s | marglik s | predict s "
        "| peak RSS GB | flop bound s | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["rows"]:
            lines.append(
                f"| {r['impl']} | {r.get('model', 'mlp')} / {r['lik']} | {r.get('D', '-')} "
                f"| {r['S']} | {_f(r, 'fit_s')} | {_f(r, 'marglik_s')} | {_f(r, 'predict_s')} "
                f"| {_f(r, 'peak_rss_gb')} | {_f(r, 'flop_bound_s')} | {r['status']} |"
            )
    return "\n".join(lines)


def marglik(names: list[str]) -> str:
    """``names`` entries are ``file``, ``file:impl`` or ``file:impl:S`` (row filters)."""
    lines = [
        "| impl | S | marglik tuning s (100 steps) | tuned λ | log marglik | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for entry in names:
        name, impl, size = (entry.split(":") + ["", ""])[:3]
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["rows"]:
            if (impl and r["impl"] != impl) or (size and r["S"] != int(size)):
                continue
            lines.append(
                f"| {r['impl']} | {r['S']} | {_f(r, 'marglik_s')} "
                f"| {_f(r, 'prior_precision', '{:.4g}')} | {_f(r, 'log_marglik', '{:.6g}')} "
                f"| {r['status']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(
        vs_laplace(
            ["mlp_D_sweep", "mlp_regression", "mlp_S_sweep", "cnn", "cnn_small_ours_v2"]
        )
    )
    print()
    print(
        marglik(["marglik_side_by_side", "marglik:laplace:20000", "marglik_ours_20k"])
    )
