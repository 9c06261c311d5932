r"""`CurvatureAccumulator`: the only writer of the S x S curvature while ``fit`` runs.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s`` subnetwork parameters.

Everything ``fit`` does to :math:`H = \sum_b J_b^\top \Lambda_b J_b`: the batch
updates (one ``addmm_`` of square-root rows, :func:`.curvature.add_batch_curvature`;
above :data:`.curvature.GRAM_BLOCK` columns only the blocks on and above the
block diagonal, about half the flops), the mirror of the upper blocks once all
batches are in (also when a batch fails, so H stays symmetric), the all-reduce
across a ``torch.distributed`` process group, and the square-root rows
:math:`R` (:math:`R^\top R = H`) kept for the data-space spectrum when H has
rank at most :math:`S / 8` (:data:`.memory.DATA_SPECTRUM_RANK_DIVISOR`). When
it finishes, H is handed to a new :class:`.precision.DensePrecision`, which
never writes it.
"""

from __future__ import annotations

import torch

from laplace_subnet_ext.numerics import curvature as _curvature
from laplace_subnet_ext.numerics.curvature import (
    add_batch_curvature,
    mirror_upper,
    rows_per_sample,
)
from laplace_subnet_ext.numerics.memory import DATA_SPECTRUM_RANK_DIVISOR

__all__ = ["CurvatureAccumulator"]


class CurvatureAccumulator:
    """Sum a fit's batches into H (see the module docstring).

    Parameters
    ----------
    H : torch.Tensor
        ``(s, t)`` the curvature to add into (zeros for a new fit), owned from
        now until :meth:`finish`.
    n_inputs : int
        ``len(train_loader.dataset)``: sizes the square-root row buffer.
    keep_rows : bool
        Keep the square-root rows when they number at most S / 8.
    """

    __slots__ = ("_H", "_upper", "_rows", "_rows_used", "_keep_rows", "_n_inputs")

    def __init__(self, H: torch.Tensor, n_inputs: int, keep_rows: bool) -> None:
        self._H = H
        self._upper = H.shape[0] > _curvature.GRAM_BLOCK
        self._rows: torch.Tensor | None = None
        self._rows_used = 0
        self._keep_rows = bool(keep_rows) and n_inputs > 0
        self._n_inputs = int(n_inputs)

    def add(self, curv, Js: torch.Tensor, f: torch.Tensor, y: torch.Tensor):
        r"""Add one batch's :math:`\sum_b J_b^\top \Lambda_b J_b` (or EF); return its
        loss. ``FloatingPointError`` (nothing added) for a non-finite batch."""
        rows = None
        if self._keep_rows:
            rows = self._row_buffer(Js.shape[0], rows_per_sample(curv, f.shape[-1]))
        return add_batch_curvature(curv, Js, f, y, self._H, rows, upper=self._upper)

    def _row_buffer(self, n_inputs: int, k: int) -> torch.Tensor | None:
        """The buffer's next rows for ``n_inputs`` inputs of ``k`` rows each,
        allocated at the first batch for all inputs when they number at most
        S / 8 rows; None (collection stops) if not."""
        S, n_rows = self._H.shape[0], n_inputs * k
        if self._rows is None:
            total = self._n_inputs * k
            if total * DATA_SPECTRUM_RANK_DIVISOR > S:
                self._keep_rows = False
                return None
            self._rows = torch.empty(
                total, S, dtype=self._H.dtype, device=self._H.device
            )
        start = self._rows_used
        if start + n_rows > self._rows.shape[0]:  # more inputs than len(dataset)
            self._keep_rows, self._rows = False, None
            return None
        self._rows_used += n_rows
        return self._rows[start : start + n_rows]

    def _mirror(self) -> None:
        if self._upper:
            mirror_upper(self._H)
            self._upper = False

    def abort(self) -> None:
        """A batch failed: restore symmetry, free the rows."""
        self._mirror()
        self._rows, self._keep_rows = None, False

    def finish(
        self, distributed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(H, rows)``: the symmetric (all-reduced) curvature, and its square-root
        rows if they were kept (else None); the accumulator lets go of both."""
        self._mirror()
        if distributed:
            torch.distributed.all_reduce(self._H)
        rows = None
        if self._keep_rows and self._rows is not None and self._rows_used > 0:
            rows = self._rows[: self._rows_used]
        H, self._H, self._rows = self._H, None, None
        return H, rows
