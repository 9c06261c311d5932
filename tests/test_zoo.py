"""The architecture zoo: H and GLM predictive variance against torch.func, float64.

Reference: the Jacobian w.r.t. *all* parameters by ``torch.func.jacrev``, sliced
to the subnetwork; :math:`H = \\sum_b J_b^\\top \\Lambda_b J_b` with the softmax
Hessian; :math:`\\mathrm{Var}[f] = J_S (H + \\lambda I)^{-1} J_S^\\top`. Every
parameter is perturbed (no zero-initialised head, LoRA B or bias).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from laplace_subnet_ext import DenseSubnetLaplace
from tests.cases import assert_close
from tests.zoo import ZOO, build


class _Rows(Dataset):
    """Samples of a tensor or dict input, with labels (dict rows carry them)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if isinstance(self.x, dict):
            return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}
        return self.x[i], self.y[i]


def full_jacobian(model, x):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def f(p):
        out = torch.func.functional_call(model, p, (x,), strict=False)
        return out, out

    jac, out = torch.func.jacrev(f, has_aux=True)({n: p.detach() for n, p in named})
    return torch.cat([jac[n].reshape(*jac[n].shape[:2], -1) for n, _ in named], -1), out


def subnet_indices(model, case, n_random: int = 150) -> torch.Tensor:
    """Random indices plus a few entries of every tensor that must be fast."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    D = sum(p.numel() for _, p in named)
    picks, start = [torch.randperm(D)[: min(n_random, D // 3)]], 0
    for name, p in named:
        if any(frag in name for frag in case.fast):
            picks.append(start + torch.randperm(p.numel())[:3])
        start += p.numel()
    return torch.unique(torch.cat(picks))


def reference(J, f, idx, prior_precision=1.0):
    Js = J[:, :, idx]
    p = torch.softmax(f, -1)
    Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    H = torch.einsum("bcs,bck,bkt->st", Js, Lam, Js)
    Sigma = torch.linalg.inv(H + prior_precision * torch.eye(len(idx)))
    return H, torch.einsum("bcs,st,bkt->bck", Js, Sigma, Js)


@pytest.mark.parametrize("method", ["auto", "functional"])
@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.id)
def test_zoo_curvature_and_predictive_match_torch_func(case, method):
    model, x = build(case)
    J, f = full_jacobian(model, x)
    idx = subnet_indices(model, case)
    y = torch.randint(f.shape[-1], (f.shape[0],))
    la = DenseSubnetLaplace(model, "classification", idx, jacobian_method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no run-time check failure
        la.fit(DataLoader(_Rows(x, y), batch_size=len(y)))
        _, f_var = la._glm_predictive_distribution(x)
    H_ref, var_ref = reference(J, f, idx)
    assert_close(la.H, H_ref, 1e-8, f"{case.id} H ({method})")
    assert_close(f_var, var_ref, 1e-8, f"{case.id} GLM variance ({method})")
    if method == "auto":
        fast = [s.name for s in la.jacobians.split()[0]]
        for frag in case.fast:
            assert any(frag in n for n in fast), (
                f"{case.id}: no {frag!r} tensor on the fast path; generic: "
                f"{la.jacobians.generic_reasons}"
            )


@pytest.mark.parametrize("lik", ["classification", "regression"])
@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.id)
def test_zoo_diagonal_without_jacobians_matches_torch_func(case, lik):
    """``SubnetJacobians.diagonal``: sum_b diag(J_b^T A_b A_b^T J_b) from per-sample
    gradients (never J), against the sliced torch.func Jacobian; the fast tensors
    stay fast and the run-time check passes (no RuntimeWarning)."""
    from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout
    from laplace_subnet_ext.numerics.curvature import output_hessian_root

    model, x = build(case)
    J, f = full_jacobian(model, x)
    idx = subnet_indices(model, case).sort().values
    Js = J[:, :, idx]
    if lik == "classification":
        p = torch.softmax(f, -1)
        Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        ref = torch.einsum("bcs,bck,bks->s", Js, Lam, Js)
    else:
        ref = Js.pow(2).sum((0, 1))
    jac = SubnetJacobians(model, SubnetLayout(model, idx))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got, f_got = jac.diagonal(x, lambda out: output_hessian_root(out, lik))
    assert_close(got, ref, 1e-8, f"{case.id} diagonal ({lik})")
    assert_close(f_got, f, 1e-10, f"{case.id} outputs")
    fast = [s.name for s in jac.split()[0]]
    for frag in case.fast:
        assert any(frag in n for n in fast), (case.id, jac.generic_reasons)


def test_output_hessian_root_squares_to_the_softmax_hessian():
    from laplace_subnet_ext.numerics.curvature import (
        output_hessian,
        output_hessian_root,
    )

    f = torch.randn(6, 5, dtype=torch.float64) * 3
    A = output_hessian_root(f, "classification")
    assert_close(
        A @ A.transpose(1, 2), output_hessian(f, "classification"), 1e-12, "A A^T"
    )
    assert output_hessian_root(f, "regression") is None


@pytest.mark.parametrize("kind", ["ggn", "ef"])
@pytest.mark.parametrize(
    "case_id",
    [
        "tied_embedding_head",
        "grouped_depthwise_same",
        "encoder_layer_pre_norm",
        "seq_first_linear_misused",
        "param_used_by_parent",
    ],
)
def test_blocked_diag_curvature_single_pass_matches_torch_func(case_id, kind):
    """The selection strategies' diagonal over all D weights: fast tensors in one
    pass (input chunks forced small), generic or demoted ones in column blocks."""
    from laplace_subnet_ext.selection.variance import blocked_diag_curvature

    case = next(c for c in ZOO if c.id == case_id)
    model, x = build(case)
    J, f = full_jacobian(model, x)
    y = torch.randint(f.shape[-1], (f.shape[0],))
    if kind == "ggn":
        p = torch.softmax(f, -1)
        Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        ref = torch.einsum("bcp,bck,bkp->p", J, Lam, J)
    else:
        r = torch.softmax(f, -1) - torch.nn.functional.one_hot(y, f.shape[-1])
        ref = torch.einsum("bcp,bc->bp", J, r).pow(2).sum(0)
    largest = max(p.numel() for p in model.parameters())
    loader = DataLoader(_Rows(x, y), batch_size=len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the misused case's check
        got = blocked_diag_curvature(
            model, "classification", loader, kind, block_bytes=3 * 8 * largest * 2
        )
    assert_close(got, ref, 1e-8, f"{case_id} {kind} diagonal")
