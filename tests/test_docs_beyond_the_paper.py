"""docs/beyond_the_paper.md: every ```python block runs as written, one per family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "beyond_the_paper.md"


def _sections() -> list[tuple[str, str]]:
    """``(heading, body)`` of every ``## `` section of the page, in order."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _blocks() -> list[tuple[str, str]]:
    """``(heading, code)`` of every ```python block, with the section it sits in."""
    return [
        (heading, code)
        for heading, body in _sections()
        for code in re.findall(r"^```python\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)
    ]


BLOCKS = _blocks()


def test_every_family_has_one_program_and_a_paper() -> None:
    sections = dict(_sections())
    families = [h for h in sections if h != "Benchmarks"]
    assert len(families) == 9, families
    assert [h for h, _ in BLOCKS] == families  # one block each, in page order
    assert re.findall(r"```python", PAGE.read_text()).__len__() == len(BLOCKS)
    for heading in families:
        body = sections[heading]
        for part in ("**What.**", "**When.**", "**Cost.**"):
            assert part in body, (heading, part)
        assert re.search(r"\((19|20)\d\d\)", body), f"{heading}: no paper cited"


def test_benchmarks_section_points_at_the_result_tables() -> None:
    body = dict(_sections())["Benchmarks"]
    for path in ("benchmarks/results/images.md", "benchmarks/results/uci.md"):
        assert path in body and (ROOT / path).is_file(), path


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[h for h, _ in BLOCKS])
def test_the_program_runs_as_written(heading: str, code: str) -> None:
    compiled = compile(code, f"{PAGE.name} [{heading}]", "exec")
    with torch.random.fork_rng(devices=[]):  # the programs seed torch themselves
        exec(compiled, {"__name__": "__docs__"})
