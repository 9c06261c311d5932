"""Subnetwork-only Jacobians equal the dense torch.func Jacobian, sliced."""

from __future__ import annotations

import pytest
import torch

from laplace_subnet_ext.jacobians import SubnetJacobians, SubnetLayout, is_fast
from tests.cases import JAC_CASES, assert_close, eval_model


def dense_reference(model, x):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p):
        out = torch.func.functional_call(model, p, (x,))
        return out, out

    jac, out = torch.func.jacrev(f, has_aux=True)(params)
    J = torch.cat([j.flatten(start_dim=out.ndim) for j in jac.values()], -1)
    return J, out


def random_indices(model, frac=0.4):
    D = sum(p.numel() for p in model.parameters())
    return torch.randperm(D)[: max(1, int(frac * D))]


@pytest.mark.parametrize("case", JAC_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("method", ["auto", "functional"])
def test_subnet_jacobians_match_dense(case, method):
    model = eval_model(case.make_model())
    x = case.make_x()
    idx = random_indices(model)
    J_ref, f_ref = dense_reference(model, x)
    jac = SubnetJacobians(model, SubnetLayout(model, idx), method=method)
    Js, f = jac(x)
    assert_close(f, f_ref, 1e-12, "outputs")
    assert_close(Js, J_ref[:, :, idx], 1e-10, f"{case.id} Jacobians ({method})")


@pytest.mark.parametrize("case", JAC_CASES, ids=lambda c: c.id)
def test_every_single_weight_column(case):
    """S = D in shuffled order: each column lands at its own position."""
    model = eval_model(case.make_model())
    x = case.make_x()
    D = sum(p.numel() for p in model.parameters())
    idx = torch.randperm(D)
    J_ref, _ = dense_reference(model, x)
    Js, _ = SubnetJacobians(model, SubnetLayout(model, idx))(x)
    assert_close(Js, J_ref[:, :, idx], 1e-10, case.id)


def test_fast_path_covers_documented_modules():
    from torch import nn

    assert is_fast(nn.Linear(2, 2))
    assert is_fast(nn.Conv2d(2, 2, 3))
    assert not is_fast(nn.Conv2d(2, 2, 3, groups=2))
    assert not is_fast(nn.Conv2d(2, 2, 3, padding="same"))
    assert is_fast(nn.BatchNorm2d(2).eval())
    assert not is_fast(nn.BatchNorm2d(2).train())
    assert is_fast(nn.LayerNorm(3))
    assert is_fast(nn.Embedding(3, 2))
    assert not is_fast(nn.GRU(2, 2))


def test_grouped_and_same_padded_convolutions_take_the_generic_path_exactly():
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    x = torch.randn(3, 2, 6, 6)
    idx = random_indices(model, 0.5)
    J_ref, _ = dense_reference(model, x)
    Js, _ = SubnetJacobians(model, SubnetLayout(model, idx))(x)
    assert_close(Js, J_ref[:, :, idx], 1e-10, "generic convolutions")


def test_generic_chunking_matches_single_chunk():
    from tests.cases import NonLeafParam

    model = NonLeafParam()
    x = torch.randn(9, 3)
    layout = SubnetLayout(model, random_indices(model, 0.7))
    J1, _ = SubnetJacobians(model, layout, generic_chunk_size=2)(x)
    J2, _ = SubnetJacobians(model, layout, generic_chunk_size=100)(x)
    assert_close(J1, J2, 1e-14, "chunked")
