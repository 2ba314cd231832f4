"""docs/posteriors.md: every ```python block runs as written; each method has its math,
when, cost and paper; the comparison table quotes benchmarks/results/images.md exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "posteriors.md"
RESULTS = ROOT / "benchmarks" / "results" / "images.md"
METHODS = ["Laplace (post-hoc)", "SWAG", "IVON", "Deep ensembles"]
PAPERS = {
    "Laplace (post-hoc)": "Daxberger",
    "SWAG": "Maddox",
    "IVON": "Shen",
    "Deep ensembles": "Lakshminarayanan",
}


def _sections() -> dict[str, str]:
    """``{heading: body}`` of every ``## `` section of the page."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _blocks() -> list[tuple[str, str]]:
    """``(heading, code)`` of every ```python block, with the section it sits in."""
    return [
        (heading, code)
        for heading, body in _sections().items()
        for code in re.findall(r"^```python\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)
    ]


BLOCKS = _blocks()
IDS = [f"{h}-{i}" for i, (h, _) in enumerate(BLOCKS)]


def _table(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """The markdown table whose header starts with ``| first_header |``, as
    ``{row name: {column: cell}}``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_every_method_has_math_when_cost_a_program_and_its_paper() -> None:
    sections = _sections()
    assert list(sections)[: len(METHODS)] == METHODS
    assert {"Saving and loading a posterior", "How they compare"} <= set(sections)
    assert PAGE.read_text().count("```python") == len(BLOCKS)
    with_code = {h for h, _ in BLOCKS}
    for heading in METHODS:
        body = sections[heading]
        for part in ("**What.**", "**When.**", "**Cost.**"):
            assert part in body, (heading, part)
        assert re.search(PAPERS[heading] + r"[^()]*\((19|20)\d\d\)", body), heading
        assert heading in with_code, f"{heading}: no program"
        assert "sklearn.datasets" in "".join(c for h, c in BLOCKS if h == heading)
    assert "Saving and loading a posterior" in with_code


def test_the_comparison_quotes_the_benchmark_table() -> None:
    """Every cell of the page's comparison table equals the results table's cell of the
    same method and column, and each post-hoc/optimizer method has its row."""
    ours = _table(_sections()["How they compare"], "method")
    theirs = _table(RESULTS.read_text(), "method")
    assert {"deterministic", "laplace_last_layer", "swag", "ivon", "ensemble_10"} <= set(ours)
    for method, row in ours.items():
        assert method in theirs, f"{method!r} is not a row of {RESULTS.name}"
        for column, cell in row.items():
            assert theirs[method][column] == cell, (
                f"docs/posteriors.md quotes {cell!r} for {method} / {column}, "
                f"{RESULTS.name} has {theirs[method][column]!r}: update the page's comparison"
            )
    assert "benchmarks/results/images.md" in _sections()["How they compare"]


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=IDS)
def test_the_program_runs_as_written(heading: str, code: str) -> None:
    pytest.importorskip("sklearn")
    compiled = compile(code, f"{PAGE.name} [{heading}]", "exec")
    with torch.random.fork_rng(devices=[]):  # the programs seed torch themselves
        exec(compiled, {"__name__": "__docs__"})
