"""Command line and result file shared by the training-step benchmarks (``*_step.py``)."""

from __future__ import annotations

import argparse
import json
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
