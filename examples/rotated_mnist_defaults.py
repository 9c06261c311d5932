"""Rotated MNIST, second round (issue 36): the default selection, marginal-
likelihood training, and a second shift (MNIST-C style corruptions).

The same data, split, ResNet, MAP training and seeds as ``rotated_mnist.py``
(its MAP is retrained here and checked against that study's MAP rows). Methods:

* MAP, and laplace-torch's full last-layer Laplace (the reference to beat), at
  the marginal-likelihood and validation-grid priors (as in the first study);
* ``subnet default``: the package's default selection (``greedy_laplace``, as
  ``Laplace(..., n_params_subnet=10_000)`` with its defaults) at S = 10,000,
  dense GGN posterior, both priors;
* ``subnet gradient-laplace``: what the default selection keeps above its
  work bound (``max_greedy_work``): the Gradient-Laplace top S of its pool
  screening (the same 1,024 inputs), without the greedy steps; same posterior;
* ``subnet marglik training``: :func:`laplace_subnet_ext.marglik_training` from
  the same initial weights: weights and a layer-wise prior learnt together by
  the evidence of the default subnetwork (S = 10,000, selected at the first
  marginal-likelihood step and kept), the MAP's optimiser and schedule (SGD,
  Nesterov momentum 0.9, cosine from 0.05, 20 epochs, batch 128), prior
  initialised at the MAP's weight decay (lambda = 5e-4 N = 2), a hyperparameter
  step (10 Adam steps) every 5 epochs from epoch 5;
* ``KFAC marglik training``: laplace-torch's own ``marglik_training`` (KFAC over
  all weights, ASDL GGN), the same schedule: the anchor. Its predictive is the
  linearised Monte Carlo of the first study (20 samples). laplace's loop leaves
  the model in eval mode after its first fit (so it trains the remaining
  epochs with BatchNorm's frozen running statistics); ``KFAC marglik training,
  train mode`` is the same call with an optimiser that puts the model back in
  train mode before every batch (:class:`TrainModeSGD`).

Both marglik-trained methods are also reported as the trained network alone
(``network alone``: its softmax, no posterior), which separates what the
training did from what the posterior does.

Test sets: the 500 test images rotated by 0-180 degrees; the same images under
seven corruptions in the style of MNIST-C (Mu & Gilmer, 2019), one severity,
synthesised here with a fixed seed (the same corrupted images for every seed
and method): Gaussian noise, shot noise, Gaussian blur, translation, contrast,
a stripe and a zig-zag occlusion (:data:`CORRUPTIONS`); Animal-MNIST for OOD.
Costs are recorded per stage (after the MAP; for a method that trains, its
training time beyond the MAP's).

    python examples/rotated_mnist_defaults.py --seed 0   # -> results/rotated_mnist_defaults_seed0.json
    python examples/rotated_mnist_defaults.py --report   # merge seeds: JSON + trade-off figure
    python examples/rotated_mnist_defaults.py --quick --out /tmp/r   # seconds (tests)

Stages are resumable as in ``rotated_mnist.py`` (``results/partial/``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from laplace import Laplace
from laplace import marglik_training as laplace_marglik_training
from laplace.curvature import AsdlGGN
from rotated_mnist import (
    ANGLES,
    ResNet18,
    batched,
    last_layer_stage,
    linearised_mc,
    ood_set,
    shuffled,
    splits,
    subnet_predictions,
    train,
)
from shift_classification import rotate
from study_common import (
    METRICS,
    Stages,
    auroc,
    finished_seeds,
    metrics,
    probit,
    seed_command_line,
    seed_path,
)
from study_common import summarise as summarise_seeds
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext
from laplace_subnet_ext import selection
from laplace_subnet_ext.posterior.dense import DEFAULT_MASK

RESULTS = Path(__file__).parent / "results"

#: the corruptions, in the order of the tables
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "blur", "translate", "contrast", "stripe",
    "zigzag",
)  # fmt: skip


def _blur(x: torch.Tensor, sd: float) -> torch.Tensor:
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sd**2))
    k = k / k.sum()
    return F.conv2d(x, (k[:, None] * k[None, :])[None, None], padding=3)


def _shift(x: torch.Tensor, g: torch.Generator, pixels: int) -> torch.Tensor:
    """Each image moved by ``pixels`` in a random direction of the 8 compass
    directions, zeros shifted in."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    dirs = torch.randint(0, 8, (len(x),), generator=g)
    steps = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for i, d in enumerate(dirs.tolist()):
        dy, dx = (pixels * s for s in steps[d])
        ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
        xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def _lines(x: torch.Tensor, points: torch.Tensor, width: float) -> torch.Tensor:
    """``x`` with white polylines through ``points`` ``(n, k, 2)`` (row, col)
    drawn ``width`` pixels wide (distance of each pixel centre to a segment)."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
    )
    pix = torch.stack([yy, xx], -1).reshape(1, 1, -1, 2)  # (1, 1, hw, 2)
    a, b = points[:, :-1, None], points[:, 1:, None]  # (n, k-1, 1, 2)
    ab = b - a
    t = (((pix - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    d = (pix - (a + t[..., None] * ab)).norm(dim=-1).min(1).values  # (n, hw)
    mask = (d <= width / 2).reshape(len(x), 1, h, w)
    return torch.where(mask, torch.ones_like(x), x)


def corrupt(x: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """One MNIST-C-style corruption of ``(n, 1, 28, 28)`` images in [0, 1], at a
    fixed severity (parameters fixed before any method was run; the random
    draws seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    if kind == "gaussian_noise":  # pixel noise, sd 0.4
        return (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "shot_noise":  # Poisson counts at 3 photons per unit intensity
        return (torch.poisson(x * 3.0, generator=g) / 3.0).clamp(0, 1)
    if kind == "blur":  # Gaussian blur, sd 1.5 pixels
        return _blur(x, 1.5).clamp(0, 1)
    if kind == "translate":  # 5 pixels in one of 8 directions
        return _shift(x, g, 5)
    if kind == "contrast":  # 30 % of the contrast around each image's mean
        m = x.mean((-1, -2), keepdim=True)
        return (x - m) * 0.3 + m
    if kind == "stripe":  # a vertical white bar, 3 pixels wide, over the centre
        cols = torch.randint(10, 16, (n,), generator=g)
        out = x.clone()
        for i, c in enumerate(cols.tolist()):
            out[i, :, :, c : c + 3] = 1.0
        return out
    if kind == "zigzag":  # a white zig-zag line across the image, 2 pixels wide
        xs = torch.linspace(0, 27, 6).expand(n, 6)
        base = torch.randint(6, 22, (n, 1), generator=g).to(x.dtype)
        sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
        ys = (base + 5 * sign).clamp(0, 27)
        return _lines(x, torch.stack([ys, xs], -1), 2.0)
    raise ValueError(f"kind must be one of {CORRUPTIONS}; got {kind!r}.")


def test_sets(te: torch.Tensor, quick: bool) -> dict[str, torch.Tensor]:
    """``{name: images}``: the rotations (name: the angle) and corruptions."""
    angles = [0, 90, 180] if quick else ANGLES
    sets = {str(a): rotate(te, a) for a in angles}
    return sets | {c: corrupt(te, c) for c in CORRUPTIONS}


def softmax_of(model: torch.nn.Module):
    """The network's own predictive (no posterior): batched softmax."""
    return lambda X: batched(lambda x: F.softmax(model(x), -1), X)


def probit_predict(la, x: torch.Tensor, bs: int = 250) -> torch.Tensor:
    """GLM probit predictive of a fitted subnetwork posterior at its own prior."""
    parts = []
    for i in range(0, len(x), bs):
        Js, f = la.jacobians(x[i : i + bs])
        parts.append(probit(f, la.functional_variance(Js)))
    return torch.cat(parts)


class TrainModeSGD(torch.optim.SGD):
    """SGD whose ``zero_grad`` first puts ``model`` in train mode.

    laplace's ``marglik_training`` never calls ``model.train()``: its Laplace fit
    switches the model to eval mode at the first marginal-likelihood step, and
    every later epoch then trains with dropout off and BatchNorm on its frozen
    running statistics (``tests/test_marglik_training.py`` shows our loop does
    not). Its loop calls ``optimizer.zero_grad()`` before every training batch
    and nowhere else, so this optimiser restores the mode its epochs need.
    """

    def __init__(self, params, model: torch.nn.Module, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.train()
        super().zero_grad(set_to_none)


def run_seed(seed: int, quick: bool, state_dir: Path | None = None) -> dict:
    tr, va, te = splits(quick)
    ood = ood_set(quick)
    sets = test_sets(te[0], quick)
    width, epochs = (8, 5) if quick else (32, 20)
    n_mc, S = (4, 200) if quick else (20, 10_000)
    fit_loader = DataLoader(TensorDataset(*tr), batch_size=64 if quick else 128)
    st = Stages(state_dir, seed, S)
    rows, info = st.rows, st.info
    info["corruptions"] = list(CORRUPTIONS)

    def record(method: str, prior: str, predict) -> None:
        t0 = time.time()
        probs = {k: predict(x) for k, x in sets.items()}
        info["times"].setdefault(method, {})[f"predict_{prior}"] = time.time() - t0
        for k, p in probs.items():
            rows.append(
                {"method": method, "prior": prior, "set": k, **metrics(p, te[1])}
            )
        if ood is not None:
            rows.append({"method": method, "prior": prior, "set": "ood",
                         "ood_auroc": auroc(probs["0"], predict(ood))})  # fmt: skip

    def timed(method: str, key: str, t0: float) -> None:
        info["times"].setdefault(method, {})[key] = time.time() - t0
        print(f"seed {seed}: {method} {key} {time.time() - t0:.0f}s", flush=True)

    def network() -> torch.nn.Module:
        torch.manual_seed(seed)
        return ResNet18(width)

    train_kw = {
        "optimizer_cls": torch.optim.SGD,
        "optimizer_kwargs": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        "scheduler_cls": torch.optim.lr_scheduler.CosineAnnealingLR,
        "scheduler_kwargs": {"T_max": epochs * len(shuffled(tr, seed))},
        "n_epochs": epochs,
        "n_epochs_burnin": 1 if quick else 5,
        "marglik_frequency": 2 if quick else 5,
        "n_hypersteps": 10,
        "prior_structure": "layerwise",
        "prior_prec_init": 5e-4 * len(tr[0]),  # the MAP's weight decay
    }

    if st.todo("MAP"):
        t0 = time.time()
        model = train(network(), tr, epochs, seed)
        timed("MAP", "fit", t0)
        info["D"] = sum(p.numel() for p in model.parameters())
        record("MAP", "-", softmax_of(model))
        st.finish("MAP", model=model.state_dict())
    else:
        model = network()
        model.load_state_dict(st.load("model"))
        model.eval()

    if st.todo("last-layer Laplace"):
        last_layer_stage(model, fit_loader, va, timed, info, record)
        st.finish("last-layer Laplace")

    def kfac_marglik(name: str, optimizer_cls) -> None:
        """laplace's ``marglik_training`` (KFAC, ASDL GGN) with ``optimizer_cls``."""
        t0 = time.time()
        net = network()
        kw = dict(train_kw, optimizer_cls=optimizer_cls)
        if optimizer_cls is TrainModeSGD:
            kw["optimizer_kwargs"] = dict(kw["optimizer_kwargs"], model=net)
        la, trained, margliks, _ = laplace_marglik_training(
            net, shuffled(tr, seed), "classification", "kron", AsdlGGN, **kw
        )
        timed(name, "train", t0)
        info.setdefault("margliks", {})[name] = [float(m) for m in margliks]
        info["prior_precision"][name] = la.prior_precision.tolist()
        trained.eval()
        record(name, "trained", linearised_mc(trained, la, n_mc, seed))
        record(name, "network alone", softmax_of(trained))
        del la, trained
        st.finish(name)

    if st.todo("KFAC marglik training"):  # as laplace ships it
        kfac_marglik("KFAC marglik training", torch.optim.SGD)

    name = "KFAC marglik training, train mode"
    if st.todo(name):  # laplace's loop with the model put back in train mode
        kfac_marglik(name, TrainModeSGD)

    def subnet_stage(name: str, mask) -> None:
        """Select with ``mask``, fit the dense GGN posterior, both priors."""
        t0 = time.time()
        idx = mask.select(fit_loader)
        timed(name, "select", t0)
        info.setdefault("selection_stages", {})[name] = dict(mask.stage_seconds)
        info.setdefault("selection_choice", {})[name] = {
            "eval_used": mask.eval_used, "chosen_by": mask.chosen_by,
            "objective": mask.objective,
            "greedy_skipped": mask.greedy_skipped}  # fmt: skip
        t0 = time.time()
        la = Laplace(model, "classification", "subnetwork", "full",
                     subnetwork_indices=idx)  # fmt: skip
        la.fit(fit_loader)
        timed(name, "fit", t0)
        info.setdefault("where", {})[name] = where(model, idx)
        lams, out, seconds = subnet_predictions(la, va, list(sets.items()) + (
            [("ood", ood)] if ood is not None else []))  # fmt: skip
        info["times"][name] |= seconds
        info["prior_precision"][name] = lams
        for prior in lams:
            for k in sets:
                rows.append({"method": name, "prior": prior, "set": k,
                             **metrics(out[k][prior], te[1])})  # fmt: skip
            if ood is not None:
                rows.append({"method": name, "prior": prior, "set": "ood",
                             "ood_auroc": auroc(out["0"][prior], out["ood"][prior])})  # fmt: skip
        del la
        st.finish(name)

    def default_mask(**kw):
        return selection.get(DEFAULT_MASK)(
            model, S, likelihood="classification", prior_precision=1.0,
            sigma_noise=1.0, **kw)  # fmt: skip

    if st.todo("subnet default"):
        subnet_stage("subnet default", default_mask())
    name = "subnet gradient-laplace"
    if st.todo(name):  # the default's screening alone: its rule above the bound
        subnet_stage(name, default_mask(max_greedy_work=1.0))

    name = "subnet marglik training"
    if st.todo(name):
        t0 = time.time()
        la, trained, margliks, _ = laplace_subnet_ext.marglik_training(
            network(), shuffled(tr, seed), "classification", n_params_subnet=S,
            **train_kw,
        )  # fmt: skip
        timed(name, "train", t0)
        info.setdefault("margliks", {})[name] = [float(m) for m in margliks]
        info["prior_precision"][name] = la.prior_precision.tolist()
        info.setdefault("where", {})[name] = where(trained, la.subnetwork_indices)
        record(name, "trained", lambda X, la=la: probit_predict(la, X))
        record(name, "network alone", softmax_of(trained))
        del la, trained
        st.finish(name)
    return {"info": info, "rows": rows}


def where(model: torch.nn.Module, idx: torch.Tensor) -> dict[str, int]:
    """How many selected weights each parameter tensor holds (non-zero only)."""
    out, start = {}, 0
    for n, p in model.named_parameters():
        k = int(((idx >= start) & (idx < start + p.numel())).sum())
        if k:
            out[n] = k
        start += p.numel()
    return out


# ---------------------------------------------------------------- the report
ROTATED = [str(a) for a in ANGLES if a]


def per_seed(run: dict, method: str, prior: str) -> dict[str, float] | None:
    """One seed's clean, rotated-mean, corrupted-mean and per-corruption NLL and
    the other metrics, for ``(method, prior)``."""
    rs = {
        r["set"]: r for r in run["rows"] if (r["method"], r["prior"]) == (method, prior)
    }
    if not rs:
        return None
    rot = [rs[a] for a in ROTATED if a in rs]
    cor = [rs[c] for c in CORRUPTIONS]
    out = {f"{k} clean": rs["0"][k] for k in METRICS}
    out |= {f"{k} rotated": sum(r[k] for r in rot) / len(rot) for k in METRICS}
    out |= {f"{k} corrupted": sum(r[k] for r in cor) / len(cor) for k in METRICS}
    out |= {f"nll {c}": rs[c]["nll"] for c in CORRUPTIONS}
    out |= {f"acc {c}": rs[c]["acc"] for c in CORRUPTIONS}
    if "ood" in rs:
        out["auroc"] = rs["ood"]["ood_auroc"]
    return out


def cost(run: dict, method: str) -> float:
    """Seconds after the MAP (selection, fit, tuning; for a method that trains,
    its training time beyond the MAP's); predictions excluded."""
    t = run["info"]["times"].get(method, {})
    spent = sum(v for k, v in t.items() if not k.startswith("predict") and k != "train")
    if "train" in t:
        spent += t["train"] - run["info"]["times"]["MAP"]["fit"]
    return spent


def summary(runs: list[dict]) -> list[dict]:
    """Per (method, prior): mean and standard error over seeds of every entry of
    :func:`per_seed`, and the mean cost."""
    keys = list(
        dict.fromkeys((r["method"], r["prior"]) for run in runs for r in run["rows"])
    )
    out = []
    for m, prior in keys:
        seeds = [(run, s) for run in runs if (s := per_seed(run, m, prior)) is not None]
        row: dict = {"method": m, "prior": prior, "n_seeds": len(seeds)}
        for k in seeds[0][1]:
            v = torch.tensor([s[k] for _, s in seeds], dtype=torch.float64)
            row[k] = float(v.mean())
            row[k + "_se"] = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
        row["cost_s"] = float(sum(cost(run, m) for run, _ in seeds) / len(seeds))
        out.append(row)
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Clean NLL against shifted NLL (rotated; corrupted), one point per (method,
    prior) with standard errors, cost after the MAP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, shift in zip(axes, ("rotated", "corrupted")):
        for i, r in enumerate(rows):
            label = f"{r['method']} [{r['prior']}]"
            if r["method"] != "MAP":
                label += f" ({r['cost_s']:.0f} s)"
            ax.errorbar(
                r["nll clean"], r[f"nll {shift}"], xerr=r["nll clean_se"],
                yerr=r[f"nll {shift}_se"], fmt="os^vD<>ph*"[i % 10], ms=7,
                color=plt.cm.tab20(i % 20), capsize=3, label=label,
            )  # fmt: skip
        ax.set_xlabel("clean NLL")
        ax.set_ylabel(
            f"{shift} NLL (mean over {'15-180 deg' if shift == 'rotated' else 'corruptions'})"
        )
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    n = max(r["n_seeds"] for r in rows)
    fig.suptitle(
        f"Rotated MNIST ResNet: in distribution vs under shift ({n} seeds; lower-left is better)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = seed_command_line(__doc__, RESULTS / "rotated_mnist_defaults")
    a = ap.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.quick:
        runs = [run_seed(0, quick=True)]
    elif a.seed is not None:
        state = out.parent / "partial" / f"{out.name}_seed{a.seed}"
        path = seed_path(out, a.seed)
        path.write_text(json.dumps(run_seed(a.seed, False, state), indent=1))
        print(f"wrote {path}")
        return
    elif a.report:
        runs = finished_seeds(out)
    else:
        raise SystemExit("give --seed K, --report or --quick")
    rows = summary(runs)
    sets = summarise_seeds(runs, "set")
    out.with_suffix(".json").write_text(json.dumps(
        {"seeds": sorted(r["info"]["seed"] for r in runs), "corruptions": list(CORRUPTIONS),
         "summary": rows, "per_set": sets, "info": [r["info"] for r in runs]}, indent=1))  # fmt: skip
    plot(rows, out.with_suffix(".png"))
    for r in rows:
        print(f"{r['method']:<26} {r['prior']:<10} clean {r['nll clean']:.3f} "
              f"rotated {r['nll rotated']:.3f} corrupted {r['nll corrupted']:.3f} "
              f"cost {r['cost_s']:.0f} s")  # fmt: skip
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
