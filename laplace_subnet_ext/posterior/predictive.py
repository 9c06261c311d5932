r"""Blocked GLM predictive: Jacobians of bounded size, one block of inputs at a time.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s`` subnetwork parameters.
"""

from __future__ import annotations

import torch
import tqdm

from laplace_subnet_ext.jacobians.batching import batch_size, slice_batch, to_device

__all__ = ["BlockedPredictiveMixin"]


class BlockedPredictiveMixin:
    """GLM predictive whose Jacobian blocks stay below ``predictive_block_bytes``."""

    def __call__(self, x, pred_type="glm", *args, progress_bar: bool = False, **kw):
        """laplace's predictive; ``progress_bar=True`` shows predictive blocks.

        Raises :class:`~laplace_subnet_ext.NotFittedError` before :meth:`fit`
        (a subnetwork given by indices alone is not a fitted posterior)."""
        self._check_H_init()
        self._predict_pbar = progress_bar
        try:
            return super().__call__(x, pred_type, *args, **kw)
        finally:
            self._predict_pbar = False

    def _glm_predictive_distribution(
        self, X, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_selected()
        self._check_H_init()
        if self.enable_backprop:  # differentiable route: laplace's backend Jacobians
            return super()._glm_predictive_distribution(X, joint, diagonal_output)
        X = to_device(X, self._device)
        n = batch_size(X, self.dict_key_x)
        itemsize = torch.empty((), dtype=self._cdtype).element_size()
        per_row = max(1, self.n_outputs) * self.n_params_subnet * itemsize * 2
        block = max(1, min(n, self.predictive_block_bytes // per_row))
        starts = range(0, n, block)
        pbar = tqdm.tqdm(starts, disable=not getattr(self, "_predict_pbar", False))
        pbar.set_description("[GLM predictive]")
        f_mus, f_vars, Jss = [], [], []
        for start in pbar:
            Js, f = self._jacobians(slice_batch(X, start, min(start + block, n), n))
            f_mus.append(f)
            if joint:
                Jss.append(Js)
            else:
                fv = self.functional_variance(Js)
                f_vars.append(fv.diagonal(dim1=-2, dim2=-1) if diagonal_output else fv)
        f_mu = torch.cat(f_mus)
        if joint:
            out = f_mu.flatten(), self.functional_covariance(torch.cat(Jss))
        else:
            out = f_mu, torch.cat(f_vars)
        if not (torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()):
            raise FloatingPointError(
                "the GLM predictive is not finite (prior precision "
                f"{self.prior_precision.flatten()[:3].tolist()}, curvature "
                f"{self.H.dtype}, S={self.n_params_subnet}); check the inputs, or "
                "pass curvature_dtype=torch.float64 / a larger prior precision."
            )
        return out
