"""Second zoo: H and GLM variance against a plain-autograd reference, float64.

Reference: one ``backward()`` per (sample, output) of the unmodified model, per
training batch (so samples that interact are treated as the model treats them),
every weight in the subnetwork. Each case is fitted on two batches, with the
trap in the second where it can be (see :mod:`tests.zoo_second`).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace
from laplace_subnet_ext.jacobians import RULES, SubnetJacobians, SubnetLayout
from laplace_subnet_ext.jacobians.rules import LinearRule, Use
from tests.cases import assert_close
from tests.test_zoo import reference
from tests.zoo import E, SeqFirstMisused, perturbed
from tests.zoo_second import CASES, B, moe_model, moe_x

MODES = {
    "auto": dict(jacobian_method="auto"),
    "auto_unverified": dict(jacobian_method="auto", verify_jacobians=False),
    "functional": dict(jacobian_method="functional"),
}


def autograd_jacobian(model: nn.Module, x: torch.Tensor):
    """``(b, c, D)`` by one plain ``backward()`` per (sample, output).

    The derivative of the *function*: ``scale_grad_by_freq`` (a rescaling of the
    training gradient by token counts) is switched off on a copy of the model.
    """
    if any(getattr(m, "scale_grad_by_freq", False) for m in model.modules()):
        model = copy.deepcopy(model)
        for m in model.modules():
            if hasattr(m, "scale_grad_by_freq"):
                m.scale_grad_by_freq = False
    params = [p for p in model.parameters() if p.requires_grad]
    f = model(x)
    b, c = f.shape
    J = torch.zeros(b, c, sum(p.numel() for p in params))
    for i in range(b):
        for k in range(c):
            for p in params:
                p.grad = None
            f[i, k].backward(retain_graph=True)
            J[i, k] = torch.cat(
                [
                    torch.zeros(p.numel()) if p.grad is None else p.grad.flatten()
                    for p in params
                ]
            )
    for p in params:
        p.grad = None
    return J, f.detach()


def reference_H(model, x, idx):
    H = 0.0
    for start in range(0, len(x), B):
        J, f = autograd_jacobian(model, x[start : start + B])
        H = H + reference(J, f, idx)[0]
    return H


def fit(model, x, **kw):
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    idx = torch.arange(D)
    y = torch.arange(len(x)) % 3
    la = DenseSubnetLaplace(model, "classification", idx, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own (checkpoint, vmap)
        la.fit(DataLoader(TensorDataset(x, y), batch_size=B))
    return la, idx


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_second_zoo_matches_plain_autograd(case, mode):
    model, x = case.make_model(), case.make_x()
    with torch.no_grad():
        model(x)  # in-place side effects of the forward (max_norm) happen first
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no run-time check failure
        la, idx = fit(model, x, **MODES[mode])
        _, f_var = la._glm_predictive_distribution(x[:B])
    H_ref = reference_H(model, x, idx)
    assert_close(la.H, H_ref, 1e-8, f"{case.id} H ({mode})")
    Js = autograd_jacobian(model, x[:B])[0][:, :, idx]
    Sigma = torch.linalg.inv(H_ref + la.prior_precision * torch.eye(len(idx)))
    var_ref = torch.einsum("bcs,st,bkt->bck", Js, Sigma, Js)
    assert_close(f_var, var_ref, 1e-8, f"{case.id} GLM variance ({mode})")
    if mode != "functional":
        fast = [s.name for s in la.jacobians.split()[0]]
        for frag in case.fast:
            assert any(frag in n for n in fast), (
                f"{case.id}: no {frag!r} tensor on the fast path; generic: "
                f"{la.generic_reasons}"
            )


def test_moe_expert_first_seen_in_a_later_batch_is_routed_away():
    """The reproducer of the issue: expert 2 gets no token in batch 1 and exactly
    B tokens (from samples 0 and 1) in batch 2."""
    model, x = moe_model(), moe_x()
    top = model.router(x.reshape(2, -1, 4)).argmax(-1)
    assert (top[0] == 2).sum() == 0 and (top[1] == 2).sum() == B
    la, idx = fit(model, x, verify_jacobians=False)
    assert "sample check" in la.generic_reasons["experts.2.weight"]
    assert_close(la.H, reference_H(model, x, idx), 1e-8, "MoE H")


class MisattributingLinear(LinearRule):
    """A planted bug: rows credited to the next sample (a roll over the batch)."""

    def uses(self, module, inputs, output):
        out = []
        for u in super().uses(module, inputs, output):
            g = u.gradient
            out.append(
                Use(
                    param=u.param,
                    z=u.z,
                    inputs=u.inputs,
                    n=u.n,
                    factor=u.factor,
                    gradient=lambda dz, loc, g=g: g(dz, loc).roll(1, dims=0),
                    sample_rows=lambda dz, u=u: u.sample_rows(dz).roll(1, dims=0),
                )
            )
        return out


def test_planted_misattribution_is_caught_by_the_guard_without_the_check(
    monkeypatch,
):
    monkeypatch.setitem(RULES, nn.Linear, MisattributingLinear())
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    X = torch.randn(8, 4)
    D = sum(p.numel() for p in model.parameters())
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)), verify=False)
    Js, _ = jac(X)
    assert set(jac.generic_reasons) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all("sample check" in r for r in jac.generic_reasons.values())
    J, _ = autograd_jacobian(model, X)
    assert_close(Js, J, 1e-10, "repaired columns")


class SeqFirstOffset(nn.Module):
    """A bias added in a (tokens, batch, features) layout with tokens == batch:
    the direct broadcast-add use credits the token rows to samples (wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.p = nn.Parameter(torch.randn(1, 1, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # x: (b, t, 3) with t == b
        h = self.inp(x).transpose(0, 1)  # (t, b, 4)
        h = torch.tanh(h + self.p)
        return self.head(h.mean(0))


def test_planted_miscredited_broadcast_use_is_caught_without_the_check():
    """The broadcast add is recorded with the token axis read as the batch (t ==
    b, so the guard's batch-size test cannot tell); the sample check demotes the
    parameter with the run-time check off, and the columns are exact."""
    torch.manual_seed(0)
    model = SeqFirstOffset()
    X = torch.randn(5, 5, 3)
    D = sum(p.numel() for p in model.parameters())
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)), verify=False)
    Js, _ = jac(X)
    assert set(jac.generic_reasons) == {"p"}
    assert "sample check" in jac.generic_reasons["p"]
    J, _ = autograd_jacobian(model, X)
    assert_close(Js, J, 1e-10, "columns after the demotion")


def test_direct_uses_stay_exact_when_read_the_right_way():
    """The same model with the batch leading: the broadcast add is fast."""
    torch.manual_seed(0)

    class BatchFirst(SeqFirstOffset):
        def forward(self, x):
            return self.head(torch.tanh(self.inp(x) + self.p).mean(1))

    model = BatchFirst()
    X = torch.randn(5, 5, 3)
    D = sum(p.numel() for p in model.parameters())
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)), verify=False)
    Js, _ = jac(X)
    assert jac.generic_reasons == {}
    J, _ = autograd_jacobian(model, X)
    assert_close(Js, J, 1e-10, "direct broadcast add")


def test_llama_family_float64_stays_on_the_fast_path():
    """HF Llama's RMSNorm computes in float32 inside a float64 model: the checks
    compare at float32 accuracy and demote nothing."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=30,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
        num_labels=3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    net = transformers.LlamaForSequenceClassification(cfg).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, ids):
            return self.net(input_ids=ids.long()).logits

    model = Logits()
    x = torch.randint(1, 30, (2 * B, 5)).double()
    D = sum(p.numel() for p in model.parameters())
    idx = torch.randperm(D)[:300]
    y = torch.arange(len(x)) % 3
    la = DenseSubnetLaplace(model, "classification", idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        la.fit(DataLoader(TensorDataset(x, y), batch_size=B))
    # nothing demoted: Llama's RMSNorm weights (``weight * hidden``) are direct
    # elementwise scales, fast like the rest
    assert la.generic_reasons == {}, la.generic_reasons
    assert la.jacobians.autograd_reason is None
    H_ref = reference_H(model, x, idx)
    # the model itself computes in float32 in places: agreement at that accuracy
    assert_close(la.H, H_ref, 1e-5, "Llama H")


def test_sequence_first_layout_misused_is_caught_by_the_sample_check():
    """A seq-first layer's Linear called on batch-first rows with t == b: the
    layout rule credits rows to the wrong samples; the sample check demotes it."""
    torch.manual_seed(0)
    model = perturbed(SeqFirstMisused())
    x = torch.randn(4, 4, E)
    D = sum(p.numel() for p in model.parameters())
    jac = SubnetJacobians(model, SubnetLayout(model, torch.arange(D)), verify=False)
    Js, _ = jac(x)
    assert "sample check" in jac.generic_reasons["layer.linear1.weight"]
    assert "head.weight" not in jac.generic_reasons
    J, _ = autograd_jacobian(model, x)
    assert_close(Js, J, 1e-10, "misused seq-first Linear")
