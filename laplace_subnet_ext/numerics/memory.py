r"""The memory plan of the dense posterior, checked before allocating.

The plan: at most **two** :math:`S \times S` matrices of the curvature dtype at any
time, plus :math:`O(b c S)` for Jacobian blocks:

* ``fit`` adds each batch's :math:`J^\top \Lambda J` into :math:`H` in place
  (``addmm_``): one matrix.
* the posterior keeps one more buffer beside :math:`H`: :math:`P = hH + P_0` is
  written into it and factorised in place (``potrf``); the covariance
  (``potri``) and its square root (``potrf`` again) are computed in place of the
  factor; the GLM predictive and samples use triangular solves with it.
* the scalar-prior marginal likelihood uses ``eigvalsh`` (a copy of :math:`H`:
  one extra) on the exact path, and stochastic Lanczos quadrature (block
  products, :math:`O(S m k)`) on the large-S path.

Measured on CPU (float32, S = 6,000, peak RSS above the process, in S x S
matrices): ``potrf`` / ``potri`` in place on a column-major view 0.02 / 0.00,
``cholesky`` out of place 1.02, ``eigvalsh`` 1.05, ``eigh`` 3.04, ``addmm_`` 0.00.
Only :meth:`eigendecompose` (an opt-in speed-up for prior sweeps, used
automatically by grid search where it fits) and the fallback for a numerically
non-PD precision need more (:data:`EIGH_MATRICES`); both are checked first.
:func:`largest_subnet` inverts the plan so errors name the largest S that runs.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import torch

__all__ = [
    "CURVATURE_MATRICES",
    "FACTOR_MATRICES",
    "EIGVALSH_MATRICES",
    "EIGH_MATRICES",
    "parse_bytes",
    "available_bytes",
    "dense_posterior_bytes",
    "largest_subnet",
    "check_dense_fits",
    "check_subnet_plan",
    "FLOAT64_CURVATURE_MAX_S",
    "DATA_SPECTRUM_RANK_DIVISOR",
    "default_curvature_dtype",
    "explain_curvature_dtype",
]

#: ``fit`` keeps H's square-root rows R (``(r, S)``, :math:`H = R^\top R`) for the
#: data-space spectrum only while ``r * DATA_SPECTRUM_RANK_DIVISOR <= S``: at most
#: 0.125 S x S beside H during fit (within the two-matrix plan), freed when fit ends.
DATA_SPECTRUM_RANK_DIVISOR = 8

#: The largest S of the small-S plan; above it the large-S plan: float32 curvature
#: and the large-S (SLQ) marginal likelihood, each by default
LARGE_S = 10_000
#: Curvature dtype of a float32 / half-precision model when ``curvature_dtype`` is
#: None: float64 up to this S (round-off in a float32 H + small prior is not
#: positive definite, docs "float32, bfloat16 and float16"; the plan's two float64
#: matrices take 1.6 GB at this S), float32 above it (the large-S plan).
FLOAT64_CURVATURE_MAX_S = LARGE_S

#: S x S matrices held by the curvature itself
CURVATURE_MATRICES = 1
#: the one buffer beside H: Cholesky factor, covariance or its square root
FACTOR_MATRICES = 1
#: extra S x S matrices of ``eigvalsh`` (a copy of H; measured 1.05)
EIGVALSH_MATRICES = 1
#: extra S x S matrices of ``eigh`` (copy, eigenvectors, workspace; measured 3.04)
EIGH_MATRICES = 3

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
    held: int | None = None,
    given: str | None = None,
) -> None:
    """Raise ``ValueError`` naming the largest S that fits, before allocating.

    ``given`` names what the user passed (default ``"n_params_subnet=S"``), so
    the message speaks of their argument (e.g. ``"subnetwork_indices (S=...)"``).

    With ``budget`` (the user's ``memory_budget``), all ``matrices`` are compared
    with it; otherwise the ones not yet allocated (``matrices - held``; ``held``
    defaults to the curvature when ``matrices`` includes more) with the memory
    free on ``device`` now.
    """
    if held is None:
        held = CURVATURE_MATRICES if matrices > CURVATURE_MATRICES else 0
    limit = budget if budget is not None else available_bytes(device)
    need = dense_posterior_bytes(
        n_subnet, itemsize, matrices if budget is not None else matrices - held
    )
    if need > limit:
        total = limit
        if budget is None:  # what is free now plus what is already held
            total += dense_posterior_bytes(n_subnet, itemsize, held)
        given = given or f"n_params_subnet={n_subnet}"
        raise ValueError(
            f"{given} needs about {need / 1e9:.2f} GB for "
            f"{purpose} ({matrices} matrices of {n_subnet}x{n_subnet}, {itemsize} "
            f"bytes each), but {limit / 1e9:.2f} GB "
            f"{'is the memory_budget' if budget is not None else 'is free'} on "
            f"{device}. The largest subnetwork that fits is S="
            f"{largest_subnet(total, itemsize, matrices)}; select fewer weights"
            f"{', pass curvature_dtype=torch.float32' if itemsize > 4 else ''}, "
            "or raise memory_budget."
        )


def default_curvature_dtype(
    model_dtype: torch.dtype, n_subnet: int | None
) -> torch.dtype:
    """The curvature dtype for ``curvature_dtype=None``: float64 for a float64
    model or while ``n_subnet <= FLOAT64_CURVATURE_MAX_S``, float32 above
    (torch.linalg has no half-precision solvers)."""
    if model_dtype == torch.float64 or (
        n_subnet is not None and n_subnet <= FLOAT64_CURVATURE_MAX_S
    ):
        return torch.float64
    return torch.float32


def explain_curvature_dtype(model_dtype: torch.dtype, n_subnet: int) -> str:
    """The log line of :func:`default_curvature_dtype`'s choice and its rule."""
    dtype = default_curvature_dtype(model_dtype, n_subnet)
    rule = "<=" if dtype == torch.float64 else ">"
    return (
        f"curvature_dtype=None: S={n_subnet} {rule} {FLOAT64_CURVATURE_MAX_S}, the "
        f"{str(model_dtype).removeprefix('torch.')} model's curvature is stored and "
        f"factorised in {str(dtype).removeprefix('torch.')} (pass curvature_dtype "
        "to choose)"
    )


def check_subnet_plan(
    n_subnet: int,
    itemsize: int,
    device: torch.device | str,
    budget: int | None,
    given: str | None = None,
) -> None:
    """When a subnetwork is set: raise if the curvature does not fit, warn if the
    whole plan (curvature + factor) does not, naming the largest S that does.
    ``given`` as in :func:`check_dense_fits`; the warning points at the caller of
    the caller's caller (the user's call of the posterior)."""
    given = given or f"n_params_subnet={n_subnet}"
    check_dense_fits(n_subnet, itemsize, device, budget, given=given)
    total = dense_posterior_bytes(n_subnet, itemsize)
    limit = budget or available_bytes(device)
    if total > limit:
        warnings.warn(
            f"{given}: the curvature fits, but factorising the "
            f"dense posterior needs about {total / 1e9:.2f} GB in all (> "
            f"{limit / 1e9:.2f} GB); fit() works, the posterior will raise. "
            f"S={largest_subnet(limit, itemsize)} fits entirely.",
            stacklevel=4,
        )
