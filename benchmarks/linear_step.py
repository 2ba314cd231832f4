"""Training-step and predictive speed of Bayesian linear layers against nn.Linear and peers.

Run with ``make bench`` (which also installs the peer libraries and fixes the allocator
setting), or directly::

    .venv/bin/python benchmarks/linear_step.py [--quick] [--threads 2] [--repeats 9]
        [--batch-sizes 128,1024] [--only NAME,...] [--clock wall|cpu] [--out PATH]

Two measurements:

1. *Training step*: forward + cross-entropy + KL (each library's own KL mechanism, scaled
   by 1/N, N = 60000) + backward + ``torch.optim.Adam`` step of an MLP 784-512-512-10
   (ReLU) on random data. Contenders: ``nn.Linear``; our three estimators; and, when
   importable, bayesian-torch (Reparameterization, Flipout), torchbnn (BayesLinear) and
   blitz (BayesianLinear).
2. *Predictive*: ``bl.predict(model, x, num_samples=32)`` (vectorised) against a Python
   loop of 32 forward calls under ``torch.no_grad()``, for each of our estimators.

Contenders are interleaved round-robin inside every repeat (the starting contender rotates
from one repeat to the next), so machine noise hits all of them alike. A repeat's time for
a contender is the median of several consecutive steps; the reported time is the median
over repeats, and the ratio to ``nn.Linear`` is the median over repeats of the paired
per-repeat ratios. See benchmarks/README.md for what each peer is configured with.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from contenders import (
    FACTORIES,
    NUM_CLASSES,
    NUM_TRAIN,
    RESULTS_DIR,
    SIZES,
    THREAD_VARS,
    Contender,
    dist_version,
    mlp,
    short_error,
)
from report import (
    allocator,
    check_targets,
    cpu_model,
    format_report,
    git_commit,
    loadavg,
    training_rows,
)
from torch import nn

# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


# "wall": elapsed time. "cpu": CPU time of the whole process (all threads), which does not
# count time spent descheduled by other processes; see README (pair it with OMP_WAIT_POLICY
# =PASSIVE so idle OpenMP threads sleep instead of spinning).
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
_clock = CLOCKS["wall"]


def _time_calls(fn: Callable[[], object], n: int) -> float:
    """Median time (ms, on the selected clock) of n consecutive calls."""
    ts = []
    for _ in range(n):
        t0 = _clock()
        fn()
        ts.append((_clock() - t0) / 1e6)
    return statistics.median(ts)


def bench_training(
    contenders: list[Contender],
    batch_sizes: list[int],
    repeats: int,
    steps: int,
    warmup: int,
    seed: int,
    skipped: dict[str, str],
    log: Callable[[str], None],
) -> list[Contender]:
    for batch in batch_sizes:
        g = torch.Generator().manual_seed(seed + batch)
        x = torch.randn(batch, SIZES[0], generator=g)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        # Warm-up (also catches contenders that fail: they are dropped with a note).
        for c in list(contenders):
            try:
                for _ in range(warmup):
                    loss = c.step(x, y)
                if not torch.isfinite(loss.detach()).item():
                    c.notes += f"; non-finite loss at batch {batch}"
            except Exception as exc:  # a broken contender must not sink the others
                skipped[c.name] = f"failed at batch {batch}: {short_error(exc)}"
                log(f"  ! {c.name}: {skipped[c.name]}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
                contenders.remove(c)
        if not contenders:
            break
        for c in contenders:
            c.times[batch] = []
        gc.collect()
        gc.disable()
        try:
            for r in range(repeats):
                k = r % len(contenders)
                for c in contenders[k:] + contenders[:k]:  # rotated round-robin
                    try:
                        t = _time_calls(lambda c=c, x=x, y=y: c.step(x, y), steps)
                    except Exception as exc:
                        skipped[c.name] = f"failed at batch {batch}: {short_error(exc)}"
                        log(f"  ! {c.name}: {skipped[c.name]}")
                        contenders.remove(c)
                        c.times.pop(batch, None)
                        continue
                    c.times[batch].append(t)
        finally:
            gc.enable()
        log(f"  batch {batch}: done ({repeats} repeats x {steps} steps)")
    return contenders


def bench_predict(
    batch_sizes: list[int],
    num_samples: int,
    repeats: int,
    calls: int,
    seed: int,
    log: Callable[[str], None],
) -> tuple[list[dict], str | None]:
    try:
        import bayesian_layers as bl
        from bayesian_layers import layers

        predict = bl.predict
    except (ImportError, AttributeError) as exc:
        return [], f"bl.predict unavailable: {short_error(exc)}"

    rows: list[dict] = []
    for cls_name in (
        "LinearReparameterization",
        "LinearFlipout",
        "LinearLocalReparameterization",
    ):
        cls = getattr(layers, cls_name, None)
        if cls is None:
            rows.append({"estimator": cls_name, "skipped": "not in bayesian_layers.layers"})
            continue
        torch.manual_seed(seed)
        model = mlp(lambda i, o, cls=cls: cls(i, o))
        for batch in batch_sizes:
            x = torch.randn(batch, SIZES[0], generator=torch.Generator().manual_seed(seed))

            def vectorised(model: nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
                return predict(model, x, num_samples=num_samples).samples

            def loop(model: nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
                with torch.no_grad():
                    return torch.stack([model(x) for _ in range(num_samples)])

            try:
                out = vectorised()
                ref = loop()
                if tuple(out.shape) != tuple(ref.shape):
                    raise ValueError(f".samples shape {tuple(out.shape)} != {tuple(ref.shape)}")
                grad_graph = bool(out.requires_grad)
                vec_t: list[float] = []
                loop_t: list[float] = []
                gc.collect()
                gc.disable()
                try:
                    for r in range(repeats):
                        pair = [(vectorised, vec_t), (loop, loop_t)]
                        for fn, acc in pair if r % 2 == 0 else pair[::-1]:
                            acc.append(_time_calls(fn, calls))
                finally:
                    gc.enable()
            except Exception as exc:
                rows.append({"estimator": cls_name, "batch": batch, "skipped": short_error(exc)})
                log(f"  ! predict {cls_name} batch {batch}: {short_error(exc)}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
                continue
            ratios = [lt / vt for lt, vt in zip(loop_t, vec_t, strict=True)]
            rows.append(
                {
                    "estimator": cls_name,
                    "batch": batch,
                    "num_samples": num_samples,
                    "vectorised_ms": statistics.median(vec_t),
                    "loop_ms": statistics.median(loop_t),
                    "speedup": statistics.median(ratios),
                    "vectorised_ms_repeats": vec_t,
                    "loop_ms_repeats": loop_t,
                    "predict_output_requires_grad": grad_graph,
                }
            )
        log(f"  predict {cls_name}: done")
    return rows, None


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _int_list(s: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from exc
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fast smoke run (few repeats/steps)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default 2; quick 1, which stays fast on a busy machine)",
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats (default 9; quick 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per repeat (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3)")
    p.add_argument(
        "--batch-sizes", type=_int_list, default=[128, 1024], help="training batch sizes"
    )
    p.add_argument(
        "--predict-batch-sizes",
        type=_int_list,
        default=None,
        help="predictive batch sizes (default 16,1024; quick 16,128)",
    )
    p.add_argument("--num-samples", type=int, default=32, help="function samples for predict")
    p.add_argument("--no-predict", action="store_true", help="skip the predictive benchmark")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated substrings; run only matching contenders (nn.Linear always)",
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time (default) or process CPU time (robust on a busy machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/linear_step.json; "
        "with --quick linear_step.quick.json)",
    )
    a = p.parse_args(argv)
    if a.threads is None:
        a.threads = 1 if a.quick else 2
    if a.repeats is None:
        a.repeats = 2 if a.quick else 9
    if a.steps is None:
        a.steps = 1 if a.quick else 5
    if a.predict_batch_sizes is None:
        a.predict_batch_sizes = [16, 128] if a.quick else [16, 1024]
    if a.warmup is None:
        a.warmup = 1 if a.quick else 3
    if a.out is None:
        a.out = RESULTS_DIR / ("linear_step.quick.json" if a.quick else "linear_step.json")
    if min(a.repeats, a.steps, a.threads, a.num_samples) < 1 or a.warmup < 1:
        p.error("--repeats, --steps, --warmup, --threads and --num-samples must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. when main() is called twice in one process)
        pass

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    alloc = allocator()
    meta = {
        "benchmark": "linear_step",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "allocator": alloc,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "loadavg_1min_start": loadavg(),
        "model": "MLP " + "-".join(map(str, SIZES)) + " (ReLU)",
        "num_train": NUM_TRAIN,
        "optimizer": "torch.optim.Adam (defaults)",
        "batch_sizes": args.batch_sizes,
        "predict_batch_sizes": args.predict_batch_sizes,
        "num_samples": args.num_samples,
        "repeats": args.repeats,
        "steps": args.steps,
        "clock": args.clock,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "warmup": args.warmup,
        "quick": args.quick,
        "seed": args.seed,
        "versions": {
            d: dist_version(d)
            for d in ("bayesian-layers", "bayesian-torch", "torchbnn", "blitz-bayesian-pytorch")
        },
    }
    log(
        "allocator: "
        + (
            ", ".join(f"{k}={v}" for k, v in alloc.items() if v is not None)
            or "glibc defaults (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ unset)"
        )
        + f" | threads {meta['threads']} | torch {meta['torch']}"
    )

    only = [s.strip().lower() for s in args.only.split(",")] if args.only else None
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    for name, factory, _dist in FACTORIES:
        if only and name != "nn.Linear" and not any(s in name.lower() for s in only):
            continue
        torch.manual_seed(args.seed)
        try:
            contenders.append(factory())
        except Exception as exc:  # peer not installed, or our layer not written yet
            reason = (
                "not installed"
                if isinstance(exc, ModuleNotFoundError)
                else ("not available" if isinstance(exc, (ImportError, AttributeError)) else "")
            )
            skipped[name] = f"{reason} ({short_error(exc)})" if reason else short_error(exc)
            log(f"  skip {name}: {skipped[name]}")
    log(f"training step: {len(contenders)} contenders, batch sizes {args.batch_sizes}")
    contenders = bench_training(
        contenders,
        args.batch_sizes,
        args.repeats,
        args.steps,
        args.warmup,
        args.seed,
        skipped,
        log,
    )
    rows = training_rows(contenders, args.batch_sizes)

    pred: list[dict] = []
    if not args.no_predict:
        log(f"predictive: batch sizes {args.predict_batch_sizes}, {args.num_samples} samples")
        pred_repeats = 2 if args.quick else args.repeats
        pred_calls = 1
        pred, why = bench_predict(
            args.predict_batch_sizes, args.num_samples, pred_repeats, pred_calls, args.seed, log
        )
        meta["predict_repeats"], meta["predict_calls"] = pred_repeats, pred_calls
        if why:
            skipped["bl.predict"] = why
    checks = check_targets(rows)
    meta["loadavg_1min_end"] = loadavg()
    busy = [v for v in (meta["loadavg_1min_start"], meta["loadavg_1min_end"]) if v is not None]
    if busy and max(busy) > (os.cpu_count() or 1):
        meta["warning"] = f"load average {max(busy):.1f} > {os.cpu_count()} CPUs: " + (
            "other processes competed for the CPUs; absolute times are unreliable, ratios less "
            "so (a busy machine is better measured with --threads 1 --clock cpu)"
            if args.clock == "wall"
            else "other processes competed for the CPUs (CPU time is affected far less than "
            "wall time, mostly through shared caches)"
        )

    print(format_report(meta, rows, pred, checks, skipped))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "training": rows,
        "predict": pred,
        "targets": checks,
        "skipped": skipped,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
