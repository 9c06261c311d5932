r"""Validation and normalisation of subnetwork indices.

The subnetwork is a set of :math:`S` positions in the vector
``parameters_to_vector(p for p in model.parameters() if p.requires_grad)`` of
length :math:`D`. Users may give it as integer indices (any integer dtype, any
device, tensor / NumPy array / sequence) or as a boolean mask of length ``D``.
The order of integer indices is kept: it is the order of rows and columns of
the subnetwork Hessian, as in laplace-torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["normalize_subnetwork_indices"]

_INT_DTYPES = {
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
}


def normalize_subnetwork_indices(
    indices: torch.Tensor | np.ndarray | Sequence[int] | None,
    n_params: int,
    *,
    device: torch.device | str | None = None,
    argument: str = "subnetwork_indices",
) -> torch.Tensor:
    """Return ``indices`` as a 1-D ``torch.long`` tensor on ``device``.

    Parameters
    ----------
    indices : torch.Tensor, numpy.ndarray or sequence of int
        Integer indices into the parameter vector (any integer dtype, any
        device), or a boolean mask of length ``n_params``.
    n_params : int
        :math:`D`, the number of parameters that require gradients.
    device : torch.device, optional
        Device of the returned tensor (default: that of ``indices``).
    argument : str
        Name used in error messages.

    Returns
    -------
    indices : torch.Tensor
        ``(s,)`` long tensor, order preserved.

    Raises
    ------
    TypeError
        If ``indices`` is not a tensor, array or sequence of integers.
    ValueError
        If ``indices`` is None, empty, not 1-D, of floating dtype, has a wrong
        mask length, duplicates, or entries outside ``[0, n_params)``.
    """
    if indices is None:
        raise ValueError(
            f"{argument} must be a 1-D tensor of integer indices or a boolean mask "
            f"of length {n_params}; got None. Pass the selected indices, or use "
            "subnetwork_mask=... to select them inside fit()."
        )
    if isinstance(indices, np.ndarray) or (
        isinstance(indices, Sequence) and not isinstance(indices, (str, bytes))
    ):
        arr = np.asarray(indices)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        indices = torch.from_numpy(arr)
    if not isinstance(indices, torch.Tensor):
        raise TypeError(
            f"{argument} must be a torch.Tensor, numpy array or sequence of int; "
            f"got {type(indices).__name__}. Convert it with torch.as_tensor(...)."
        )
    if indices.ndim != 1:
        raise ValueError(
            f"{argument} must be 1-dimensional; got shape {tuple(indices.shape)}. "
            "Flatten it or pass a mask of length D."
        )
    if indices.numel() == 0:
        raise ValueError(
            f"{argument} must select at least one parameter; got an empty tensor."
        )
    if indices.dtype == torch.bool:
        if indices.numel() != n_params:
            raise ValueError(
                f"{argument} given as a boolean mask must have length D={n_params}; "
                f"got length {indices.numel()}. Build it over "
                "parameters_to_vector(p for p in model.parameters() if p.requires_grad)."
            )
        out = indices.nonzero(as_tuple=True)[0]
        if out.numel() == 0:
            raise ValueError(f"{argument} mask selects no parameter (all False).")
    elif indices.dtype in _INT_DTYPES:
        out = indices.to(torch.long)
        lo, hi = int(out.min()), int(out.max())
        if lo < 0 or hi >= n_params:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{argument} must lie in [0, D) with D={n_params}; got entry {bad}. "
                "Indices refer to the vector of parameters that require gradients."
            )
        if out.unique().numel() != out.numel():
            uniq, counts = out.unique(return_counts=True)
            dup = uniq[counts > 1][:5].tolist()
            raise ValueError(
                f"{argument} must not contain duplicates; got repeated entries {dup}. "
                "Use indices.unique()."
            )
    else:
        raise ValueError(
            f"{argument} must have an integer or bool dtype; got {indices.dtype}. "
            "Cast with .long() if the values are whole numbers."
        )
    return out.to(device) if device is not None else out
