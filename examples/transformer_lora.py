"""Bayesian LoRA fine-tuning of a small transformer (Hugging Face + peft), offline.

Data: scikit-learn's digits as token sequences - each 8x8 image is 64 pixel
tokens with values 0..16, after a [CLS] token (id 17). A BERT built from a config
(random init, 2 layers, width 32, no download) is *pretrained* on digits 0-4, then
*fine-tuned* on all ten digits with a peft LoRA adapter
(rank 4 on query and value) and a new classifier head;
everything else is frozen. On the fine-tuned network:

* MAP;
* last-layer Laplace (laplace-torch, full covariance of the head);
* KFAC Laplace over the adapter and head (laplace-torch, Curvlinops GGN);
* subnetwork Laplace over S of the adapter + head weights chosen by the
  Wasserstein strategy (ours), and over all of them (S = D of the adapter);

every prior precision by its own marginal likelihood. Metrics: accuracy, NLL,
ECE, Brier on the clean test set and under shift (token noise, rotation).

    python examples/transformer_lora.py           # 3 seeds
    python examples/transformer_lora.py --quick   # 1 seed, small; used by the tests
"""

from __future__ import annotations

import argparse
import json
import math
import os

import peft
import torch
import torch.nn.functional as F
import transformers
from laplace import Laplace
from laplace.curvature import CurvlinopsGGN
from sklearn.datasets import load_digits
from study_common import mean_se, seeded, train_epochs
from torch import nn
from torch.utils.data import DataLoader, Dataset

import laplace_subnet_ext  # noqa: F401  (registers the plugin)
from laplace_subnet_ext import selection
from laplace_subnet_ext.diagnostics import classification_metrics as metrics

CLS = 17


class Tokens(Dataset):
    """Dict rows ``{"input_ids", "labels"}``, as Hugging Face models take them."""

    def __init__(self, ids: torch.Tensor, y: torch.Tensor) -> None:
        self.ids, self.y = ids, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.y[i]}


class Logits(nn.Module):
    """``batch -> logits``: the ``(b, c)`` output laplace expects."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(input_ids=batch["input_ids"]).logits


def tokens(images: torch.Tensor) -> torch.Tensor:
    """``(n, 8, 8)`` pixel values -> ``(n, 65)`` token ids with [CLS] first."""
    ids = images.round().clamp(0, 16).long().flatten(1)
    return torch.cat([torch.full((len(ids), 1), CLS), ids], 1)


def rotate(images: torch.Tensor, deg: float) -> torch.Tensor:
    t = math.radians(deg)
    theta = torch.tensor(
        [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]
    )
    x = images[:, None]
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)[:, 0]


def token_noise(images: torch.Tensor, scale: float, g: torch.Generator):
    return images + scale * torch.randn(images.shape, generator=g)


def bert(n_labels: int) -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=18,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=65,
        num_labels=n_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


def train(model: nn.Module, ids, y, epochs: int, seed: int, lr: float = 3e-3):
    """AdamW (weight decay 1e-4) on the trainable weights, batches of 64."""
    loader = DataLoader(Tokens(ids, y), batch_size=64, shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    return train_epochs(model, loader, opt, epochs, seed=seed)


def run_seed(seed: int, quick: bool) -> list[dict]:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    ntr = int(0.6 * len(X))
    Xtr, ytr, Xte, yte = X[:ntr], y[:ntr], X[ntr:], y[ntr:]
    if quick:
        Xtr, ytr, Xte, yte = Xtr[:300], ytr[:300], Xte[:100], yte[:100]
    epochs = 10 if quick else 60

    # pretrain the whole network on digits 0-4, then a LoRA adapter + new head
    low = ytr < 5
    base = seeded(lambda: bert(5), seed)
    train(Logits(base), tokens(Xtr[low]), ytr[low], epochs, seed)
    head = bert(10)
    head.load_state_dict(
        {k: v for k, v in base.state_dict().items() if "classifier" not in k},
        strict=False,
    )
    net = peft.get_peft_model(
        head,
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        ),
    )
    model = train(Logits(net), tokens(Xtr), ytr, epochs, seed + 1, lr=5e-3)
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    S = min(300, D)
    fit_loader = DataLoader(Tokens(tokens(Xtr), ytr), batch_size=128)

    preds = {}
    with torch.no_grad():
        preds["MAP"] = lambda b: F.softmax(model(b), -1)
    for name, kw in [
        (
            "last-layer Laplace",
            dict(subset_of_weights="last_layer", hessian_structure="full"),
        ),
        (
            "KFAC Laplace (adapter)",
            dict(
                subset_of_weights="all", hessian_structure="kron", backend=CurvlinopsGGN
            ),
        ),
    ]:
        la = Laplace(model, "classification", **kw)
        la.fit(fit_loader)
        la.optimize_prior_precision(method="marglik")
        preds[name] = lambda b, la=la: la(b, pred_type="glm", link_approx="probit")
    for name, idx in [
        (
            f"subnet Wasserstein (S={S})",
            selection.get("wasserstein")(model, S, likelihood="classification").select(
                fit_loader
            ),
        ),
        (f"subnet all adapter (S={D})", torch.arange(D)),
    ]:
        la = Laplace(
            model, "classification", "subnetwork", "full", subnetwork_indices=idx
        )
        la.fit(fit_loader)
        la.optimize_prior_precision(method="marglik")
        preds[name] = lambda b, la=la: la(b, pred_type="glm", link_approx="probit")

    g = torch.Generator().manual_seed(1000 + seed)
    shifts = {
        "clean": Xte,
        "noise 2": token_noise(Xte, 2.0, g),
        "noise 4": token_noise(Xte, 4.0, g),
        "rotation 30": rotate(Xte, 30),
        "rotation 60": rotate(Xte, 60),
    }
    rows = []
    for method, predict in preds.items():
        for shift, images in shifts.items():
            batch = {"input_ids": tokens(images)}
            # blocks of 16: laplace's predictive forms torch.func Jacobians of a
            # whole block at once (128 inputs of this BERT took > 15 GB)
            p = torch.cat(
                [
                    predict({"input_ids": batch["input_ids"][i : i + 16]}).detach()
                    for i in range(0, len(images), 16)
                ]
            )
            rows.append(
                {"seed": seed, "method": method, "shift": shift, "D": D, "S": S}
                | metrics(p, yte)
            )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shifts = list(dict.fromkeys(r["shift"] for r in rows))
    order = lambda k: (methods.index(k[0]), shifts.index(k[1]))  # noqa: E731
    return mean_se(
        rows, ("method", "shift"), ("acc", "nll", "ece", "brier"), order=order
    )


def plot(summary: list[dict], prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(dict.fromkeys(r["shift"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    width = 0.8 / len(methods)
    for ax, k in zip(axes, ("acc", "nll", "ece")):
        for i, m in enumerate(methods):
            vals = [
                next(r[k] for r in summary if r["method"] == m and r["shift"] == s)
                for s in shifts
            ]
            ax.bar([j + i * width for j in range(len(shifts))], vals, width, label=m)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(shifts))], shifts, fontsize=7
        )
        ax.set_title(k)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="examples/results/transformer_lora")
    a = ap.parse_args()
    rows = []
    for seed in range(1 if a.quick else a.seeds):
        rows += run_seed(seed, a.quick)
    summary = summarise(rows)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"summary": summary, "rows": rows}, fh, indent=1)
    print(f"{'method':<30} {'shift':<12} {'acc':>6} {'nll':>7} {'ece':>6} {'brier':>6}")
    for r in summary:
        print(
            f"{r['method']:<30} {r['shift']:<12} {r['acc']:6.3f} {r['nll']:7.3f} "
            f"{r['ece']:6.3f} {r['brier']:6.3f}"
        )
    plot(summary, a.out)
    print(f"wrote {a.out}.json and {a.out}.png")


if __name__ == "__main__":
    main()
