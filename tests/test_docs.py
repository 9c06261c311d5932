"""The docs: every public name in the API reference, README a landing page, each
guide topic a page, every results table generated (``mkdocs build --strict`` runs
in ``.ci/run``)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_MODULES = [
    "laplace_subnet_ext",
    "laplace_subnet_ext.selection",
    "laplace_subnet_ext.jacobians",
    "laplace_subnet_ext.posterior",
    "laplace_subnet_ext.prior",
    "laplace_subnet_ext.diagnostics",
]
DIRECTIVE = re.compile(r"^::: ([\w.]+)$", re.M)


def _resolve(path: str):
    """The object a ``::: dotted.path`` directive documents."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def test_every_public_name_is_in_the_api_reference():
    documented = [
        m
        for page in (DOCS / "api").glob("*.md")
        for m in DIRECTIVE.findall(page.read_text())
    ]
    assert documented, "no ::: directives under docs/api"
    ids = {id(_resolve(path)) for path in documented}
    missing = [
        f"{mod}.{name}"
        for mod in PUBLIC_MODULES
        for name in importlib.import_module(mod).__all__
        if id(getattr(importlib.import_module(mod), name)) not in ids
    ]
    assert missing == [], f"add these to docs/api/*.md as '::: <path>': {missing}"


def test_readme_is_a_landing_page_of_at_most_8_kb():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 8 * 1024, f"README.md is {size} bytes; move detail to docs/"


@pytest.mark.parametrize(
    "page",
    [
        "getting-started.md",
        "guide/registration.md",
        "guide/selection.md",
        "guide/priors.md",
        "guide/large-s.md",
        "guide/transformers.md",
        "guide/jacobians.md",
        "guide/distributed.md",
        "guide/precision.md",
        "tutorials.md",
        "developer.md",
    ],
)
def test_each_guide_topic_has_a_page_in_the_nav(page):
    text = (DOCS / page).read_text()
    assert len(text) > 500, f"{page} is a stub"
    assert f": {page}" in (ROOT / "mkdocs.yml").read_text(), f"{page} not in nav"


def test_results_pages_are_generated_from_the_json_with_every_marker_known():
    sys.path.insert(0, str(DOCS))
    import gen_pages

    used = {
        m
        for section in gen_pages.SECTIONS
        for src in (DOCS / section / "_src").glob("*.md")
        for m in gen_pages.MARKER.findall(src.read_text())
    }
    assert used <= set(gen_pages.TABLES), used - set(gen_pages.TABLES)
    assert set(gen_pages.TABLES) <= used, "a table builder no page uses"
    # a table is rebuilt from the JSON: the rotated-MNIST one has every method
    table = gen_pages.TABLES["rotated_mnist"]()
    assert table.startswith("| method | prior | seeds |")
    assert "| subnet Wasserstein | marglik | 3 |" in table
