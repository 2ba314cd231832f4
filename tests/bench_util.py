"""Shared test helpers for the benchmarks' tests: import a benchmark script as a module,
run its quick mode, and check its paired ratios."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/{name}.py`` as a module (the benchmarks import their siblings by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_quick(name: str, out: Path, *args: str) -> tuple[dict, str]:
    """``benchmarks/{name}.py --quick`` on one thread with the CPU clock, writing under
    ``out`` (extra ``args`` appended): its JSON results and its printed output."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--threads", "1",
         "--clock", "cpu", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / f"{name}.quick.json").read_text()), proc.stdout


def assert_paired_within_range(rows: dict[str, dict], base: str) -> None:
    """Every ratio is the median of the paired per-repeat ratios to ``base``."""
    assert rows[base]["ratio"] == 1.0 and rows[base]["median_ms"] > 0
    for name, row in rows.items():
        pairs = [t / b for t, b in zip(row["repeats_ms"], rows[base]["repeats_ms"], strict=True)]
        assert min(pairs) <= row["ratio"] <= max(pairs), name
