"""Bayesian LoRA: a subnetwork posterior over a Hugging Face model's adapter.

A BERT built from a config (no download) reads each 8x8 digit as 65 pixel tokens;
a peft LoRA adapter (rank 4 on query / value) and a new head are trained, the rest
frozen. The posterior lives on the trainable weights only: every index below
counts the parameters that require grad, so ``n_params_subnet`` picks S of the
adapter + head, never of the frozen backbone. Batches are dicts, as Hugging Face
models take them; the wrapper returns the ``(b, c)`` logits laplace expects.

    python examples/tutorials/lora_huggingface.py [--quick]
"""

from __future__ import annotations

import argparse

import peft
import torch
import transformers
from common import digits  # registers the plugin
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader

from laplace_subnet_ext.diagnostics import classification_metrics

CLS = 17  # token id of [CLS]; pixel values 0..16 are the other tokens


class Logits(nn.Module):
    """``{"input_ids": ...} -> (b, c)`` logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(input_ids=batch["input_ids"]).logits


def batches(X: torch.Tensor, y: torch.Tensor, bs: int = 64, shuffle=False):
    """Dict batches ``{"input_ids": (b, 65), "labels": (b,)}``."""
    ids = (X * 16).round().long()
    ids = torch.cat([torch.full((len(ids), 1), CLS), ids], 1)
    rows = [{"input_ids": i, "labels": t} for i, t in zip(ids, y)]
    return DataLoader(rows, batch_size=bs, shuffle=shuffle)


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    train, _, test = digits(seed=0)
    if quick:
        train, test = (train[0][:300], train[1][:300]), (test[0][:100], test[1][:100])
    config = transformers.BertConfig(
        vocab_size=18, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=65, num_labels=10,
    )  # fmt: skip
    bert = transformers.BertForSequenceClassification(config)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )  # fmt: skip
    model = Logits(peft.get_peft_model(bert, lora))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, weight_decay=1e-4)
    for _ in range(3 if quick else 30):
        for b in batches(*train, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(b), b["labels"]).backward()
            opt.step()
    model.eval()
    D = sum(p.numel() for p in params)

    # --8<-- [start:posterior]
    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="full",
        n_params_subnet=D // 5,  # a fifth of the adapter and head
    )
    la.fit(batches(*train, bs=128))
    la.optimize_prior_precision(method="marglik")
    # --8<-- [end:posterior]
    # the selected weights, by tensor: LoRA A / B of each layer and the head
    per_tensor = {s.name: s.local.numel() for s in la.jacobians.layout.selections}
    print(f"S = {la.n_params_subnet} of D = {D} trainable weights:")
    for name, k in per_tensor.items():
        print(f"  {k:5d}  {name}")
    print("off the fast Jacobian path:", la.generic_reasons or "none")

    noised = 0.6 * test[0] + 0.4 * torch.rand(test[0].shape)
    rows = {}
    for name, X in {"test": test[0], "test, pixels noised": noised}.items():
        (b,) = list(batches(X, test[1], bs=len(X)))
        with torch.no_grad():
            rows[f"MAP | {name}"] = classification_metrics(
                model(b).softmax(-1), test[1]
            )
        probs = la(b, pred_type="glm", link_approx="probit")
        rows[f"LoRA subnet Laplace | {name}"] = classification_metrics(probs, test[1])
    for key, m in rows.items():
        print(f"{key:<45} acc {m['acc']:.3f}  NLL {m['nll']:.3f}  ECE {m['ece']:.3f}")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (tests)")
    main(ap.parse_args().quick)
