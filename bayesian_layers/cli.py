"""The ``bayesian-layers`` command.

The command comes with the base package; its ``demo`` needs the ``demo`` extra
(``pip install 'bayesian-layers[demo]'``) and says so, with exit status 1, when a
module of it is missing.

Example:
    .. code-block:: console

        $ bayesian-layers demo                  # full run, figures in demo_output/
        $ bayesian-layers demo --quick --out-dir /tmp/demo
        $ bayesian-layers demo --kl-weight 0.1 --estimator reparameterization
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .demo.config import DemoResult


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _version() -> str:
    from . import __version__

    return __version__


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def format_report(result: DemoResult) -> str:
    """The table, the figure paths and the notes as text."""
    header = ("dataset", "metric", "goal", "deterministic", "bayesian", "better")
    body = [
        (r.dataset, r.metric, r.goal, _fmt(r.deterministic), _fmt(r.bayesian), r.better)
        for r in result.rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 or i == 5 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(header))
    out = [rule, line(header), rule, *map(line, body), rule]
    if result.diagnosis:
        out += [f"bl.diagnose, Bayesian digits model on the validation split: {result.diagnosis}"]
    out += [f"figure: {p}" for p in result.figures]
    out += [f"note: {n}" for n in result.notes]
    out.append(f"wall time: {result.seconds:.1f} s")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per task (``demo``)."""
    from .demo.config import ESTIMATORS, DemoConfig

    default = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="bayesian-layers", description="Bayesian Layers for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="deterministic vs Bayesian MLP on digits and diabetes (scikit-learn data)",
        description="Train a deterministic MLP and the same MLP with Bayesian layers on "
        "scikit-learn's digits (accuracy, NLL, ECE, OOD AUROC) and diabetes (RMSE, NLL, "
        "90% interval coverage); print one table and write two PNG figures.",
    )
    demo.add_argument("--seed", type=int, default=default.seed, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    demo.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs for every model (default: tuned)"
    )
    demo.add_argument(
        "--kl-weight",
        type=_positive_float,
        default=default.kl_weight,
        help="weight of the KL term in the ELBO; 1.0 is the full KL (default), <1 tempers it",
    )
    demo.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=default.estimator,
        help=f"weight estimator of the Bayesian layers (default {default.estimator})",
    )
    demo.add_argument(
        "--out-dir",
        type=Path,
        default=default.out_dir,
        help=f"where the PNG figures go (default {default.out_dir}/)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesian-layers`` console script; returns the exit status.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 when the ``demo`` extra is missing (a one-line message on
        stderr names the missing modules and ``pip install 'bayesian-layers[demo]'``).
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import DemoConfig, missing_message, missing_modules, run_demo

        missing = missing_modules()
        if missing:
            print(f"bayesian-layers demo: {missing_message(missing)}", file=sys.stderr)
            return 1

        config = DemoConfig(
            seed=args.seed,
            quick=args.quick,
            epochs=args.epochs,
            kl_weight=args.kl_weight,
            estimator=args.estimator,
            out_dir=args.out_dir,
            progress=not args.no_progress,
        )
        print(format_report(run_demo(config)), flush=True)
    return 0
