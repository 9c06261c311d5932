"""Every tutorial runs in its --quick mode and stays short (one concept each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "examples" / "tutorials"
NAMES = [
    "quickstart",
    "choosing_s",
    "prior_choice",
    "lora_huggingface",
    "large_s_budget",
    "custom_rule",
]


def test_the_list_is_every_tutorial():
    found = {p.stem for p in TUTORIALS.glob("*.py")} - {"common"}
    assert found == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_runs_quick_and_is_short(name):
    path = TUTORIALS / f"{name}.py"
    assert len(path.read_text().splitlines()) <= 150, f"{name}.py is over 150 lines"
    proc = subprocess.run(
        [sys.executable, str(path), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=TUTORIALS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "a tutorial prints what it shows"
    # our own code warns about nothing in a tutorial (third-party notices aside)
    ours = [
        line
        for line in proc.stderr.splitlines()
        if "Warning" in line and ("laplace_subnet_ext" in line or "tutorials" in line)
    ]
    assert ours == [], ours
