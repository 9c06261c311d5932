"""What every tutorial needs and none is about: offline data and a MAP network.

scikit-learn's 1,797 8x8 digits (BSD-3, ships with the package), split
60 / 15 / 25 % into train / validation / test, pixels in [0, 1]; a shifted copy
of any set (Gaussian pixel noise); a small MLP trained to its MAP with Adam and
weight decay.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# imported before laplace (the tutorials import this module first): registers the
# plugin, and laplace's ASDL import then raises no torch.jit deprecation warning
import laplace_subnet_ext  # noqa: F401

Split = tuple[torch.Tensor, torch.Tensor]


def digits(seed: int = 0) -> tuple[Split, Split, Split]:
    """``(train, val, test)`` splits of the digits as ``(X (n, 64), y (n,))``."""
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    a, b = int(0.6 * len(X)), int(0.75 * len(X))
    return (X[:a], y[:a]), (X[a:b], y[a:b]), (X[b:], y[b:])


def noisy(X: torch.Tensor, scale: float = 0.6, seed: int = 0) -> torch.Tensor:
    """A distribution shift: Gaussian pixel noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (X + scale * torch.randn(X.shape, generator=g)).clamp(0, 1)


def loader(split: Split, batch_size: int = 128, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(*split), batch_size=batch_size, shuffle=shuffle)


def train_map(
    model: nn.Module, train: Split, epochs: int, lr: float = 3e-3, wd: float = 1e-4
) -> nn.Module:
    """Cross-entropy with Adam and weight decay ``wd``; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    for _ in range(epochs):
        for xb, yb in loader(train, 64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def digits_mlp(seed: int = 0, width: int = 64, epochs: int = 40) -> nn.Module:
    """A 64-width-10 MLP on the digits at its MAP."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    return train_map(model, digits(seed)[0], epochs)
