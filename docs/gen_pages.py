"""Generate the docs' results and benchmark pages from the committed results JSON.

Each page's text lives in ``docs/<section>/_src/<page>.md``; a line
``{{ table: NAME }}`` there is replaced by the table ``TABLES[NAME]`` builds from
the JSON in ``examples/results/`` or ``benchmarks/results/``, and every figure the
text links (``examples/results/x.png``) is copied next to the page. No number in
a generated table is typed by hand: rerun a study (its ``--report``), then this.

    python docs/gen_pages.py    # writes docs/results/*.md, docs/benchmarks/*.md

``mkdocs build`` / ``mkdocs serve`` run it first (``docs/hooks.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SECTIONS = ("results", "benchmarks")
MARKER = re.compile(r"^\{\{ table: ([\w:.-]+) \}\}$", re.M)
FIGURE = re.compile(r"\((?:\.\./)*((?:examples|benchmarks)/results/[\w.-]+\.png)\)")


def _examples() -> None:
    """Put ``examples/`` on the path (the study scripts import their neighbours),
    after importing the package (which imports laplace without its warnings)."""
    import laplace_subnet_ext  # noqa: F401

    path = str(ROOT / "examples")
    if path not in sys.path:
        sys.path.insert(0, path)


def _module(relpath: str, name: str):
    """Import a script by path (``examples/report.py`` and ``benchmarks/report.py``
    share a name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(name: str) -> dict:
    return json.loads((ROOT / "examples" / "results" / f"{name}.json").read_text())


def _pm(mean: float, se: float | None) -> str:
    if se is None or not math.isfinite(se) or se == 0:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {se:.3f}"


# ------------------------------------------------------------ study tables
def rotated_mnist() -> str:
    _examples()
    import rotated_mnist as study

    runs = study.finished_seeds(ROOT / "examples" / "results" / "rotated_mnist")
    for run in runs:  # seed 0 was written before OOD rows carried "angle"
        for r in run["rows"]:
            r.setdefault("angle", "ood")
    return study.markdown(runs, study.summarise(runs, "angle"))


def rotated_mnist_defaults() -> str:
    """Second round: clean, rotated and corrupted metrics, OOD AUROC and cost
    after the MAP, per (method, prior), mean ± s.e. over seeds."""
    res = _load("rotated_mnist_defaults")
    lines = [
        "| method | prior | seeds | clean acc | clean NLL | rotated NLL | rotated ECE "
        "| corrupted acc | corrupted NLL | corrupted ECE | OOD AUROC | cost s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["summary"]:
        cells = [
            _pm(r["acc clean"], r["acc clean_se"]),
            _pm(r["nll clean"], r["nll clean_se"]),
            _pm(r["nll rotated"], r["nll rotated_se"]),
            _pm(r["ece rotated"], r["ece rotated_se"]),
            _pm(r["acc corrupted"], r["acc corrupted_se"]),
            _pm(r["nll corrupted"], r["nll corrupted_se"]),
            _pm(r["ece corrupted"], r["ece corrupted_se"]),
            _pm(r["auroc"], r["auroc_se"]) if "auroc" in r else "-",
            "-" if r["method"] == "MAP" else f"{r['cost_s']:.0f}",
        ]
        lines.append(
            f"| {r['method']} | {r['prior']} | {r['n_seeds']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def rotated_mnist_corruptions() -> str:
    """NLL per corruption and per (method, prior), mean ± s.e. over seeds."""
    res = _load("rotated_mnist_defaults")
    names = res["corruptions"]
    lines = [
        "| method | prior | " + " | ".join(n.replace("_", " ") for n in names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for r in res["summary"]:
        cells = [_pm(r[f"nll {n}"], r[f"nll {n}_se"]) for n in names]
        lines.append(f"| {r['method']} | {r['prior']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transformer_lora() -> str:
    """Clean, token noise 4 and rotation 60° per method (mean ± s.e. over seeds)."""
    s = _load("transformer_lora")["summary"]
    cols = [("clean", "clean"), ("noise 4", "noise 4"), ("rotation 60", "rotation 60°")]
    by = {(r["method"], r["shift"]): r for r in s}
    head = "| method | seeds |" + "".join(
        f" {label} acc | {label} NLL | {label} ECE |" for _, label in cols
    )
    lines = [head, "|---|---:|" + "---:|" * 3 * len(cols)]
    for m in dict.fromkeys(r["method"] for r in s):
        cells = []
        for key, _ in cols:
            r = by.get((m, key))
            cells += (
                ["-"] * 3
                if r is None
                else [
                    f"{r['acc']:.3f}",
                    _pm(r["nll"], r.get("nll_se")),
                    f"{r['ece']:.3f}",
                ]
            )
        n = by[(m, "clean")]["n_seeds"]
        lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bayesian_lora_text() -> str:
    """RT test, IMDB and OOD AUROC per (method, prior); time = fit + tune +
    predict, mean over seeds (seconds)."""
    res = _load("bayesian_lora_text")
    s, info = res["summary"], res["info"]
    lines = [
        "| method | prior | seeds | RT acc | RT NLL | RT ECE | RT Brier | IMDB acc "
        "| IMDB NLL | IMDB ECE | OOD AUROC | time s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, prior in dict.fromkeys((r["method"], r["prior"]) for r in s):
        rs = {r["set"]: r for r in s if (r["method"], r["prior"]) == (m, prior)}
        rt, im, ood = rs["rt_test"], rs["imdb"], rs["ood"]
        times = [i["times"].get(m, {}) for i in info]
        per_seed = [
            sum(
                v
                for k, v in t.items()
                if not k.startswith("predict_")
                or k in (f"predict_{prior}", "predict_-", "predict_both_priors")
            )
            for t in times
            if t
        ]
        t = f"{sum(per_seed) / len(per_seed):.0f}" if per_seed else "-"
        lines.append(
            f"| {m} | {prior} | {rt['n_seeds']} | {_pm(rt['acc'], rt['acc_se'])} | "
            f"{_pm(rt['nll'], rt['nll_se'])} | {_pm(rt['ece'], rt['ece_se'])} | "
            f"{rt['brier']:.3f} | {_pm(im['acc'], im['acc_se'])} | "
            f"{_pm(im['nll'], im['nll_se'])} | {_pm(im['ece'], im['ece_se'])} | "
            f"{_pm(ood['ood_auroc'], ood.get('ood_auroc_se'))} | {t} |"
        )
    return "\n".join(lines)


def prior_tradeoff() -> str:
    """Metrics at the grid value nearest each prior choice, per method."""
    res = _load("prior_tradeoff")
    lines = [
        "| method | choice | λ | grid λ | val NLL | val ECE | rotation 60° NLL "
        "| Gaussian noise 3 NLL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sweep in res["sweeps"].items():
        rows = sweep["rows"]
        grid = sorted({r["prior_precision"] for r in rows})
        for mark, lam in sweep["marks"].items():
            near = min(grid, key=lambda g, lam=lam: abs(math.log(g / lam)))
            at = {r["set"]: r for r in rows if r["prior_precision"] == near}
            lines.append(
                f"| {name} | {mark} | {lam:.3g} | {near:.3g} | {at['val']['nll']:.3f} "
                f"| {at['val']['ece']:.3f} | {at['rotation 60']['nll']:.3f} "
                f"| {at['gaussian noise 3']['nll']:.3f} |"
            )
    return "\n".join(lines)


def _paired(rows: list[dict], a: str, b: str, names: tuple[str, str]) -> str:
    """Two Greedy-Laplace variants (strategy labels ``a``, ``b``) side by side per
    (model, S) of ``study_greedy`` rows: shares, their difference, seconds."""
    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["model"], r["D"], r["S"]), {})[r["strategy"]] = r
    x, y = names
    lines = [
        f"| model (D) | S | share, {x} | share, {y} | difference | seconds, {x} "
        f"| seconds, {y} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, D, S), v in pairs.items():
        ra, rb = v[a], v[b]
        lines.append(
            f"| {model} ({D}) | {S} | {ra['share']:.3f} | {rb['share']:.3f} | "
            f"{rb['share'] - ra['share']:+.3f} | {ra['seconds']:.2f} | "
            f"{rb['seconds']:.2f} |"
        )
    return "\n".join(lines)


def greedy_blocked() -> str:
    """Exact vs blocked Greedy-Laplace on the selection study's models."""
    path = ROOT / "benchmarks" / "results" / "greedy_blocked.json"
    rows = json.loads(path.read_text())["models"]
    labels = list(dict.fromkeys(r["strategy"] for r in rows))  # exact, blocked
    return _paired(rows, labels[0], labels[1], ("exact", "blocked"))


def greedy_synthetic() -> str:
    """greedy_schur alone on random Jacobians, exact and blocked alternated."""
    path = ROOT / "benchmarks" / "results" / "greedy_blocked.json"
    rows = json.loads(path.read_text()).get("synthetic", [])
    lines = [
        "| S | pool C | rows | block | seconds | captured (sum of gains) | peak RSS GB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['S']:,} | {r['C']:,} | {r['rows']:,} | {r['block']} | "
            f"{r['seconds']:.1f} | {r['captured']:.6g} | {r['peak_rss_gb']:.1f} |"
        )
    return "\n".join(lines)


def selection_scale() -> str:
    """The exact diagonal over all D weights (single pass vs column blocks) and
    the default selection at the paper's scale on the rotated-MNIST ResNet."""
    path = ROOT / "benchmarks" / "results" / "selection_scale.json"
    res = json.loads(path.read_text())
    lines = [
        "| stage | inputs | seconds | peak RSS GB | note |",
        "|---|---:|---:|---:|---|",
    ]
    d = res.get("diagonal")
    if d:
        for name, sec in d["seconds"].items():
            lines.append(
                f"| diagonal over D = {d['D']:,}, {name} | {d['N_side_by_side']:,} | "
                f"{sec:.1f} | | |"
            )
        lines.append(
            f"| diagonal, single pass | {d['N_full']:,} | "
            f"{d['single_pass_full_seconds']:.1f} | {d['peak_rss_gb']:.1f} | "
            f"{d['speedup']:.1f}x faster than column blocks side by side; largest "
            f"relative difference {d['max_rel_difference']:.1e} |"
        )
    for S, r in sorted(res.get("select", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| default selection (greedy_laplace), S = {int(S):,} | {r['max_data']:,} "
            f"| {r['seconds']:.0f} | {r['peak_rss_gb']:.1f} | block {r['block']}, "
            f"pool {r['pool']:,}; screening {r['seconds_screening']:.0f} s |"
        )
    return "\n".join(lines)


def inbetween() -> str:
    """Per problem and S: each strategy's captured share over the whole test set
    and per region; the default's share as a fraction of the best strategy's."""
    res = json.loads((ROOT / "benchmarks" / "results" / "inbetween.json").read_text())
    rows = res["rows"]
    regions = list(
        dict.fromkeys(k for r in rows for k in r if k not in _INBETWEEN_FIXED)
    )
    lines = [
        "| problem (D) | S | strategy | all | " + " | ".join(regions) + " |",
        "|---|---:|---|---:|" + "---:|" * len(regions),
    ]
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "" for k in regions]
        lines.append(
            f"| {r['problem']} ({r['D']}) | {r['S']} | {r['strategy']} | "
            f"{r['all']:.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def inbetween_verdict() -> str:
    """Per problem and S: the best strategy's share (the oracle excluded), and
    the default's, the 2026 objective's and the oracle's as fractions of it
    (issue 40's criterion: the default at least 0.95)."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "inbetween.json").read_text())
    cells: dict[tuple, dict] = {}
    for r in rows["rows"]:
        cells.setdefault((r["problem"], r["S"]), {})[r["strategy"]] = r["all"]
    oracle = "oracle: greedy at the test inputs"
    path = "oracle: greedy path alone at the test inputs"
    lines = [
        "| problem | S | best strategy | best share | default / best | "
        "2026 objective / best | oracle / best | oracle, greedy path alone / best "
        "| criterion |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for (problem, S), v in cells.items():
        users = {k: x for k, x in v.items() if not k.startswith("oracle")}
        best = max(users, key=users.get)
        ratio = v["greedy (default)"] / v[best]
        lines.append(
            f"| {problem} | {S} | {best} | {v[best]:.3f} | {ratio:.2f} | "
            f"{v['greedy, training inputs (2026)'] / v[best]:.2f} | "
            f"{v[oracle] / v[best]:.2f} | {v[path] / v[best]:.2f} | "
            f"{'met' if ratio >= 0.95 else 'missed'} |"
        )
    return "\n".join(lines)


def inbetween_study() -> str:
    """The default vs the 2026 objective on the selection study's models (its
    test inputs and sizes)."""
    res = json.loads((ROOT / "benchmarks" / "results" / "inbetween.json").read_text())
    return _paired(
        res.get("study", []),
        "greedy, training inputs (2026)",
        "greedy (default)",
        ("2026 objective", "default"),
    )


def inbetween_shift_oracle() -> str:
    """The selection study's digits models under its shift: the default, the
    Wasserstein rule with ``diag_laplace`` variances, and the default told the
    rotated digits (the oracle), on clean and rotated digits."""
    res = json.loads((ROOT / "benchmarks" / "results" / "inbetween.json").read_text())
    cells: dict[tuple, dict] = {}
    for r in res.get("shift_oracle", []):
        cells.setdefault((r["model"], r["D"], r["S"]), {})[r["strategy"]] = r
    lines = [
        "| model (D) | S | rotated: default | rotated: wasserstein (diag_laplace) "
        "| rotated: oracle | clean: default | clean: wasserstein (diag_laplace) "
        "| clean: oracle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = ["greedy (default)", "wasserstein (diag_laplace)"]
    for (model, D, S), v in cells.items():
        oracle = next(r for k, r in v.items() if k.startswith("oracle"))
        rs = [v[k] for k in order] + [oracle]
        lines.append(
            f"| {model} ({D}) | {S} | "
            + " | ".join(f"{r['rotated']:.3f}" for r in rs)
            + " | "
            + " | ".join(f"{r['clean']:.3f}" for r in rs)
            + " |"
        )
    return "\n".join(lines)


_INBETWEEN_FIXED = {"problem", "D", "strategy", "S", "all", "seconds"}


def _report(fn: str, *args: str) -> Callable[[], str]:
    def build() -> str:
        return getattr(_module("examples/report.py", "examples_report"), fn)(*args)

    return build


def _bench(fn: str, names: list[str]) -> Callable[[], str]:
    def build() -> str:
        return getattr(_module("benchmarks/report.py", "bench_report"), fn)(names)

    return build


#: marker name -> table builder
TABLES: dict[str, Callable[[], str]] = {
    "rotated_mnist": rotated_mnist,
    "greedy_blocked": greedy_blocked,
    "selection_scale": selection_scale,
    "inbetween": inbetween,
    "inbetween_verdict": inbetween_verdict,
    "inbetween_study": inbetween_study,
    "inbetween_shift_oracle": inbetween_shift_oracle,
    "greedy_synthetic": greedy_synthetic,
    "transformer_lora": transformer_lora,
    "bayesian_lora_text": bayesian_lora_text,
    "prior_tradeoff": prior_tradeoff,
    "selection": _report("selection"),
    "toy": _report("toy"),
    "tabular": _report("tabular"),
    "tabular_paired": _report("tabular_paired"),
    "shift_marglik": _report("shift"),
    "shift_gridsearch": _report(
        "shift", "shift_classification_gridsearch", "validation-NLL grid search"
    ),
    "vs_laplace": _bench(
        "vs_laplace",
        ["mlp_D_sweep", "mlp_regression", "mlp_S_sweep", "cnn", "cnn_small_ours_v2"],
    ),
    "marglik": _bench("marglik", ["marglik"]),
}


def render(text: str, out_dir: Path) -> str:
    """Fill the markers of one page and copy its figures into ``out_dir/img``."""

    def table(m: re.Match) -> str:
        name = m.group(1)
        if name not in TABLES:
            raise KeyError(f"unknown table marker {name!r}; known: {sorted(TABLES)}")
        return TABLES[name]()

    def figure(m: re.Match) -> str:
        src = ROOT / m.group(1)
        (out_dir / "img").mkdir(exist_ok=True)
        dest = out_dir / "img" / src.name
        if not dest.exists() or dest.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dest)
        return f"(img/{src.name})"

    return FIGURE.sub(figure, MARKER.sub(table, text))


def generate() -> list[Path]:
    """Write every generated page whose text changed (so ``mkdocs serve`` does not
    rebuild in a loop); return all their paths."""
    pages = []
    for section in SECTIONS:
        out_dir = DOCS / section
        for src in sorted((out_dir / "_src").glob("*.md")):
            page = out_dir / src.name
            text = render(src.read_text(), out_dir)
            if not page.exists() or page.read_text() != text:
                page.write_text(text)
            pages.append(page)
    return pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    for page in generate():
        print(page.relative_to(ROOT))


if __name__ == "__main__":
    main()
