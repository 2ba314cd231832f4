"""docs/guides/*.md: every ```python block runs as written (the blocks of one section share
a namespace, in order) and prints what the page says.

The sections are found from the pages, so a new section with code runs without a line
here; ``EXPECTED`` holds what each section must print. Other libraries' code (Edward2,
bayesian-torch, torchbnn, laplace-torch) is in ```py fences that are shown, not run, and
the page says so."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from docs_util import DOCS, python_blocks

GUIDES = DOCS / "guides"
PAGES = ("getting_started", "choosing_a_method", "scaling", "probabilistic_programs", "migration")


def _sections(page: Path) -> list[str]:
    return re.findall(r"^## (.+)$", page.read_text(), flags=re.MULTILINE)


CASES = [
    (name, section)
    for name in PAGES
    for section in _sections(GUIDES / f"{name}.md")
    if python_blocks(GUIDES / f"{name}.md", section)
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as under `make test`'s xdist workers: the small models of the
    guides run 4-8x slower with two threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(name: str, section: str, capsys: pytest.CaptureFixture[str]) -> str:
    page = GUIDES / f"{name}.md"
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(python_blocks(page, section)):
        exec(compile(code, f"{page}:{section}:{i}", "exec"), namespace)
    return capsys.readouterr().out


def _floats(pattern: str, out: str) -> list[float]:
    match = re.search(pattern, out)
    assert match, (pattern, out)
    return [float(g) for g in match.groups()]


def _quickstart(out: str) -> None:
    accuracy, ece = _floats(r"accuracy ([\d.]+), ECE ([\d.]+)", out)
    assert accuracy > 0.85 and ece < 0.1, out


def _map(out: str) -> None:
    found, exact = _floats(r"MAP ([-\d.]+)  closed form ([-\d.]+)", out)
    assert abs(found - exact) < 1e-3, out


def _vi(out: str) -> None:
    q_loc, q_scale, loc, scale = _floats(
        r"q: loc ([-\d.]+) scale ([\d.]+); exact: loc ([-\d.]+) scale ([\d.]+)", out
    )
    # Monte Carlo gradients with 4 draws: the fit is close, not exact
    assert abs(q_loc - loc) < 0.15 and abs(q_scale - scale) < 0.08, out


def _cox(out: str) -> None:
    low, high = _floats(r"t = 0.1: (\d+), at t = 0.9: (\d+)", out)
    assert low < 40 < 60 < high, out  # truth 12 and 108: the fit rises from left to right


def _methods(out: str) -> None:
    nlls = [float(v) for v in re.findall(r"NLL ([\d.]+)", out)]
    assert len(nlls) == 5 and all(0 < v < 1.0 for v in nlls), out


EXPECTED: dict[tuple[str, str], list[str] | Callable[[str], None]] = {
    ("getting_started", "The quickstart"): _quickstart,
    ("getting_started", "Three ideas"): [
        "True\nFalse\n(3, 4) Normal\n",
        "['LinearFlipout', 'ReLU', 'LinearFlipout']\nTrue\n",
        "(16, 5, 1) (5, 1) (5, 1)\nRandomVariable\n",
    ],
    ("getting_started", "Which object is which"): [
        "RandomVariable (3,) Normal\nTrue RandomVariable (5, 1)\n1 True\n"
    ],
    ("choosing_a_method", "Each method in a few lines"): _methods,
    ("scaling", "Compiling"): ["True\n"],
    ("scaling", "Mixed precision"): ["torch.bfloat16 torch.float32 True\ntorch.float32\n"],
    ("scaling", "Activation checkpointing"): ["True\n"],
    ("scaling", "The distributed loss and seeds, in one process"): ["True\nTrue\n"],
    ("probabilistic_programs", "Tape and condition"): [
        "['mu', 'x']\nRandomVariable (3,)\n2.0 2.0\n1.0\n"
    ],
    ("probabilistic_programs", "Layer weights are named random variables"): [
        "['0.weight', '2.weight']\nTrue\nTrue\n"
    ],
    ("probabilistic_programs", "The log joint"): _map,
    ("probabilistic_programs", "Variational inference between two programs"): _vi,
    ("probabilistic_programs", "The Cox process (Figure 9)"): _cox,
    ("migration", "Edward2 / Keras"): ["(16, 8, 3)\nRandomVariable (2,)\n"],
    ("migration", "bayesian-torch"): [
        "(8, 3) ['LinearFlipout', 'ReLU', 'LinearFlipout']\n0.0486\n"
    ],
    ("migration", "torchbnn"): ["True\n"],
    ("migration", "laplace-torch"): ["(8, 3) True LinearReparameterization\n"],
}


def test_every_section_with_code_has_expectations() -> None:
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize(("name", "section"), CASES, ids=[f"{n}:{s}" for n, s in CASES])
def test_section_runs_and_prints(
    name: str, section: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(name, section, capsys)
    expected = EXPECTED[(name, section)]
    if callable(expected):
        expected(out)
        return
    for text in expected:
        assert text in out, (text, out)


@pytest.mark.parametrize("name", PAGES)
def test_code_fences_run_or_say_they_do_not(name: str) -> None:
    """Only ```python blocks run: every other fence is a shell command or another
    library's code, titled "... not run ..." so the reader knows it was not tested."""
    text = (GUIDES / f"{name}.md").read_text()
    for info in re.findall(r"^```(\S.*)$", text, flags=re.MULTILINE):
        assert info in ("python", "bash") or re.fullmatch(r'py title=".*not run.*"', info), info


def test_relative_links_reach_pages() -> None:
    for name in PAGES:
        for target in re.findall(
            r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", (GUIDES / f"{name}.md").read_text()
        ):
            assert (GUIDES / target).resolve().is_file(), (name, target)
