"""MkDocs hook: generate the results and benchmark pages before every build."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import gen_pages  # noqa: E402


def on_pre_build(config, **kwargs) -> None:
    gen_pages.generate()
