"""Shared test helper: the ```python blocks of one section of a Markdown page."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path, section: str) -> list[str]:
    """The ```python blocks of the ``## section`` of ``page``, in order."""
    parts = re.split(r"^## (.+)$", page.read_text(), flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    return re.findall(r"^```python\n(.*?)^```$", sections[section], flags=re.MULTILINE | re.DOTALL)
