"""Speed of the member layers (rank-1, BatchEnsemble) against nn.Linear and nn.Conv2d.

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/member_step.py [--quick] [--threads 2] [--repeats 9]

Every layer of a model is replaced: ``LinearBatchEnsemble`` / ``LinearRank1`` in the MLP
784-512-512-10 of ``linear_step.py`` (batch 128 and 1024), ``Conv2dBatchEnsemble`` /
``Conv2dRank1`` in the CNN of ``cnn_lstm_step.py`` (batch 128; its linear read-out stays
``nn.Linear``); ``ensemble_size=4``, constructor defaults, the batch split across the
members (the layers' behaviour: no tiling). Two measurements per model and batch:

* ``train``: cross-entropy + ``sum(bl.losses(model)) / N`` + backward + Adam;
* ``forward``: ``model(x)`` under ``torch.no_grad()`` (training mode: rank-1 draws its
  factors).

Contenders run round-robin inside every repeat (the start rotates); a repeat's time is the
median of a few steps; the ratio is the median of the paired per-repeat ratios to the
deterministic model. The target: at most ``TARGET`` times the deterministic model at
batch 128 (the members' extra work is ``O(in + out)`` per example, not ``O(in · out)``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_cli import parse_and_pin, step_parser, write_results
from cnn_lstm_step import Step, _cnn, adam_step, run  # one timing loop for all benchmarks
from contenders import NUM_TRAIN, mlp
from report import cpu_model, loadavg
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.layers.batch_ensemble import Conv2dBatchEnsemble, LinearBatchEnsemble
from bayesian_layers.layers.rank1 import Conv2dRank1, LinearRank1

ENSEMBLE_SIZE = 4
TARGET = 1.3  # max ratio to the deterministic model at batch 128
LAYERS: dict[str, tuple[Callable[..., nn.Module], ...]] = {
    "mlp": (nn.Linear, LinearBatchEnsemble, LinearRank1),
    "cnn": (nn.Conv2d, Conv2dBatchEnsemble, Conv2dRank1),
}


def _model(kind: str, layer: Callable[..., nn.Module]) -> nn.Module:
    def make(*args: object, **kwargs: object) -> nn.Module:
        if layer in (nn.Linear, nn.Conv2d):
            return layer(*args, **kwargs)
        return layer(*args, ensemble_size=ENSEMBLE_SIZE, **kwargs)

    torch.manual_seed(0)
    return mlp(make) if kind == "mlp" else nn.Sequential(*_cnn(make), nn.Linear(128, 10))


def contenders(kind: str, x: Tensor, y: Tensor) -> tuple[dict[str, Step], dict[str, Step]]:
    """``(training steps, forward passes)`` by layer name, the deterministic model first."""
    train: dict[str, Step] = {}
    forward: dict[str, Step] = {}
    for layer in LAYERS[kind]:
        name = f"nn.{layer.__name__}" if layer in (nn.Linear, nn.Conv2d) else layer.__name__
        model = _model(kind, layer)

        def loss(model: nn.Module = model) -> Tensor:
            nll = F.cross_entropy(model(x), y)
            terms = bl.losses(model)
            return nll + sum(terms) / NUM_TRAIN if terms else nll

        @torch.no_grad()
        def fwd(model: nn.Module = model) -> Tensor:
            return model(x)

        train[name], forward[name] = adam_step(model, loss), fwd
    return train, forward


def targets(results: dict[str, dict]) -> list[dict]:
    """``ratio <= TARGET`` for every member layer at batch 128, training and forward."""
    out = []
    for key, rows in results.items():
        if not key.endswith("@128"):
            continue
        for name, row in list(rows.items())[1:]:
            ok = row["ratio"] <= TARGET
            out.append({"check": f"{key} {name} <= {TARGET}x", "value": row["ratio"], "pass": ok})
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (see README, Caveats)")  # fmt: skip
    args = parse_and_pin(parser, argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, 5, 3)
    sizes = {"mlp": (8,), "cnn": (8,)} if args.quick else {"mlp": (128, 1024), "cnn": (128,)}
    meta = {"threads": args.threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "clock": args.clock, "ensemble_size": ENSEMBLE_SIZE,
            "loadavg_1min_start": loadavg()}  # fmt: skip
    results: dict[str, dict] = {}
    for kind, batches in sizes.items():
        for batch in batches:
            torch.manual_seed(0)
            shape = (batch, 784) if kind == "mlp" else (batch, 3, 32, 32)
            x, y = torch.randn(shape), torch.randint(0, 10, (batch,))
            train, forward = contenders(kind, x, y)
            results[f"{kind} train@{batch}"] = run(train, repeats, per, warm, clock)
            results[f"{kind} forward@{batch}"] = run(forward, repeats, per, warm, clock)
    meta["loadavg_1min_end"] = loadavg()
    print(f"member layers (ensemble_size={ENSEMBLE_SIZE}) against the deterministic layer: "
          f"{args.threads} threads, clock {args.clock}, median of {repeats} repeats; load average "
          f"{meta['loadavg_1min_start']} -> {meta['loadavg_1min_end']}")  # fmt: skip
    for key, rows in results.items():
        print(key)
        base = next(iter(rows.values()))["repeats_ms"]
        for name, r in rows.items():
            paired = [a / b for a, b in zip(r["repeats_ms"], base, strict=True)]
            r["paired_range"] = [min(paired), max(paired)]
            print(f"  {name:22s} {r['median_ms']:9.2f} ms  {r['ratio']:5.2f}x  "
                  f"(repeats {min(paired):.2f}..{max(paired):.2f})")  # fmt: skip
    checks = targets(results)
    for c in checks:
        print(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['check']}  ({c['value']:.3f})")
    write_results(args, "member_step", {"meta": meta, "targets": checks, **results})
    return results


if __name__ == "__main__":
    main()
