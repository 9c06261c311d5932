r"""Fast path: selected entries of per-sample Jacobians from layer activations.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s`` subnetwork
parameters of one tensor, ``t`` positions that share a weight (sequence
positions, spatial locations), ``i`` input features, ``o`` output features.

For a supported module with input :math:`a` and output :math:`z`, one forward
hook records :math:`(a, z)`; then for every output :math:`k` one backward pass
gives :math:`\partial f_k / \partial z` per sample, and the Jacobian entry of a
selected weight is a product of two activations, e.g. for ``nn.Linear``
:math:`\partial f_k/\partial W_{oi} = \sum_t (\partial f_k/\partial z_{to})\, a_{ti}`.
Only the :math:`S` selected entries are ever formed: memory ``O(b c S)`` plus the
activations, never ``O(b c D)``.

Fast modules (exact ``forward`` of): ``nn.Linear``; ``nn.Conv2d`` with
``groups=1``, ``padding_mode='zeros'`` and numeric padding; ``nn.BatchNorm1d/2d/3d`` in eval mode
with running statistics; ``nn.LayerNorm``; ``nn.Embedding`` (no ``max_norm``).
All other touched tensors take the generic path of :mod:`.functional`.
The fast path assumes, as BackPACK does, that samples do not interact in the
forward pass (true in eval mode for the modules above).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laplace_subnet_ext.jacobians.layout import TensorSelection

__all__ = ["is_fast", "FastCapture", "prepare_input", "selected_entries"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    return isinstance(module, cls) and type(module).forward is cls.forward


def is_fast(module: nn.Module) -> bool:
    """Whether the selected entries of ``module``'s parameters take the fast path."""
    if _plain(module, nn.Linear) or _plain(module, nn.LayerNorm):
        return True
    if _plain(module, nn.Conv2d):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)  # 'same'/'valid': generic path
        )
    if any(_plain(module, cls) for cls in _BATCHNORMS):
        return (not module.training) and module.running_mean is not None
    if _plain(module, nn.Embedding):
        return module.max_norm is None
    return False


class FastCapture:
    """Forward hooks that record ``(input, output)`` of fast modules.

    Use as a context manager around the forward pass; ``records[module]`` then
    holds one ``(a, z)`` pair per call (weight sharing sums over calls).
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.records: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {
            m: [] for m in modules
        }
        self._handles: list = []

    def __enter__(self) -> FastCapture:
        for m in self.modules:
            self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(
        self, module: nn.Module, inputs: tuple, output: torch.Tensor
    ) -> torch.Tensor:
        # keep the module output untouched by later in-place ops (ReLU(inplace=True))
        self.records[module].append((inputs[0].detach(), output))
        return output.clone()

    def outputs(self) -> list[torch.Tensor]:
        return [z for recs in self.records.values() for _, z in recs]


#: elements of one (b, chunk, t) product; bounds the fast path's scratch memory
CHUNK_ELEMENTS = 2**24


def prepare_input(sel: TensorSelection, a: torch.Tensor) -> torch.Tensor | None:
    """The input-side factor of the selected entries, formed once per forward pass.

    Returns ``(b, s, t)`` (the activation, unfolded patch, normalised input or
    token hits that multiply each selected entry's output gradient) or None for
    biases.
    """
    m, attr, local = sel.module, sel.attr, sel.local
    b = a.shape[0]
    if attr == "bias":
        return None
    if isinstance(m, nn.Linear):
        a_ = a.reshape(b, -1, m.in_features)  # (b, t, i)
        return a_[:, :, local % m.in_features].transpose(1, 2)
    if isinstance(m, nn.Conv2d):
        unf = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (b, i, t)
        return unf[:, local % unf.shape[1], :]
    if isinstance(m, _BATCHNORMS):
        shape = [1, -1] + [1] * (a.ndim - 2)
        xhat = (a - m.running_mean.reshape(shape)) / torch.sqrt(
            m.running_var.reshape(shape) + m.eps
        )
        xhat = xhat.flatten(2) if xhat.ndim > 2 else xhat.unsqueeze(-1)  # (b, ch, t)
        return xhat[:, local, :]
    if isinstance(m, nn.LayerNorm):
        n_norm = len(m.normalized_shape)
        xhat = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
        xhat = xhat.reshape(b, -1, *xhat.shape[xhat.ndim - n_norm :]).flatten(2)
        return xhat[:, :, local].transpose(1, 2)
    if isinstance(m, nn.Embedding):
        tokens = a.reshape(b, -1)  # (b, t)
        row = local // m.embedding_dim
        hit = (tokens[:, None, :] == row[None, :, None]).to(sel.param.dtype)
        if m.padding_idx is not None:
            hit = hit * (row != m.padding_idx).to(hit.dtype)[None, :, None]
        return hit  # (b, s, t)
    raise TypeError(f"module {type(m).__name__} has no fast Jacobian path")


def output_gradient(sel: TensorSelection, dz: torch.Tensor) -> torch.Tensor:
    """``(b, s, t)`` gradient of the module output at each selected entry's unit."""
    m, attr, local = sel.module, sel.attr, sel.local
    b = dz.shape[0]
    if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Embedding)):
        width = (
            m.out_features
            if isinstance(m, nn.Linear)
            else m.embedding_dim
            if isinstance(m, nn.Embedding)
            else None
        )
        if width is None:  # LayerNorm: trailing normalized dims
            n_norm = len(m.normalized_shape)
            dz_ = dz.reshape(b, -1, *dz.shape[dz.ndim - n_norm :]).flatten(2)
        else:
            dz_ = dz.reshape(b, -1, width)  # (b, t, o)
        if isinstance(m, nn.Linear) and attr == "weight":
            unit = local // m.in_features
        elif isinstance(m, nn.Embedding):
            unit = local % m.embedding_dim
        else:
            unit = local
        return dz_[:, :, unit].transpose(1, 2)
    dz_ = dz.flatten(2) if dz.ndim > 2 else dz.unsqueeze(-1)  # (b, ch, t)
    if isinstance(m, nn.Conv2d) and attr == "weight":
        return dz_[:, local // (sel.param[0].numel()), :]
    return dz_[:, local, :]


def selected_entries(
    sel: TensorSelection, prepared: torch.Tensor | None, dz: torch.Tensor
) -> torch.Tensor:
    """Per-sample derivative of one output w.r.t. the selected entries of ``sel``.

    Parameters
    ----------
    sel : TensorSelection
    prepared : torch.Tensor or None
        :func:`prepare_input` of the module input of this forward pass.
    dz : torch.Tensor
        Per-sample gradient of the output :math:`f_k` w.r.t. the module output.

    Returns
    -------
    J : torch.Tensor
        ``(b, s)``: :math:`\sum_t` (output gradient) x (input factor), formed in
        chunks of at most :data:`CHUNK_ELEMENTS` scratch elements.
    """
    g = output_gradient(sel, dz)  # (b, s, t)
    if prepared is None:
        return g.sum(-1)
    b, n, t = g.shape
    step = max(1, CHUNK_ELEMENTS // max(1, b * t))
    return torch.cat(
        [
            (g[:, i : i + step] * prepared[:, i : i + step]).sum(-1)
            for i in range(0, n, step)
        ],
        dim=1,
    )
