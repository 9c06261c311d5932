"""Batch slicing for tensor and dict-like (e.g. Hugging Face) inputs."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

__all__ = ["batch_size", "iter_inputs", "slice_batch", "split_batch", "to_device"]


def batch_size(x: torch.Tensor | MutableMapping[str, Any], dict_key_x: str) -> int:
    """Leading dimension of ``x`` (of ``x[dict_key_x]`` for dict inputs)."""
    if isinstance(x, MutableMapping):
        return int(x[dict_key_x].shape[0])
    return int(x.shape[0])


def slice_batch(
    x: torch.Tensor | MutableMapping[str, Any], start: int, stop: int, n: int
) -> torch.Tensor | MutableMapping[str, Any]:
    """Rows ``start:stop`` of ``x``; dict values whose leading dim is ``n`` are sliced."""
    if isinstance(x, MutableMapping):
        out: dict[str, Any] = {}
        for key, value in x.items():
            sliced = (
                value[start:stop]
                if isinstance(value, torch.Tensor)
                and value.ndim > 0
                and value.shape[0] == n
                else value
            )
            out[key] = sliced
        return out
    return x[start:stop]


def to_device(
    x: torch.Tensor | MutableMapping[str, Any], device: torch.device
) -> torch.Tensor | MutableMapping[str, Any]:
    """Move a tensor, or the tensor values of a dict input, to ``device``."""
    if isinstance(x, MutableMapping):
        return {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in x.items()
        }
    return x.to(device)


def split_batch(data: Any, dict_key_y: str = "labels") -> tuple[Any, Any]:
    """``(X, y)`` of one batch from a loader: a ``(X, y, ...)`` tuple / list, or a
    dict-like batch (Hugging Face) whose targets are ``data[dict_key_y]``."""
    if isinstance(data, MutableMapping):
        return data, data.get(dict_key_y)
    if isinstance(data, tuple | list) and len(data) >= 2:
        return data[0], data[1]
    raise TypeError(
        "a batch must be an (X, y) tuple / list or a dict with the key "
        f"dict_key_y={dict_key_y!r}; got {type(data).__name__}."
    )


def iter_inputs(data: Any, dict_key_y: str = "labels"):
    """The inputs of ``data``: one tensor / dict of inputs as is, or the ``X`` of
    every batch of an iterable of batches (:func:`split_batch`)."""
    if isinstance(data, torch.Tensor | MutableMapping):
        yield data
        return
    for batch in data:
        yield split_batch(batch, dict_key_y)[0]
