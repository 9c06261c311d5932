"""The one metrics implementation against independent references (torchmetrics,
scikit-learn, laplace's probit predictive)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from laplace_subnet_ext.diagnostics import (
    classification_metrics,
    ood_auroc,
    probit,
    regression_metrics,
)
from laplace_subnet_ext.diagnostics.metrics import entropy
from tests.cases import loader, make


def test_classification_metrics_against_torchmetrics_and_by_hand():
    p = torch.softmax(3 * torch.randn(200, 5), -1)
    y = torch.randint(5, (200,))
    m = classification_metrics(p, y)
    ece = multiclass_calibration_error(p.float(), y, num_classes=5, n_bins=10)
    assert m["ece"] == pytest.approx(float(ece), abs=1e-6)
    assert m["acc"] == pytest.approx(float((p.argmax(-1) == y).double().mean()))
    assert m["nll"] == pytest.approx(float(-p[torch.arange(200), y].log().mean()))
    brier = ((p - torch.eye(5)[y]) ** 2).sum(-1).mean()
    assert m["brier"] == pytest.approx(float(brier))
    with pytest.raises(ValueError, match=r"probs must be \(n, c\)"):
        classification_metrics(p[0], y)


def test_ood_auroc_against_scikit_learn_with_ties():
    p_in = torch.softmax(torch.randn(50, 4) * 3, -1)
    p_out = torch.softmax(torch.randn(40, 4), -1)
    p_out[:5] = p_in[:5]  # tied entropies
    labels = [0] * 50 + [1] * 40
    scores = torch.cat([entropy(p_in), entropy(p_out)])
    assert ood_auroc(p_in, p_out) == pytest.approx(
        roc_auc_score(labels, scores.numpy()), abs=1e-12
    )


def test_probit_and_regression_metrics_match_the_posterior():
    la = make()
    la.fit(loader("classification"))
    X = torch.randn(6, 3)
    f, f_var = la._glm_predictive_distribution(X)
    assert torch.allclose(probit(f, f_var), la(X, link_approx="probit"), atol=1e-12)
    y = torch.randn(6, 2)
    var = f_var.diagonal(dim1=-2, dim2=-1) + 0.25
    nll = (0.5 * ((y - f) ** 2 / var + var.log() + math.log(2 * math.pi))).sum(-1)
    m = regression_metrics(f, f_var, y, 0.5)
    assert m["nll"] == pytest.approx(float(nll.mean()))
    assert m["rmse"] == pytest.approx(float((y - f).pow(2).mean().sqrt()))
