r"""`DensePrecision`: the dense posterior precision :math:`P = hH + P_0` and its state.

Index conventions: ``b`` batch, ``c``/``k`` outputs, ``s``/``t`` subnetwork
parameters.

One object owns everything derived from the S x S curvature :math:`H`: the one
factor buffer beside it, the eigendecomposition, the eigenvalues and the
stochastic Lanczos quadrature of :math:`H`. Every cache is keyed on what it was
computed from (H's identity and version; for the factor also :math:`h` and the
prior diagonal), so a curvature changed in place, a new prior or a new noise can
never be answered from a stale cache; :meth:`DensePrecision.invalidate` frees them
all at once. Tensors handed out are fresh unless the caller asks for the buffer
(``copy=False``).

The buffer (:class:`_Factor`): :math:`P` is written into a column-major S x S
matrix and factorised there (``potrf``); the covariance (``potri``) and its square
root (``potrf``) are computed in place of it. LAPACK works on the column-major
view without a copy (measured: 0.02 / 0.00 extra S x S matrices), so the
posterior never holds more than H and this buffer (:mod:`.memory`). With a
scalar prior and a cached eigendecomposition the buffer holds the eigen square
root :math:`V(hg + \lambda)^{-1/2}` instead (O(S^2) per prior value).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum

import torch

from laplace_subnet_ext._compat import tensor_version
from laplace_subnet_ext.numerics import linalg
from laplace_subnet_ext.numerics.evidence import log_det_ratio
from laplace_subnet_ext.numerics.memory import (
    CURVATURE_MATRICES,
    EIGH_MATRICES,
    EIGVALSH_MATRICES,
    FACTOR_MATRICES,
    check_dense_fits,
)
from laplace_subnet_ext.numerics.slq import lanczos_quadrature

__all__ = ["DensePrecision", "FactorKind", "FactorSource"]


def _info() -> torch.Tensor:
    return torch.empty((), dtype=torch.int32)


def _number(x: torch.Tensor | float) -> float:
    """A float of a (possibly grad-tracking) scalar."""
    return float(x.detach()) if torch.is_tensor(x) else float(x)


class FactorKind(str, Enum):
    """What the factor buffer beside H holds."""

    #: lower Cholesky factor :math:`L` of the precision, :math:`P = LL^\top`
    PREC_CHOL = "prec_chol"
    #: the covariance :math:`\Sigma = P^{-1}`
    COV = "cov"
    #: a square root :math:`C` of the covariance, :math:`CC^\top = \Sigma`
    COV_SQRT = "cov_sqrt"


class FactorSource(str, Enum):
    """How the factor buffer was computed."""

    #: in place from :math:`P` (converts between kinds)
    CHOLESKY = "cholesky"
    #: the scalar-prior eigen square root :math:`V(hg + \lambda)^{-1/2}`
    EIGEN = "eigen"
    #: the fallback for a numerically non-PD precision (eigenvalues floored)
    FLOORED = "floored"


@dataclass
class _Factor:
    r"""The S x S buffer beside H: what it holds and for which H / h / prior.

    ``kind``: ``"prec_chol"`` (lower :math:`L`, :math:`P = LL^\top`), ``"cov"``
    (:math:`\Sigma`) or ``"cov_sqrt"`` (:math:`C`, :math:`CC^\top = \Sigma`).
    ``source``: ``"cholesky"`` (in place; converts between kinds), ``"eigen"``
    (the scalar-prior eigen square root) or ``"floored"`` (the fallback for a
    numerically non-PD precision); the last two hold a non-triangular ``cov_sqrt``.
    """

    kind: str
    buf: torch.Tensor
    key: tuple
    source: FactorSource = FactorSource.CHOLESKY


class _CholeskyLogDet(torch.autograd.Function):
    r""":math:`\log\det(hH + \operatorname{diag}(p))` from the in-place factor.

    Backward needs :math:`\operatorname{diag}(\Sigma)`: the factor is inverted in
    place (``potri``), so forward + backward hold H and one buffer only:
    :math:`\partial/\partial p_i = \Sigma_{ii}`,
    :math:`\partial/\partial h = (S - \sum_i \Sigma_{ii} p_i)/h`.
    """

    @staticmethod
    def forward(ctx, prior_diag, h, owner):  # noqa: D102
        f = owner._current()
        ctx.owner, ctx.key = owner, f.key
        ctx.save_for_backward(prior_diag, torch.as_tensor(h))
        if (
            f.source != FactorSource.CHOLESKY
        ):  # C = V e^{-1/2}: log det P = -2 log|det C|
            return -2 * torch.linalg.slogdet(f.buf.double())[1]
        del f  # (a reference here would keep the old buffer alive while refactoring)
        L = owner._convert(FactorKind.PREC_CHOL)
        return 2 * L.diagonal().log().sum(dtype=torch.float64)  # float64 on purpose

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        prior_diag, h = ctx.saved_tensors
        owner = ctx.owner
        if owner._key() != ctx.key:
            # the prior, noise or H changed since the forward pass: the gradient
            # is of the forward's P, never of the current one
            raise RuntimeError(
                "the posterior's prior, noise or curvature changed between the "
                "forward and the backward pass of its log determinant; call "
                "backward() before changing them."
            )
        d = owner._convert(FactorKind.COV).diagonal().to(prior_diag.dtype)
        S = d.numel()
        grad = grad.to(prior_diag.dtype)
        g_prior = grad * d
        g_h = grad * (S - (d * prior_diag).sum()) / h
        return g_prior, g_h.to(h.dtype), None


#: bytes of one float64 block of columns when the data-space Gram matrix R R^T is
#: accumulated (32 MiB)
GRAM_BLOCK_BYTES = 2**25


class DensePrecision:
    r"""The posterior precision :math:`P = hH + \operatorname{diag}(p)` of S weights.

    The prior and the curvature factor :math:`h = 1/(\sigma^2 T)` are set by
    :meth:`set_prior`; a change frees the factor (not the spectra of H).

    Parameters
    ----------
    H : torch.Tensor
        ``(s, t)`` symmetric PSD curvature, float32 or float64. Owned, not copied:
        the caller may add into it in place (``fit``); caches notice through the
        tensor's version counter.
    memory_budget : int, optional
        Bytes allowed for H and the matrices beside it; default: free memory.
    """

    def __init__(self, H: torch.Tensor, memory_budget: int | None = None) -> None:
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"H must be a square matrix; got shape {tuple(H.shape)}.")
        if H.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"H must be float32 or float64; got {H.dtype}.")
        self.H = H
        self.memory_budget = memory_budget
        self.h: torch.Tensor | float = 1.0
        self.prior_diag: torch.Tensor | None = None
        self.scalar_prior: torch.Tensor | None = None
        self._prior_key: tuple | None = None
        self._prior_version = 0
        self.invalidate()

    # ------------------------------------------------------------------- state
    @property
    def n(self) -> int:
        """S, the number of weights."""
        return self.H.shape[0]

    def invalidate(self) -> None:
        """Free the factor and every cached spectrum (H replaced or edited)."""
        self._factor: _Factor | None = None
        self._eig: tuple | None = None
        self._eigvals: tuple | None = None
        self._slq: tuple | None = None
        self._data: tuple | None = None  # (H key, float64 Gram eigenvalues)

    def invalidate_factor(self) -> None:
        """Free the factor buffer only (the spectra of H stay valid)."""
        self._factor = None

    def _H_key(self) -> tuple[int, int]:
        return (id(self.H), tensor_version(self.H))

    def set_prior(
        self,
        h: torch.Tensor | float,
        prior_diag: torch.Tensor,
        scalar: torch.Tensor | None = None,
    ) -> None:
        r"""Set :math:`h` and the prior diagonal ``(s,)`` (``scalar``: the one
        :math:`\lambda` of a scalar prior, which opens the eigen paths).

        Tensors are kept as given (the log determinant is differentiable in
        them); the factor is freed when their values change.
        """
        if prior_diag.shape != (self.n,):
            raise ValueError(
                f"prior_diag must have shape ({self.n},); got {tuple(prior_diag.shape)}."
            )
        key = (
            _number(h),
            None if scalar is None else _number(scalar),
            prior_diag.detach().to(self.H.dtype, copy=True),
        )
        old = self._prior_key
        same = (
            old is not None
            and old[:2] == key[:2]
            and (scalar is not None or torch.equal(old[2], key[2]))
        )
        self.h, self.prior_diag, self.scalar_prior = h, prior_diag, scalar
        if not same:
            self._prior_key = key
            self._prior_version += 1
            self._factor = None

    def _key(self) -> tuple:
        """What the factor depends on: H (identity, version), h and the prior."""
        if self.prior_diag is None:
            raise RuntimeError("DensePrecision.set_prior(...) was not called.")
        return (*self._H_key(), self._prior_version)

    # ------------------------------------------------------------- memory plan
    def check_fits(self, extra: int, what: str) -> None:
        """Refuse (``ValueError`` naming the largest S) unless H and ``extra`` more
        S x S matrices fit the budget or the free memory."""
        check_dense_fits(
            self.n,
            self.H.element_size(),
            self.H.device,
            self.memory_budget,
            matrices=CURVATURE_MATRICES + extra,
            purpose=f"the curvature and {what}",
        )

    # ---------------------------------------------------------- spectra of H
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`H = V\operatorname{diag}(g)V^\top`: ``(g, V)``, ``g >= 0``, computed
        once per H and cached; copies are handed out (V: one more S x S matrix,
        checked against the memory plan)."""
        g, V = self._eigh()
        self.check_fits(EIGH_MATRICES, "a copy of its eigenvectors")
        return g.clone(), V.clone()

    def cache_eigh(self) -> None:
        """Compute and cache the eigendecomposition (nothing handed out)."""
        self._eigh()

    def project(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b, c, s)`` Jacobians in H's eigenbasis, :math:`J V` (cached ``eigh``)."""
        _, V = self._eigh()
        return Js.to(V.dtype) @ V

    def variance_along(self, JV: torch.Tensor, priors) -> torch.Tensor:
        r"""``(m, b, c, k)`` :math:`J\Sigma J^\top` at each scalar prior of
        ``priors`` from projected Jacobians :math:`JV` (:meth:`project`): O(b c S)
        per value, no factorisation; the same formula as
        :meth:`functional_variance` on the eigen path."""
        g, _ = self._eigh()
        return torch.stack(
            [
                linalg.eig_functional_variance(
                    JV, g, self.h, torch.as_tensor(lam, dtype=g.dtype, device=g.device)
                )
                for lam in priors
            ]
        )

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached eigendecomposition itself (not handed out)."""
        if self._eig is None or self._eig[0] != self._H_key():
            self.check_fits(EIGH_MATRICES, "its eigendecomposition")
            self._eig = (self._H_key(), *linalg.psd_eigh(self.H.detach()))
        return self._eig[1], self._eig[2]

    @property
    def has_eigh(self) -> bool:
        """Whether the eigendecomposition of the current H is cached."""
        return self._eig is not None and self._eig[0] == self._H_key()

    def eigvalsh(self) -> torch.Tensor:
        """``(s,)`` eigenvalues of H clipped at 0 (a copy of the cache; from
        :meth:`eigh` if cached; ``eigvalsh`` costs about a quarter of a full
        ``eigh``)."""
        return self._eigvalsh().clone()

    def _eigvalsh(self) -> torch.Tensor:
        if self.has_eigh:
            return self._eig[1]
        if self._eigvals is None or self._eigvals[0] != self._H_key():
            self.check_fits(EIGVALSH_MATRICES, "its eigenvalues")
            self._eigvals = (self._H_key(), linalg.psd_eigvalsh(self.H.detach()))
        return self._eigvals[1]

    def set_data_spectrum(self, rows: torch.Tensor) -> None:
        r"""Eigenvalues of the current H from its square-root rows :math:`R`.

        ``rows`` ``(r, s)`` with :math:`R^\top R = H` (up to the round-off of
        H's own sum) and :math:`r < s`: H has rank at most :math:`r`, and its
        nonzero eigenvalues are those of the ``(r, r)`` Gram matrix
        :math:`RR^\top`, formed in float64 by column blocks
        (:math:`O(r^2 s + r^3)`, against :math:`O(s^3)` for ``eigvalsh`` of H).
        The ``(s,)`` spectrum (``s - r`` zeros, then the Gram's eigenvalues) is
        cached as :meth:`eigvalsh`'s, keyed on H like every cache here, so an
        edit of H after this call makes it stale.
        """
        r, s = rows.shape
        if s != self.n or r >= s:
            raise ValueError(
                f"rows must have shape (r, {self.n}) with r < {self.n}; got "
                f"{tuple(rows.shape)}."
            )
        K = torch.zeros(r, r, dtype=torch.float64, device=rows.device)
        step = max(1, GRAM_BLOCK_BYTES // (8 * max(r, 1)))  # float64 column blocks
        for j in range(0, s, step):
            blk = rows[:, j : j + step].to(torch.float64)
            K.addmm_(blk, blk.T)
        g = linalg.psd_eigvalsh(K)
        full = torch.zeros(s, dtype=self.H.dtype, device=self.H.device)
        full[s - r :] = g.to(self.H.dtype)
        self._eigvals = (self._H_key(), full)
        self._data = (self._H_key(), g)

    @property
    def has_data_spectrum(self) -> bool:
        """Whether :meth:`eigvalsh` of the current H comes from its square-root
        rows (:meth:`set_data_spectrum`): exact, and H has rank < S."""
        return self._data is not None and self._data[0] == self._H_key()

    def data_spectrum(self) -> torch.Tensor:
        """``(r,)`` float64 eigenvalues of the Gram matrix (H's nonzero spectrum,
        padded with zeros where the rows are dependent)."""
        if not self.has_data_spectrum:
            raise RuntimeError("no data-space spectrum for the current H.")
        return self._data[1].clone()

    def slq(
        self, n_probes: int, n_steps: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached stochastic Lanczos quadrature nodes and weights of H
        (:func:`.slq.lanczos_quadrature`); with a data-space spectrum
        (:meth:`set_data_spectrum`), that spectrum itself: the nonzero eigenvalues
        with weight 1 and a node at 0 with weight ``S - r`` (exact)."""
        if self.has_data_spectrum:
            g = self.data_spectrum()
            nodes = torch.cat([g.new_zeros(1), g])
            weights = torch.ones_like(nodes)
            weights[0] = self.n - g.numel()
            return nodes, weights
        key = (self._H_key(), n_probes, n_steps, seed)
        if self._slq is None or self._slq[0] != key:
            nodes, weights = lanczos_quadrature(
                self.H.detach(), n_probes, n_steps, seed
            )
            self._slq = (key, nodes, weights)
        return self._slq[1].clone(), self._slq[2].clone()

    # -------------------------------------------------------------- the factor
    @property
    def uses_eigen(self) -> bool:
        """Scalar prior and a cached eigendecomposition: the O(S^2) eigen paths."""
        return self.scalar_prior is not None and self.has_eigh

    def _current(self) -> _Factor:
        """The buffer for the current H, h and prior, built if stale."""
        f = self._factor
        if f is not None and f.key == self._key():
            return f
        f = self._factor = None  # free the old buffer before the new one
        if self.uses_eigen:
            g, V = self._eigh()
            C = linalg.eig_scale(g, V, self.h, self.scalar_prior)
            f = self._factor = _Factor(
                FactorKind.COV_SQRT, C.detach(), self._key(), FactorSource.EIGEN
            )
        else:
            f = self._factor = self._cholesky()
        return f

    def _cholesky(self) -> _Factor:
        """:math:`P` written into a column-major buffer and factorised there; on a
        round-off failure, the eigendecomposition fallbacks (warned)."""
        self.check_fits(FACTOR_MATRICES, "its in-place Cholesky factor")
        store = torch.empty(self.n, self.n, dtype=self.H.dtype, device=self.H.device)
        store.copy_(self.H.detach())
        h = _number(self.h)
        if h != 1.0:
            store.mul_(h)
        store.diagonal().add_(self.prior_diag.detach().to(store.dtype))
        buf = store.mT  # column-major: LAPACK works on it without a copy
        _, info = torch.linalg.cholesky_ex(buf, out=(buf, _info()))
        if info.item() == 0:
            return _Factor(FactorKind.PREC_CHOL, buf, self._key())
        del store, buf
        if self.scalar_prior is not None:
            self._warn_not_pd("eigendecomposing H once (cached for every prior)")
            g, V = self._eigh()
            C = linalg.eig_scale(g, V, self.h, self.scalar_prior)
            return _Factor(
                FactorKind.COV_SQRT, C.detach(), self._key(), FactorSource.EIGEN
            )
        self._warn_not_pd("using its eigendecomposition, eigenvalues >= min prior")
        self.check_fits(
            FACTOR_MATRICES + EIGH_MATRICES, "the eigendecomposition fallback"
        )
        floor = self.prior_diag.min().detach()
        e, V = linalg.floored_eigh(self.matrix(), floor)
        return _Factor(
            FactorKind.COV_SQRT,
            (V * e.rsqrt()).detach(),
            self._key(),
            FactorSource.FLOORED,
        )

    def _warn_not_pd(self, remedy: str) -> None:
        fix = "a larger prior precision"
        if self.H.dtype != torch.float64:
            fix = "curvature_dtype=torch.float64 or " + fix
        warnings.warn(
            f"The posterior precision ({self.H.dtype}, S={self.n}) is not numerically "
            "positive definite (Cholesky failed: round-off in the curvature is larger "
            f"than the prior precision); {remedy}. For an exact factorisation pass "
            f"{fix}.",
            RuntimeWarning,
            stacklevel=5,
        )

    def _convert(self, kind: str) -> torch.Tensor:
        r"""The buffer converted in place to ``kind`` (see :class:`_Factor`)."""
        f = self._current()
        if f.kind == kind:
            return f.buf
        if f.source != FactorSource.CHOLESKY:  # a non-triangular square root
            if kind == FactorKind.COV:
                return f.buf @ f.buf.T
            raise torch.linalg.LinAlgError(
                "the posterior precision has no Cholesky factor (not numerically "
                "positive definite); use curvature_dtype=torch.float64 or a larger "
                "prior precision."
            )
        if kind == FactorKind.PREC_CHOL or (
            kind == FactorKind.COV and f.kind == FactorKind.COV_SQRT
        ):
            del f  # free the buffer before the new one: never two factors
            self._factor = None  # refactorise from H (O(S^3), no memory)
            return self._convert(kind)
        if f.kind == FactorKind.PREC_CHOL:
            torch.cholesky_inverse(f.buf, out=f.buf)
            f.kind = FactorKind.COV
        if kind == FactorKind.COV_SQRT:
            _, info = torch.linalg.cholesky_ex(f.buf, out=(f.buf, _info()))
            if info.item() != 0:
                self._factor = None
                raise torch.linalg.LinAlgError(
                    "the posterior covariance is not numerically positive definite; "
                    "use curvature_dtype=torch.float64 or a larger prior precision."
                )
            f.kind = FactorKind.COV_SQRT
        return f.buf

    def buffer(self) -> torch.Tensor | None:
        """The factor buffer if one is held for the current state (no copy), else None."""
        f = self._factor
        if f is None or self.prior_diag is None or f.key != self._key():
            return None
        return f.buf

    def _handed_out(self, buf: torch.Tensor, copy: bool, what: str) -> torch.Tensor:
        if not copy:
            return buf
        self.check_fits(1, f"a copy of the {what} (copy=False: the buffer)")
        return buf.clone()

    # ------------------------------------------------------------ public maths
    def matrix(self) -> torch.Tensor:
        r"""``(s, t)`` :math:`P = hH + \operatorname{diag}(p)`, a new matrix."""
        return self.h * self.H + torch.diag(self.prior_diag.to(self.H.dtype))

    def scale(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` :math:`C`, :math:`CC^\top = \Sigma` (lower triangular on the
        Cholesky path). ``copy=False``: the buffer itself, which the next call that
        needs another form (``sample``, ``whiten``, a prior or noise change)
        overwrites in place."""
        f = self._current()
        buf = (
            f.buf
            if f.source != FactorSource.CHOLESKY
            else self._convert(FactorKind.COV_SQRT)
        )
        return self._handed_out(buf, copy, "covariance square root")

    def covariance(self, copy: bool = True) -> torch.Tensor:
        r"""``(s, t)`` :math:`\Sigma = P^{-1}` (in place of the factor on the
        Cholesky path; ``copy`` as in :meth:`scale`)."""
        f = self._current()
        if f.source != FactorSource.CHOLESKY:  # a product: already a new tensor
            return f.buf @ f.buf.T
        return self._handed_out(self._convert(FactorKind.COV), copy, "covariance")

    def log_det(self) -> torch.Tensor:
        r"""float64 :math:`\log\det P` from the Cholesky factor, differentiable in
        the prior diagonal and :math:`h`."""
        return _CholeskyLogDet.apply(self.prior_diag, self.h, self)

    def log_det_eig(self) -> torch.Tensor:
        r""":math:`\log\det P` from the eigenvalues of H (scalar prior; O(S))."""
        lam = self._need_scalar("log_det_eig")
        return linalg.eig_logdet(self._eigvalsh(), self.h, lam)

    def log_det_ratio_eig(self) -> torch.Tensor:
        r""":math:`\log\det P - \log\det P_0 = \sum_i\operatorname{log1p}(hg_i/\lambda)`
        (scalar prior; no cancellation)."""
        lam = self._need_scalar("log_det_ratio_eig")
        return log_det_ratio(self._eigvalsh(), self.h, lam)

    def _need_scalar(self, what: str) -> torch.Tensor:
        if self.scalar_prior is None:
            raise ValueError(f"{what} needs a scalar prior precision.")
        return self.scalar_prior

    def whiten(self, Js: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(A, B)`` ``(b, c, s)`` with :math:`J\Sigma J^\top = AB^\top` per sample,
        without an S x S product (triangular solve with the factor)."""
        f = self._current()
        b, c, s = Js.shape
        flat = Js.reshape(b * c, s)
        if f.kind == FactorKind.PREC_CHOL:
            X = torch.linalg.solve_triangular(f.buf, flat.T, upper=False).T
            X = X.reshape(b, c, s)
            return X, X
        if f.kind == FactorKind.COV:
            return Js, (flat @ f.buf).reshape(b, c, s)
        X = (flat @ f.buf).reshape(b, c, s)
        return X, X

    def functional_variance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b, c, k)`` :math:`J\\Sigma J^\\top` of Jacobians ``(b, c, s)`` (H's dtype)."""
        Js = Js.to(self.H.dtype)
        if self.uses_eigen:
            return self.variance_along(self.project(Js), [self.scalar_prior])[0]
        return torch.einsum("bcs,bks->bck", *self.whiten(Js))

    def functional_covariance(self, Js: torch.Tensor) -> torch.Tensor:
        """``(b*c, b*c)`` joint :math:`J\\Sigma J^\\top` (H's dtype)."""
        b, c, s = Js.shape
        A, B = self.whiten(Js.to(self.H.dtype))
        return A.reshape(b * c, s) @ B.reshape(b * c, s).T

    def sample(
        self, n_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""``(n, s)`` draws of :math:`\mathcal{N}(0, \Sigma)` (H's dtype):
        :math:`L^{-\top}z` with the Cholesky factor if the buffer holds it, else
        :math:`Cz`."""
        z = torch.randn(
            n_samples, self.n, device=self.H.device, dtype=self.H.dtype,
            generator=generator,
        )  # fmt: skip
        f = self._current()
        if f.kind == FactorKind.PREC_CHOL:
            return torch.linalg.solve_triangular(f.buf.mT, z.T, upper=True).T
        return z @ self.scale(copy=False).T

    def square_norm(self, delta: torch.Tensor) -> torch.Tensor:
        r""":math:`\delta^\top P\delta` of ``(s,)`` (or ``(n, s)``: per row) without
        forming :math:`P`."""
        delta = delta.to(self.H.dtype)
        Hd = delta @ self.H
        return self.h * (Hd * delta).sum(-1) + (delta**2 * self.prior_diag).sum(-1)
