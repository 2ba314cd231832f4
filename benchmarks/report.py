"""Tables, targets and run metadata for benchmarks/linear_step.py."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

from contenders import ALLOCATOR_VARS, OURS, Contender

# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """HEAD of the checkout the layers come from (uncommitted edits are not reflected)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def allocator() -> dict[str, str | None]:
    return {v: os.environ.get(v) for v in ALLOCATOR_VARS}


def training_rows(contenders: list[Contender], batch_sizes: list[int]) -> list[dict]:
    base = next((c for c in contenders if c.name == "nn.Linear"), None)
    rows = []
    for batch in batch_sizes:
        for c in contenders:
            ts = c.times.get(batch)
            if not ts:
                continue
            row: dict = {
                "contender": c.name,
                "estimator": c.estimator,
                "batch": batch,
                "median_ms": statistics.median(ts),
                "min_ms": min(ts),
                "max_ms": max(ts),
                "repeats_ms": ts,
                "notes": c.notes,
            }
            if base is not None and base.times.get(batch):
                bt = base.times[batch]
                row["ratio"] = statistics.median(a / b for a, b in zip(ts, bt, strict=True))
                row["ratio_of_medians"] = statistics.median(ts) / statistics.median(bt)
            rows.append(row)
    return rows


TARGETS = (  # (contender, batch, max ratio to nn.Linear)
    (OURS["reparameterization"], 1024, 1.25),
    (OURS["reparameterization"], 128, 2.0),
    (OURS["flipout"], 1024, 2.2),
    (OURS["local_reparameterization"], 1024, 2.2),
)


def check_targets(rows: list[dict]) -> list[dict]:
    """Ratio targets, and 'every estimator faster than every peer counterpart'."""
    by = {(r["contender"], r["batch"]): r for r in rows}
    out = []
    for name, batch, limit in TARGETS:
        r = by.get((name, batch))
        if r is not None and "ratio" in r:
            out.append(
                {
                    "check": f"{name} @ {batch} <= {limit}x nn.Linear",
                    "value": round(r["ratio"], 3),
                    "pass": r["ratio"] <= limit,
                }
            )
    for r in rows:
        est = r["estimator"]
        if est is None or r["contender"] != OURS.get(est):
            continue
        for p in rows:
            if p["batch"] == r["batch"] and p["estimator"] == est and p is not r:
                out.append(
                    {
                        "check": f"{r['contender']} faster than {p['contender']} @ {r['batch']}",
                        "value": round(r["median_ms"] / p["median_ms"], 3),
                        "pass": r["median_ms"] < p["median_ms"],
                    }
                )
    return out


def format_report(
    meta: dict, rows: list[dict], pred: list[dict], checks: list[dict], skipped: dict
) -> str:
    lines = [
        "Bayesian linear layers: training step of MLP 784-512-512-10 (ReLU), "
        "fwd + CE + KL/N + bwd + Adam",
        f"torch {meta['torch']} | threads {meta['threads']} | CPU {meta['cpu']} | {meta['date']}",
        "allocator: "
        + (
            ", ".join(f"{k}={v}" for k, v in meta["allocator"].items() if v is not None)
            or "glibc defaults (MALLOC_* unset; `make bench` sets them)"
        ),
        f"load average (1 min) {meta['loadavg_1min_start']} at start, "
        f"{meta['loadavg_1min_end']} at end, {meta['cpu_count']} CPUs"
        + (f"\nWARNING: {meta['warning']}" if "warning" in meta else ""),
        f"clock {meta['clock']}; "
        f"repeats {meta['repeats']} x median of {meta['steps']} steps, warm-up "
        f"{meta['warmup']} steps; ratio = median of paired per-repeat ratios to nn.Linear",
        "",
    ]
    w = max([len(r["contender"]) for r in rows] + [10])
    for batch in meta["batch_sizes"]:
        sub = [r for r in rows if r["batch"] == batch]
        if not sub:
            continue
        lines.append(f"batch {batch}")
        lines.append(f"  {'contender':<{w}}  {'median ms':>10}  {'min..max ms':>15}  {'ratio':>6}")
        for r in sub:
            rng = f"{r['min_ms']:.2f}..{r['max_ms']:.2f}"
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
            lines.append(f"  {r['contender']:<{w}}  {r['median_ms']:>10.2f}  {rng:>15}  {ratio:>6}")
        lines.append("")
    if pred:
        lines.append(
            f"predictive: bl.predict(model, x, num_samples={meta['num_samples']}) "
            "vs Python loop under torch.no_grad()"
        )
        lines.append(
            f"  {'estimator':<30}  {'batch':>5}  {'vectorised ms':>13}  {'loop ms':>9}  "
            f"{'speedup':>7}"
        )
        for p in pred:
            if "skipped" in p:
                lines.append(f"  {p['estimator']:<30}  {p.get('batch', ''):>5}  {p['skipped']}")
                continue
            flag = "  (output requires grad!)" if p["predict_output_requires_grad"] else ""
            lines.append(
                f"  {p['estimator']:<30}  {p['batch']:>5}  {p['vectorised_ms']:>13.2f}  "
                f"{p['loop_ms']:>9.2f}  {p['speedup']:>6.2f}x{flag}"
            )
        lines.append("")
    if checks:
        lines.append("targets")
        for c in checks:
            lines.append(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['check']}  ({c['value']})")
        lines.append("")
    if skipped:
        lines.append("skipped")
        for k, v in skipped.items():
            lines.append(f"  {k}: {v}")
        lines.append("")
    return "\n".join(lines)
