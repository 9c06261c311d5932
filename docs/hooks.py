"""MkDocs hooks: generate the results and benchmark pages before every build, and
render the Sphinx roles of our numpydoc docstrings in the API reference."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import gen_pages  # noqa: E402

#: ``:math:`x``` as mkdocstrings leaves it in the HTML
_MATH = re.compile(r":math:<code>(.*?)</code>", re.S)
#: ``:class:`~a.b.C```, ``:meth:`f``` ...: the (last) name as code
_ROLE = re.compile(
    r":(?:class|meth|func|mod|data|attr|obj|exc):<code>~?([^<]*?)</code>"
)


def on_pre_build(config, **kwargs) -> None:
    gen_pages.generate()


def on_page_content(html: str, page, config, files) -> str:
    """Sphinx roles to MathJax spans (arithmatex's generic form) and code."""

    html = _MATH.sub(
        lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html
    )
    return _ROLE.sub(lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1]}</code>", html)
