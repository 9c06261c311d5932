"""Shared fixtures: float64 by fixture (never at import time), seeded RNG."""

from __future__ import annotations

import pytest
import torch

import laplace_subnet_ext


@pytest.fixture(autouse=True)
def float64_and_seed():
    """Every test runs in float64 with a fixed seed; the default is restored."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(240)
    laplace_subnet_ext.register()
    yield
    torch.set_default_dtype(old)
    laplace_subnet_ext.register()
