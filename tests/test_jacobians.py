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


class _Convs(torch.nn.Module):
    """Strided, dilated and padded convolutions, a shared (tied) Linear, a sequence."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(2, 5, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(5, 4, (3, 2), dilation=(1, 2), padding=(2, 0), bias=False)
        self.tied = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.c2(torch.tanh(self.c1(x)))  # (n, 4, 6, 1)
        seq = torch.tanh(
            h.flatten(2).transpose(1, 2)[:, :, :4].repeat(1, 1, 2)[..., :6]
        )
        seq = self.tied(torch.tanh(self.tied(seq)))  # (n, 6, 6), tied weight twice
        return self.head(seq.mean(1))


def _block_models():
    nn = torch.nn
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=False)

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = enc, nn.Linear(8, 3)

        def forward(self, x):  # x (n, L, 8) -> sequence-first inside
            return self.head(self.enc(x.transpose(0, 1)).mean(0))

    return [
        ("convs_tied", _Convs, lambda: torch.randn(5, 2, 11, 9)),
        ("transformer_seq_first", SeqFirst, lambda: torch.randn(4, 5, 8)),
    ]


@pytest.mark.parametrize(
    "name,make,make_x", _block_models(), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("frac", [0.05, 0.6])
@pytest.mark.parametrize("ratio", [0, float("inf")], ids=["gathered", "blocked"])
def test_blocked_and_gathered_weight_entries_match_dense(
    name, make, make_x, frac, ratio, monkeypatch
):
    """Both ways of forming a weight's entries (entry by entry, or a dense
    matmul block over their rows and columns, in row chunks) equal torch.func."""
    from laplace_subnet_ext.jacobians import engine

    torch.manual_seed(1)
    model = make().double().eval()
    x = make_x().double()
    monkeypatch.setattr(engine, "BLOCK_RATIO", ratio)
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 64)  # several row chunks
    plans = []
    real_plan = engine._plan
    monkeypatch.setattr(
        engine, "_plan", lambda s, u: plans.append(real_plan(s, u)) or plans[-1]
    )
    idx = random_indices(model, frac)
    J_ref, _ = dense_reference(model, x)
    jac = SubnetJacobians(model, SubnetLayout(model, idx))
    Js, _ = jac(x)
    assert not jac.generic_reasons
    kinds = {type(p).__name__ for p in plans}
    assert ("_Blocked" in kinds) == (ratio > 0), kinds
    assert_close(Js, J_ref[:, :, idx], 1e-10, f"{name} {frac} ratio={ratio}")


def test_block_plan_follows_the_fill_of_rows_and_columns():
    """A selection filling its rows x columns is blocked; a scattered one is not;
    with one position per sample only a full block is worth a matmul."""
    from laplace_subnet_ext.jacobians import engine
    from laplace_subnet_ext.jacobians.layout import TensorSelection
    from laplace_subnet_ext.jacobians.rules import linear_uses

    lin = torch.nn.Linear(64, 64)
    a = torch.randn(3, 16, 64)  # 16 positions per sample
    (use, _) = linear_uses(lin.weight, lin.bias, a, lin(a), 3)

    def plan(local):
        sel = TensorSelection(
            "w", lin.weight, lin, "weight", local, torch.arange(len(local))
        )
        return type(engine._plan(sel, use)).__name__

    dense = (torch.arange(8)[:, None] * 64 + torch.arange(8)).flatten()  # 8x8 block
    diagonal = torch.arange(64) * 65  # 64 rows x 64 columns, 64 entries
    r, c = torch.arange(8)[:, None], torch.arange(8)
    part = (r * 64 + c)[(r + c) % 8 < 3]  # 24 entries spanning all 8 x 8
    assert plan(dense) == plan(part) == "_Blocked"
    assert plan(diagonal) == "_Gathered"
    b = torch.randn(3, 64)  # one position: the block's per-entry cost weighs more
    (use, _) = linear_uses(lin.weight, lin.bias, b, lin(b), 3)
    assert plan(dense) == "_Blocked"  # 64 x (1 + 16) <= 32 x 64 x 1
    assert plan(part) == "_Gathered"  # 64 x (1 + 16) > 32 x 24 x 1


def test_layout_partition_equals_the_mask_reference():
    """SubnetLayout's binary search gives each tensor the positions and local
    indices a mask over all S indices gives (ascending positions), sorted or
    not, with untouched tensors left out."""
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Linear(3, 2))
    D = sum(p.numel() for p in m.parameters())

    def reference(indices):
        out, start = [], 0
        for name, p in m.named_parameters():
            stop = start + p.numel()
            pos = ((indices >= start) & (indices < stop)).nonzero(as_tuple=True)[0]
            if len(pos):
                out.append((name, pos, indices[pos] - start))
            start = stop
        return out

    for trial in range(60):
        idx = torch.randperm(D)[: int(torch.randint(1, D + 1, ()))]
        if trial % 2:
            idx = idx.sort().values
        layout = SubnetLayout(m, idx)
        ref = reference(idx)
        assert [s.name for s in layout.selections] == [r[0] for r in ref]
        for sel, (_, pos, local) in zip(layout.selections, ref):
            assert torch.equal(sel.positions, pos) and torch.equal(sel.local, local)
