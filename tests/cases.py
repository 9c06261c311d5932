"""Problems defined once, with readable ids, and one comparison helper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def assert_close(actual, expected, rtol: float = 1e-8, what: str = "") -> None:
    """Relative error ``max|a-e| / max|e|`` below ``rtol``; reports the worst entry."""
    actual = torch.as_tensor(actual).detach().double()
    expected = torch.as_tensor(expected).detach().double()
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-300)
    rel = (err.max() / scale).item()
    if rel > rtol:
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(
            f"{what}: relative error {rel:.3e} > {rtol:.0e}; worst entry {idx}: "
            f"{actual[idx].item():.10g} vs {expected[idx].item():.10g}"
        )


#: parameters of ``mlp()``: 3*12 + 12 + 12*2 + 2
D_MLP = 74
_DEFAULT = object()


def make(idx=_DEFAULT, lik: str = "classification", **kw):
    """A DenseSubnetLaplace on ``mlp()`` (or ``model=``), default S = indices 10..29."""
    from laplace_subnet_ext import DenseSubnetLaplace

    model = kw.pop("model", None) or mlp()
    if idx is _DEFAULT:
        idx = torch.arange(10, 30)
    return DenseSubnetLaplace(model, lik, idx, **kw)


def mlp(n_in: int = 3, n_out: int = 2, width: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out))


def loader(likelihood: str, n: int = 20, n_in: int = 3, n_out: int = 2, bs: int = 7):
    X = torch.randn(n, n_in)
    y = (
        torch.randint(n_out, (n,))
        if likelihood == "classification"
        else torch.randn(n, n_out)
    )
    return DataLoader(TensorDataset(X, y), batch_size=bs)


class SmallCNN(nn.Module):
    """Conv2d + BatchNorm (eval) + pooling + Linear."""

    def __init__(self, n_out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, stride=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 2, stride=2, dilation=1)
        self.head = nn.Linear(3 * 2 * 2, n_out)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2, ceil_mode=False) if x.shape[-1] > 4 else x
        x = torch.relu(self.conv2(x))
        return self.head(x.flatten(1))


class Residual(nn.Module):
    """y = W2 relu(LN(W1 x)) + x, then a head; in-place ReLU on a module output."""

    def __init__(self, d: int = 5, n_out: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.fc1 = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(d, d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.fc2(self.act(self.ln(self.fc1(h)))) + h)


class NonLeafParam(nn.Module):
    """A parameter owned by a non-leaf module and used through F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.scale = nn.Parameter(torch.randn(6))
        self.out_w = nn.Parameter(torch.randn(2, 6) / 3)

    def forward(self, x):
        return nn.functional.linear(self.body(x) * self.scale, self.out_w)


class DictModel(nn.Module):
    """Takes {'input_ids': tokens, 'extra': x}; Embedding + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4 + 2, 3)

    def forward(self, batch):
        e = self.emb(batch["input_ids"]).mean(1)
        return self.lin(torch.cat([e, batch["extra"]], -1))


@dataclass
class JacCase:
    id: str
    make_model: Callable[[], nn.Module]
    make_x: Callable[[], object]


def _img():
    return torch.randn(5, 2, 8, 8)


def _dict_x():
    return {"input_ids": torch.randint(7, (5, 4)), "extra": torch.randn(5, 2)}


JAC_CASES = [
    JacCase("mlp", lambda: mlp(3, 4), lambda: torch.randn(6, 3)),
    JacCase("cnn_bn_pool", SmallCNN, _img),
    JacCase("residual_layernorm_inplace", Residual, lambda: torch.randn(6, 3)),
    JacCase("nonleaf_param", NonLeafParam, lambda: torch.randn(6, 3)),
    JacCase("dict_embedding", DictModel, _dict_x),
]


def eval_model(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, then switch to eval."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()
