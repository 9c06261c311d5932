"""Second architecture zoo: models whose rows, samples or derivatives are unusual.

Each case maps a tensor input ``(b, ...)`` to ``(b, c)``; weights are perturbed
(``tests.zoo.perturbed``). The batches are built so that the trap fires in a
*later* batch than the first (the MoE expert that gets no token at first), or
in every batch (sequence length equal to the batch size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils import checkpoint

from tests.zoo import perturbed

B, T, E, C = 4, 3, 4, 3  # batch, tokens, width, outputs


@dataclass
class Case:
    id: str
    make_model: Callable[[], nn.Module]
    make_x: Callable[[], torch.Tensor]  # two batches of B samples, stacked
    #: tensors (by name fragment) that must stay on the fast path
    fast: tuple[str, ...] = ()


class MoE(nn.Module):
    """Token-routed top-1 mixture of experts (the gather / index_add of Switch,
    Mixtral, Qwen-MoE, OLMoE)."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(E, 3)
        self.experts = nn.ModuleList(nn.Linear(E, E) for _ in range(3))
        self.head = nn.Linear(E, C)

    def forward(self, x):  # (b, t, e)
        h = x.reshape(-1, E)
        top = self.router(h).argmax(-1)
        out = torch.zeros_like(h)
        for e, ex in enumerate(self.experts):
            r = (top == e).nonzero()[:, 0]
            if r.numel():
                out = out.index_add(0, r, ex(h[r]))
        return self.head(torch.tanh(out.reshape(x.shape)).mean(1))


def moe_model() -> nn.Module:
    m = perturbed(MoE())
    with torch.no_grad():
        m.router.weight.copy_(10 * torch.eye(3, E))
        m.router.bias.zero_()
    return m


def moe_x() -> torch.Tensor:
    """Batch 1: feature 2 negative, so no token reaches expert 2. Batch 2: exactly
    B tokens (= the batch size) reach expert 2, two from each of samples 0 and 1."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(B, T, E, generator=g) + 0.5
    x1[..., 2] = -1.0
    x2 = 0.1 * torch.rand(B, T, E, generator=g)
    x2[..., 2] = -1.0
    x2[:2, :2, 2] = 5.0
    return torch.cat([x1, x2])


class Rescaled(nn.Module):
    """A forward hook that rescales a Linear's output (registered before ours)."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(E, E), nn.Linear(E, C)
        self.lin.register_forward_hook(lambda m, i, o: 2.0 * o)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x)))


class Patched(nn.Module):
    """An instance whose ``forward`` was replaced (x -> Linear(2 x))."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(E, E), nn.Linear(E, C)
        original = self.lin.forward
        self.lin.forward = lambda a: original(2.0 * a) ** 2

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x)))


class SeqFirst(nn.Module):
    """Sequence-first encoder layer (the default layout) with sequence length equal
    to the batch size, so a leading-dimension test cannot tell them apart."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(E, 2, 8, dropout=0.0)
        self.head = nn.Linear(E, C)

    def forward(self, x):  # x: (b, t = b, e)
        return self.head(self.enc(x.transpose(0, 1)).mean(0))


class BatchStats(nn.Module):
    """BatchNorm without running statistics: samples interact in eval mode too."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(E, 6)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)
        self.head = nn.Linear(6, C)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.lin(x))))


class SortedByLength(nn.Module):
    """An RNN model that sorts its batch by length, runs, and un-sorts."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(E, 5)
        self.rnn = nn.GRU(5, 5, batch_first=True)
        self.head = nn.Linear(5, C)

    def forward(self, x):  # (b, t, e); length = number of non-zero rows
        lengths = (x.abs().sum(-1) > 0).sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        h = self.inp(x[order])
        out, _ = self.rnn(h)
        last = out[torch.arange(len(order)), lengths[order] - 1]
        return self.head(last)[torch.argsort(order)]


class Packed(nn.Module):
    """``pack_padded_sequence`` + GRU (no sorting by the user)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(E, 5, batch_first=True)
        self.head = nn.Linear(5, C)

    def forward(self, x):
        lengths = (x.abs().sum(-1) > 0).sum(1).cpu()
        packed = pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        return self.head(out.sum(1))


def ragged_x() -> torch.Tensor:
    x = torch.randn(2 * B, T + 1, E)
    lengths = torch.tensor([4, 2, 3, 1, 1, 4, 2, 3])
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x


class Temperature(nn.Module):
    """A 0-dim learned parameter (CLIP's ``logit_scale``)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(E, C)
        self.logit_scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return self.lin(x) * self.logit_scale.exp()


class Bag(nn.Module):
    def __init__(self, mode: str = "mean", freq: bool = False):
        super().__init__()
        self.bag = nn.EmbeddingBag(11, E, mode=mode, scale_grad_by_freq=freq)
        self.head = nn.Linear(E, C)

    def forward(self, tokens):
        return self.head(torch.tanh(self.bag(tokens.long())))


class Emb(nn.Module):
    def __init__(self, max_norm: float | None = None, freq: bool = False):
        super().__init__()
        self.emb = nn.Embedding(11, E, max_norm=max_norm, scale_grad_by_freq=freq)
        self.head = nn.Linear(E, C)

    def forward(self, tokens):
        return self.head(torch.tanh(self.emb(tokens.long())).mean(1))


def tokens_x() -> torch.Tensor:
    """Token ids with repeats inside and across samples (stored as floats)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 11, (2 * B, 5), generator=g).double()


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.inp = nn.Linear(E, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, C)
        self.reentrant = reentrant

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = checkpoint.checkpoint(self.block, h, use_reentrant=self.reentrant)
        return self.head(h)


class CastInForward(nn.Module):
    """Calls ``.to(dtype)`` on a submodule inside ``forward`` (HF Switch router)."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(E, 6)
        self.head = nn.Linear(6, C)

    def forward(self, x):
        self.router = self.router.to(x.dtype)
        return self.head(torch.tanh(self.router(x)))


class LearnedMaskSDPA(nn.Module):
    """``F.scaled_dot_product_attention`` with a learned float mask (T5's relative
    position bias)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.bias = nn.Parameter(torch.zeros(1, 1, T, T))
        self.head = nn.Linear(E, C)

    def forward(self, x):  # (b, t, e)
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.head(h.squeeze(1).mean(1))


def _flat() -> torch.Tensor:
    return torch.randn(2 * B, E)


def _seq(t: int = T) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2 * B, t, E)


CASES = [
    Case("moe_token_routed", moe_model, moe_x, fast=("router", "head")),
    Case("forward_hook_rescales", lambda: perturbed(Rescaled()), _flat, ("lin", "head")),
    Case("forward_patched", lambda: perturbed(Patched()), _flat, ("head",)),
    Case("seq_first_t_equals_b", lambda: perturbed(SeqFirst()), _seq(B), ("head",)),
    Case("batchnorm_batch_stats", lambda: perturbed(BatchStats()), _flat),
    # the head runs on sorted rows: misattributed too, rightly routed away
    Case("sorted_by_length", lambda: perturbed(SortedByLength()), ragged_x),
    Case("packed_gru", lambda: perturbed(Packed()), ragged_x, ("head",)),
    Case("zero_dim_temperature", lambda: perturbed(Temperature()), _flat, ("lin",)),
    Case("embedding_bag", lambda: perturbed(Bag()), tokens_x, ("head",)),
    Case("embedding_bag_freq", lambda: perturbed(Bag("sum", True)), tokens_x),
    Case("embedding_max_norm", lambda: perturbed(Emb(max_norm=1.0)), tokens_x, ("emb",)),
    Case("embedding_freq", lambda: perturbed(Emb(freq=True)), tokens_x, ("emb",)),
    # a custom autograd.Function hides its parameter uses: nothing is fast
    Case("checkpoint_reentrant", lambda: perturbed(Checkpointed(True)), _flat),
    Case("checkpoint_non_reentrant", lambda: perturbed(Checkpointed(False)), _flat),
    Case("to_dtype_in_forward", lambda: perturbed(CastInForward()), _flat, ("head",)),
    Case("sdpa_learned_mask", lambda: perturbed(LearnedMaskSDPA()), _seq(), ("head",)),
]  # fmt: skip
