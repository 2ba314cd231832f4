"""The README's quickstart is a complete program: run it as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    start = text.index("```python\n", text.index("## Quickstart")) + len("```python\n")
    return text[start : text.index("\n```", start)]


def test_quickstart_runs_as_written_and_learns_digits() -> None:
    code = _quickstart()
    assert "load_digits" in code  # real data, defined in the snippet itself
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    match = re.search(
        r"accuracy (\d\.\d+), ECE (\d\.\d+), mean mutual information (\d\.\d+)", run.stdout
    )
    assert match, run.stdout
    accuracy, ece, mutual_information = map(float, match.groups())
    # 450 test digits: a model that learned nothing scores ~0.1; trained, this one scores ~0.97
    assert accuracy > 0.9
    assert 0.0 <= ece < 1.0
    assert mutual_information > 0.0  # the K function samples disagree
