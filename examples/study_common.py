"""The studies' one harness: training loop, baselines (MC dropout, diagonal SWAG),
metrics, summaries over seeds and seed bookkeeping.

Every study in ``examples/`` trains with :func:`train_epochs`, runs MC dropout and
SWAG through :func:`mc_dropout` and :func:`swag`, scores with the package's
metrics (:func:`metrics`: :mod:`laplace_subnet_ext.diagnostics.metrics`) and
averages over seeds with :func:`mean_se`; none writes its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from laplace_subnet_ext.diagnostics.metrics import ECE_BINS as N_BINS
from laplace_subnet_ext.diagnostics.metrics import classification_metrics, ood_auroc
from laplace_subnet_ext.diagnostics.metrics import probit as probit  # re-exported

#: the paper's validation grid for prior precisions: 1e-2 .. 1e4, 13 values
GRID = torch.logspace(-2, 4, 13)
METRICS = ("acc", "nll", "ece", "brier")


def metrics(p: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, NLL, ECE (10 equal-width bins) and Brier score of ``(n, c)``
    probabilities (the package's :func:`classification_metrics`)."""
    return classification_metrics(p, y, N_BINS)


def _bins(conf: torch.Tensor) -> torch.Tensor:
    """Equal-width confidence bins (lo, hi], as torchmetrics."""
    return ((conf * N_BINS).ceil().long() - 1).clamp(0, N_BINS - 1)


def reliability(p: torch.Tensor, y: torch.Tensor) -> dict:
    """Per confidence bin: count, summed confidence, summed hits (add over seeds)."""
    conf, pred = p.double().max(-1)
    bins = _bins(conf)
    hit = (pred == y).double()
    return {
        "count": torch.bincount(bins, minlength=N_BINS).tolist(),
        "conf": torch.zeros(N_BINS, dtype=torch.float64)
        .index_add_(0, bins, conf)
        .tolist(),
        "hits": torch.zeros(N_BINS, dtype=torch.float64)
        .index_add_(0, bins, hit)
        .tolist(),
    }


#: AUROC of predictive entropy separating out- from in-distribution inputs
auroc = ood_auroc


def grid_pick(nll_along_grid: list[float]) -> float:
    """The grid value of smallest validation NLL."""
    return float(GRID[int(torch.tensor(nll_along_grid).argmin())])


def mean_se(
    rows: Iterable[dict],
    by: tuple[str, ...],
    values: tuple[str, ...],
    *,
    keep: tuple[str, ...] = (),
    order: Callable[[tuple], object] | None = None,
) -> list[dict]:
    """Mean and standard error (over the rows of a group: seeds, folds) of each
    of ``values`` per group of equal ``by`` fields, in float64.

    Groups come in order of first appearance (or sorted by ``order`` of the
    ``by`` tuple); a value a group's first row lacks is left out; ``keep``
    fields are copied from its first row. Each group gives ``{by..., keep...,
    "n_seeds", v, v + "_se"}``; the standard error of one row is 0.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    keys = sorted(groups, key=order) if order is not None else list(groups)
    out = []
    for key in keys:
        rs = groups[key]
        agg = dict(zip(by, key)) | {k: rs[0][k] for k in keep} | {"n_seeds": len(rs)}
        for name in values:
            if name in rs[0]:
                v = torch.tensor([r[name] for r in rs], dtype=torch.float64)
                agg[name] = float(v.mean())
                agg[name + "_se"] = (
                    float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
                )
        out.append(agg)
    return out


def summarise(runs: list[dict], key: str) -> list[dict]:
    """Mean and standard error over seeds per ``(method, prior, row[key])``."""
    rows = [r for run in runs for r in run["rows"]]
    return mean_se(rows, ("method", "prior", key), (*METRICS, "ood_auroc"))


# ----------------------------------------------------------------- training
def seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``make()`` after ``torch.manual_seed(seed)``: an initialisation that does
    not depend on what ran before (torch's generator starts from a random seed
    in every process here, so an unseeded initialisation differs run to run)."""
    torch.manual_seed(seed)
    return make()


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    """Mean cross-entropy of a ``(X, y)`` batch or a dict batch with ``labels``."""
    X, y = (batch, batch["labels"]) if isinstance(batch, Mapping) else batch
    return F.cross_entropy(model(X), y)


def train_epochs(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss: Callable[[nn.Module, object], torch.Tensor] = cross_entropy,
    *,
    scheduler=None,
    seed: int | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> nn.Module:
    """The studies' one training loop: ``torch.manual_seed(seed)`` (dropout,
    unseeded shuffling), then per epoch train mode and per batch ``zero_grad``,
    ``loss(model, batch).backward()``, ``step`` and ``scheduler.step()``;
    ``after_epoch(epoch)`` returning True stops early. Returns the model in eval
    mode."""
    if seed is not None:
        torch.manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            loss(model, batch).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        if after_epoch is not None and after_epoch(epoch):
            break
    return model.eval()


# ---------------------------------------------------------------- baselines
def _chunks(X, batch_size: int | None) -> list:
    if batch_size is None:
        return [X]
    return [X[i : i + batch_size] for i in range(0, len(X), batch_size)]


def mc_dropout(
    model: nn.Module,
    n_samples: int,
    seed: int | None = None,
    batch_size: int | None = None,
):
    """MC dropout (Gal & Ghahramani, 2016): the mean softmax of ``n_samples``
    passes with every module in train mode but BatchNorm (its running statistics
    stay). Each call seeds torch with ``seed`` (if given) and runs ``batch_size``
    inputs at a time (all at once by default); the modes are restored."""

    def predict(X):
        if seed is not None:
            torch.manual_seed(seed)
        modes = {m: m.training for m in model.modules()}
        for m in model.modules():
            m.training = not isinstance(m, nn.modules.batchnorm._BatchNorm)
        try:
            with torch.no_grad():
                return torch.cat([
                    sum(F.softmax(model(x), -1) for _ in range(n_samples)) / n_samples
                    for x in _chunks(X, batch_size)
                ])  # fmt: skip
        finally:
            for m, mode in modes.items():
                m.training = mode

    return predict


def recompute_bn(model: nn.Module, X: torch.Tensor, batch_size: int = 500) -> None:
    """Running BatchNorm statistics of ``model`` at its current weights."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            model(X[i : i + batch_size])
    model.eval()


def swag(
    model: nn.Module,
    loader: Iterable,
    epochs: int,
    n_samples: int,
    seed: int,
    *,
    bn_inputs: torch.Tensor | None = None,
    batch_size: int | None = None,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
):
    """Diagonal SWAG (Maddox et al., 2019): one snapshot per epoch of SGD
    (momentum 0.9, constant ``lr``) on a copy of the MAP, running first and
    second moments, ``n_samples`` Gaussian weight samples (seeded by ``seed``,
    which also seeds torch for the epochs). ``bn_inputs``: BatchNorm statistics
    recomputed on them at every sample. Returns ``(predict, variance)``."""
    work = copy.deepcopy(model)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(
        work.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
    )
    vec = lambda m: nn.utils.parameters_to_vector(m.parameters()).detach()  # noqa: E731
    mean, sq = torch.zeros_like(vec(work)), torch.zeros_like(vec(work))
    for k in range(1, epochs + 1):
        train_epochs(work, loader, opt, 1)
        theta = vec(work)
        mean += (theta - mean) / k
        sq += (theta**2 - sq) / k
    var = (sq - mean**2).clamp_min(0)
    g = torch.Generator().manual_seed(seed)
    samples = [
        mean + var.sqrt() * torch.randn(mean.shape, generator=g)
        for _ in range(n_samples)
    ]

    def predict(X):
        p = 0
        for s in samples:
            nn.utils.vector_to_parameters(s, work.parameters())
            if bn_inputs is not None:
                recompute_bn(work, bn_inputs)
            with torch.no_grad():
                p = p + torch.cat([
                    F.softmax(work(x), -1) for x in _chunks(X, batch_size)
                ]) / n_samples  # fmt: skip
        return p

    return predict, var


class Stages:
    """Resumable state of one seed: finished stages, their rows, info, tensors.

    ``path`` is a folder (``None``: nothing is saved, as in ``--quick``). After a
    stage's body has run, :meth:`finish` writes the rows and info gathered so far
    and the stage's tensors; a later run skips finished stages and reloads them.
    """

    def __init__(self, path: Path | None, seed: int, S: int) -> None:
        self.path = path
        state = None
        if path is not None and (path / "state.json").exists():
            state = json.loads((path / "state.json").read_text())
        if state is None:
            state = {"done": [], "rows": [],
                     "info": {"seed": seed, "S": S, "times": {}, "prior_precision": {},
                              "wall_s": 0.0, "runs": 0}}  # fmt: skip
        self.done, self.rows, self.info = state["done"], state["rows"], state["info"]
        self.info["runs"] = self.info.get("runs", 0) + 1
        self.t_start, self.wall_before = time.time(), self.info.get("wall_s", 0.0)
        self.kept: dict[str, object] = {}  # this run's tensors
        if self.done:
            print(f"seed {seed}: resuming after {', '.join(self.done)}", flush=True)

    def todo(self, stage: str) -> bool:
        return stage not in self.done

    def finish(self, stage: str, **tensors: object) -> None:
        self.done.append(stage)
        self.info["wall_s"] = self.wall_before + time.time() - self.t_start
        self.kept.update(tensors)
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for name, value in tensors.items():
            torch.save(value, self.path / f"{name}.pt")
        state = {"done": self.done, "rows": self.rows, "info": self.info}
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path / "state.json")

    def load(self, name: str):
        if name in self.kept:
            return self.kept[name]
        return torch.load(self.path / f"{name}.pt", weights_only=True)


def seed_command_line(doc: str, out: Path) -> argparse.ArgumentParser:
    """The per-seed studies' command line: ``--quick`` (tests), ``--seed K`` (one
    seed, resumable), ``--report`` (merge finished seeds), ``--out`` (default
    ``out``); a study adds its own options to it."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests)")
    ap.add_argument("--seed", type=int, help="run one seed and write its JSON")
    ap.add_argument("--report", action="store_true", help="merge finished seeds")
    ap.add_argument("--out", default=str(out))
    return ap


def seed_path(out: Path, seed: int) -> Path:
    return out.with_name(f"{out.name}_seed{seed}.json")


def finished_seeds(out: Path) -> list[dict]:
    """Every finished seed's JSON written next to ``out``."""
    runs = [
        json.loads(p.read_text())
        for p in sorted(out.parent.glob(f"{out.name}_seed*.json"))
    ]
    if not runs:
        raise SystemExit(f"no finished seeds at {out}_seed*.json")
    return runs
