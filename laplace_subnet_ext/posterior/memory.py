r"""Memory estimates for the dense subnetwork posterior, checked before allocating.

Two allocations matter: the curvature :math:`H` (one :math:`S \times S` matrix,
made by ``fit``) and its factorisation (eigendecomposition or Cholesky, made on
first use of the posterior). Measured on CPU (float32, S = 6,000),
``torch.linalg.eigh`` peaks at about 4.8 extra :math:`S \times S` matrices (input
copy, eigenvectors, LAPACK workspace), so :data:`FACTOR_MATRICES` = 5.
:func:`largest_subnet` inverts the estimate so errors can name the largest S
that fits.
"""

from __future__ import annotations

import math
import os
import re

import torch

__all__ = [
    "CURVATURE_MATRICES",
    "FACTOR_MATRICES",
    "parse_bytes",
    "available_bytes",
    "dense_posterior_bytes",
    "largest_subnet",
    "check_dense_fits",
]

#: S x S matrices held by the curvature itself
CURVATURE_MATRICES = 1
#: extra S x S matrices at the peak of the factorisation (measured, see above)
FACTOR_MATRICES = 5

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(value: int | float | str, argument: str = "memory_budget") -> int:
    """``4e9``, ``"4GB"``, ``"512 MiB"`` -> bytes."""
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be a number of bytes or a string; got bool.")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{argument} must be positive; got {value}.")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).upper() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
        raise ValueError(
            f"{argument} must look like '4GB', '512MiB' or a number of bytes; "
            f"got {value!r}."
        )
    raise TypeError(
        f"{argument} must be a number of bytes or a string like '4GB'; "
        f"got {type(value).__name__}."
    )


def available_bytes(device: torch.device | str) -> int:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def dense_posterior_bytes(
    n_subnet: int, itemsize: int, matrices: int = CURVATURE_MATRICES + FACTOR_MATRICES
) -> int:
    """Bytes of ``matrices`` S x S matrices (default: curvature + factorisation)."""
    return matrices * n_subnet * n_subnet * itemsize


def largest_subnet(
    budget: int, itemsize: int, matrices: int = CURVATURE_MATRICES + FACTOR_MATRICES
) -> int:
    """Largest ``S`` with ``dense_posterior_bytes(S, itemsize, matrices) <= budget``."""
    return int(math.isqrt(max(0, budget // (matrices * itemsize))))


def check_dense_fits(
    n_subnet: int,
    itemsize: int,
    device: torch.device | str,
    budget: int | None = None,
    *,
    matrices: int = CURVATURE_MATRICES,
    purpose: str = "the curvature",
) -> None:
    """Raise ``ValueError`` naming the largest S that fits, before allocating.

    With ``budget`` (the user's ``memory_budget``), ``matrices`` is compared with
    it; otherwise with the memory free on ``device`` now.
    """
    limit = budget if budget is not None else available_bytes(device)
    need = dense_posterior_bytes(n_subnet, itemsize, matrices)
    if need > limit:
        raise ValueError(
            f"n_params_subnet={n_subnet} needs about {need / 1e9:.2f} GB for "
            f"{purpose} ({matrices} matrices of {n_subnet}x{n_subnet}, {itemsize} "
            f"bytes each), but {limit / 1e9:.2f} GB "
            f"{'is the memory_budget' if budget is not None else 'is free'} on "
            f"{device}. The largest subnetwork that fits is S="
            f"{largest_subnet(limit, itemsize, matrices)}; select fewer weights, use "
            "float32 curvature, or raise memory_budget."
        )
