"""benchmarks/posterior_peers.py runs in its tiny configuration: Laplace fit and IVON step
rows against the peers (time, paired ratios, per-process peak memory), a markdown table,
and a peer that cannot be imported reported as "not installed" instead of a crash. No
timing is asserted, only that every figure is there and consistent with its repeats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "posterior_peers.py"
PEERS = ("laplace-torch", "laplace-torch BackPACK")


def _run(out: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "posterior_peers.quick.md").exists()
    return json.loads((out / "posterior_peers.quick.json").read_text())


def _within_pairs(ratio: float, ours: list[float], theirs: list[float]) -> bool:
    pairs = [a / b for a, b in zip(ours, theirs, strict=True)]
    return min(pairs) <= ratio <= max(pairs)


def test_quick_run_against_installed_peers(tmp_path: Path) -> None:
    pytest.importorskip("laplace")
    pytest.importorskip("ivon")
    data = _run(tmp_path)
    assert data["meta"]["laplace-torch"] and data["meta"]["ivon-opt"]
    rows = {r["contender"]: r for r in data["laplace"]}
    assert set(rows) == {"ours", *PEERS}
    ours = rows["ours"]
    assert ours["status"] == "ok" and ours["median_ms"] > 0
    assert len(ours["repeats_ms"]) == ours["repeats"] == 2
    for name in PEERS:
        r = rows[name]
        assert r["status"] == "ok", r["status"]
        assert r["median_ms"] > 0
        assert _within_pairs(r["time_ours_over_peer"], ours["repeats_ms"], r["repeats_ms"])
    # quick mode measures the memory of ours and of the default back-end, in fresh processes
    for name in ("ours", "laplace-torch"):
        mem = rows[name]["memory"]
        assert mem["status"] == "ok", mem
        assert mem["peak_mib"] >= max(mem["retained_mib"], 0) and mem["baseline_mib"] > 100
    ratio = rows["laplace-torch"]["memory_ours_over_peer"]
    assert ratio == pytest.approx(
        ours["memory"]["peak_mib"] / rows["laplace-torch"]["memory"]["peak_mib"]
    )

    (ivon_row,) = data["ivon"]
    times = ivon_row["repeats_ms"]
    assert set(times) == {"Adam", "ivon-opt IVON", "ours IVON", "ours IVON, Bayesian layers"}
    assert ivon_row["missing"] == {}
    for key, value in ivon_row["ratios"].items():
        num, den = key.split(" / ")
        den = "ivon-opt IVON" if den == "ivon-opt" else den
        assert _within_pairs(value, times[num], times[den]), key
    assert len(ivon_row["ratios"]) == 5

    md = (tmp_path / "posterior_peers.quick.md").read_text()
    assert "| mlp | kron | last_layer | 32 | laplace-torch BackPACK |" in md
    assert "| mlp, 16 |" in md


def test_missing_peers_are_reported_not_installed(tmp_path: Path) -> None:
    """``laplace`` and ``ivon`` made unimportable (modules that raise ImportError first on
    the path): ours still runs, the peers' rows say "not installed"."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("laplace", "ivon"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} blocked by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked),
           os.environ.get("PYTHONPATH")]))}  # fmt: skip
    out = tmp_path / "out"
    data = _run(out, "--no-memory", "--configs", "cnn:diag:last_layer", env=env)
    rows = {r["contender"]: r for r in data["laplace"]}
    assert set(rows) == {"ours", *PEERS}
    assert {(r["model"], r["hessian"], r["subset"]) for r in data["laplace"]} == {
        ("cnn", "diag", "last_layer")
    }
    assert rows["ours"]["status"] == "ok" and rows["ours"]["median_ms"] > 0
    for name in PEERS:
        assert rows[name]["status"].startswith("not installed"), rows[name]
        assert "laplace blocked by the test" in rows[name]["status"]
    (ivon_row,) = data["ivon"]
    assert set(ivon_row["repeats_ms"]) == {"Adam", "ours IVON", "ours IVON, Bayesian layers"}
    assert ivon_row["missing"]["ivon-opt"].startswith("not installed")
    assert not any("ivon-opt" in key for key in ivon_row["ratios"])
    md = (out / "posterior_peers.quick.md").read_text()
    assert md.count("not installed") >= 3


def test_command_line_filters() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import posterior_peers as pp
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = pp.parse(["--configs", "cnn:kron:all,mlp:diag:last_layer", "--contenders", "ours"])
    assert args.configs == [("cnn", "kron", "all"), ("mlp", "diag", "last_layer")]
    assert args.contenders == ["ours"] and args.repeats == 7 and args.memory
    assert len(pp.parse([]).configs) == 8
    quick = pp.parse(["--quick"])
    assert quick.repeats == 2 and quick.configs == [("mlp", "kron", "last_layer")]
    assert pp.sizes(quick, "cnn", "diag", "all") == (32, 16)
    full = pp.parse([])
    assert pp.sizes(full, "cnn", "diag", "all") == (128, 128)  # one batch: see the docstring
    assert pp.sizes(full, "cnn", "kron", "all") == (1024, 128)
    with pytest.raises(SystemExit):
        pp.parse(["--configs", "cnn:full:all"])
