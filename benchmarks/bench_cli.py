"""Command line and result file shared by the training-step benchmarks (``*_step.py``)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def step_parser(doc: str, repeats: int = 9) -> argparse.ArgumentParser:
    """``--quick``, ``--threads``, ``--repeats`` and ``--out``; add a benchmark's own flags."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run, for tests")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def parse_and_pin(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, pin torch's intra-op threads and seed torch with 0."""
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def write_results(args: argparse.Namespace, name: str, results: dict) -> Path:
    """``{out}/{name}.json`` (``{name}.quick.json`` for ``--quick``, never over a full run)."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}{'.quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1))
    return path


def sampling_parser(doc: str, num_samples: int) -> argparse.ArgumentParser:
    """:func:`step_parser` with ``--num-samples`` (K) and ``--clock wall|cpu``."""
    parser = step_parser(doc)
    parser.add_argument("--num-samples", type=int, default=num_samples, help="K function samples")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (see README, Caveats)")  # fmt: skip
    return parser


def parse_sampling(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, Callable[[], float]]:
    """:func:`parse_and_pin` for a :func:`sampling_parser`, one inter-op thread, and the
    clock ``--clock`` names."""
    args = parse_and_pin(parser, argv)
    if min(args.repeats, args.threads, args.num_samples) < 1:
        parser.error("--repeats, --threads and --num-samples must be >= 1")
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (main() called twice in one process)
        pass
    return args, (time.perf_counter if args.clock == "wall" else time.process_time)


def paired(rows: dict[str, dict], num: str, den: str) -> dict[str, float]:
    """Median and range of the per-repeat ratios ``num / den`` (same rounds, so paired)."""
    pairs = [a / b for a, b in zip(rows[num]["repeats_ms"], rows[den]["repeats_ms"], strict=True)]
    return {"ratio": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}


def print_paired(key: str, rows: dict[str, dict], width: int = 48) -> None:
    """Each row's median time and its paired ratio (median, min..max) to the first row."""
    base = next(iter(rows))
    print(f"{key}  (ratio: paired median to '{base}', min..max over repeats)")
    for name, r in rows.items():
        p = paired(rows, name, base)
        print(f"  {name:{width}s} {r['median_ms']:9.2f} ms  {p['ratio']:6.2f}x  "
              f"({p['min']:.2f}..{p['max']:.2f})")  # fmt: skip
