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
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_TRAIN = 60_000  # N in the ELBO: loss = nll_mean + KL / N
SIZES = (784, 512, 512, 10)
NUM_CLASSES = SIZES[-1]
ALLOCATOR_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Which of our estimators each peer contender is the counterpart of.
OURS = {
    "reparameterization": "ours: LinearReparameterization",
    "flipout": "ours: LinearFlipout",
    "local_reparameterization": "ours: LinearLocalReparameterization",
}


# --------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One model + optimizer + the closure that runs one full training step."""

    name: str
    estimator: str | None  # which of OURS it is compared with (None for nn.Linear)
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    model: nn.Module
    notes: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)  # batch -> per-repeat ms


def _mlp(make_linear: Callable[[int, int], nn.Module]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        mods.append(make_linear(fan_in, fan_out))
        if i < len(SIZES) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _adam_step(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a loss closure into a full step with the same Adam (default settings) for all."""
    opt = torch.optim.Adam(model.parameters())

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        return loss

    return step


def make_plain() -> Contender:
    model = _mlp(nn.Linear)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    return Contender("nn.Linear", None, _adam_step(model, loss_fn), model, "deterministic")


def make_ours(cls_name: str, estimator: str) -> Contender:
    import bayesian_layers as bl
    from bayesian_layers import layers

    cls = getattr(layers, cls_name)
    model = _mlp(lambda i, o: cls(i, o))

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nll = F.cross_entropy(model(x), y)
        return nll + sum(bl.losses(model)) / NUM_TRAIN

    return Contender(
        OURS[estimator],
        estimator,
        _adam_step(model, loss_fn),
        model,
        "defaults: N(0,1) prior, closed-form KL via bl.losses(model)",
    )


class _BayesianTorchMLP(nn.Module):
    """bayesian-torch's own pattern: each layer returns (out, kl); the model sums the kls."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(cls(i, o) for i, o in zip(SIZES[:-1], SIZES[1:], strict=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl_sum = x.new_zeros(())
        for i, fc in enumerate(self.fcs):
            x, kl = fc(x)
            kl_sum = kl_sum + kl
            if i < len(self.fcs) - 1:
                x = F.relu(x)
        return x, kl_sum


def make_bayesian_torch(cls_name: str, estimator: str) -> Contender:
    from bayesian_torch.layers import LinearFlipout, LinearReparameterization

    cls = {"LinearReparameterization": LinearReparameterization, "LinearFlipout": LinearFlipout}[
        cls_name
    ]
    model = _BayesianTorchMLP(cls)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out, kl = model(x)
        return F.cross_entropy(out, y) + kl / NUM_TRAIN

    return Contender(
        f"bayesian-torch: {cls_name}",
        estimator,
        _adam_step(model, loss_fn),
        model,
        "defaults: N(0,1) prior, rho_init=-3; KL returned by forward (per-layer mean)",
    )


def make_torchbnn() -> Contender:
    import torchbnn

    prior_sigma = 0.1  # the value in torchbnn's README/demos; cost does not depend on it
    model = _mlp(lambda i, o: torchbnn.BayesLinear(0.0, prior_sigma, i, o))
    kl_loss = torchbnn.BKLLoss(reduction="sum", last_layer_only=False)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + kl_loss(model) / NUM_TRAIN

    return Contender(
        "torchbnn: BayesLinear",
        "reparameterization",
        _adam_step(model, loss_fn),
        model,
        f"prior N(0,{prior_sigma}) (README value); KL via BKLLoss(reduction='sum')",
    )


def make_blitz() -> Contender:
    from blitz.modules import BayesianLinear
    from blitz.utils import variational_estimator

    @variational_estimator
    class BlitzMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(BayesianLinear)  # library defaults for prior and init

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = BlitzMLP()

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + model.nn_kl_divergence() / NUM_TRAIN

    return Contender(
        "blitz: BayesianLinear",
        "reparameterization",
        _adam_step(model, loss_fn),
        model,
        "defaults: prior pi=1, sigma1=0.1, sigma2=0.4; Monte Carlo KL via nn_kl_divergence()",
    )


# name, factory, pip distribution (None: ours/torch)
FACTORIES: list[tuple[str, Callable[[], Contender], str | None]] = [
    ("nn.Linear", make_plain, None),
    (
        OURS["reparameterization"],
        lambda: make_ours("LinearReparameterization", "reparameterization"),
        None,
    ),
    (OURS["flipout"], lambda: make_ours("LinearFlipout", "flipout"), None),
    (
        OURS["local_reparameterization"],
        lambda: make_ours("LinearLocalReparameterization", "local_reparameterization"),
        None,
    ),
    (
        "bayesian-torch: LinearReparameterization",
        lambda: make_bayesian_torch("LinearReparameterization", "reparameterization"),
        "bayesian-torch",
    ),
    (
        "bayesian-torch: LinearFlipout",
        lambda: make_bayesian_torch("LinearFlipout", "flipout"),
        "bayesian-torch",
    ),
    ("torchbnn: BayesLinear", make_torchbnn, "torchbnn"),
    ("blitz: BayesianLinear", make_blitz, "blitz-bayesian-pytorch"),
]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _short_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    return msg.splitlines()[0][:160] if msg else type(exc).__name__


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
                skipped[c.name] = f"failed at batch {batch}: {_short_error(exc)}"
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
                        skipped[c.name] = f"failed at batch {batch}: {_short_error(exc)}"
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
        return [], f"bl.predict unavailable: {_short_error(exc)}"

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
        model = _mlp(lambda i, o, cls=cls: cls(i, o))
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
                rows.append({"estimator": cls_name, "batch": batch, "skipped": _short_error(exc)})
                log(f"  ! predict {cls_name} batch {batch}: {_short_error(exc)}")
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
# Reporting
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
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


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _allocator() -> dict[str, str | None]:
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

    alloc = _allocator()
    meta = {
        "benchmark": "linear_step",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "allocator": alloc,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "loadavg_1min_start": _loadavg(),
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
            d: _version(d)
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
            skipped[name] = f"{reason} ({_short_error(exc)})" if reason else _short_error(exc)
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
    meta["loadavg_1min_end"] = _loadavg()
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
