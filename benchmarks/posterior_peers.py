"""Post-hoc Laplace fit and IVON step against their reference libraries, side by side.

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/posterior_peers.py [--quick] [--threads 1] [--repeats 7]

Models (float32, random data, 10 classes): the MLP 784-256-256-10 (ReLU) and LeNet-5 on
1x28x28 (conv 6@5x5 pad 2, max pool, conv 16@5x5, max pool, 120, 84, 10; ReLU).

* **Laplace fit**: ``bl.laplace.fit(model, loader, "classification", hessian, subset)``
  against ``laplace.Laplace(model, "classification", subset_of_weights=subset,
  hessian_structure=hessian).fit(loader)`` (laplace-torch, its default backend), on the
  same trained-or-not model and the same ``DataLoader``; ``hessian`` in diag / kron,
  ``subset`` in all / last_layer. Both calls end with the posterior ready to use: ours
  has written it into the layers (eigendecompositions of the Kronecker factors included),
  laplace-torch has its ``H`` (decomposed, for kron). *Time*: one fit per contender per
  repeat, contenders round-robin (start rotated), median over repeats; the ratio is the
  median of the paired per-repeat ratios ours / laplace-torch. *Memory*: every
  contender in its own fresh process (the same command line with ``--memory-child``):
  imports, model and data, one warm-up fit on two examples (lazy code paths), then the
  peak resident set size is reset (``/proc/self/clear_refs``), and the peak of the fit
  over the resident size just before it is reported (``VmHWM - VmRSS``; the fit's
  result is kept alive until the peak is read). Torch's CPU allocator is not seen by
  ``tracemalloc``; the process's resident set is.
* **IVON step**: forward + cross-entropy + backward + optimizer step at batch 128:
  ``torch.optim.Adam`` (defaults), ivon-opt's ``ivon.IVON`` and our
  ``bl.optim.IVON`` on the plain model (same hyperparameters, one MC sample, the
  reference's ``sampled_params(train=True)`` loop), and ours on the model converted with
  ``bl.to_bayesian`` (``ivon_parameters``, run in ``bl.posterior_mean`` mode: the way the
  posterior ends up in the layers). Same round-robin and paired ratios as
  ``cnn_lstm_step.py``.

A peer that cannot be imported is reported as ``not installed`` (its rows keep ours).
Results: ``results/posterior_peers.json`` (``.quick.json`` for ``--quick``) and a
markdown table ``results/posterior_peers.md`` (not written by ``--quick`` unless
``--out`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_cli import RESULTS
from report import cpu_model, git_commit, loadavg
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import bayesian_layers as bl
from bayesian_layers.optim import IVON, ivon_parameters

CLASSES = 10
ESS = 60_000  # IVON's effective sample size (the training-set size)
IVON_HYPER = dict(lr=0.1, ess=ESS, hess_init=1.0, beta1=0.9, beta2=0.99999, weight_decay=1e-4)
LAPLACE_GOAL = "not slower than laplace-torch; less memory for Kronecker on the CNN"
Fit = Callable[[], Any]
CLOCK: list[Callable[[], float]] = [time.perf_counter]  # set by main (--clock)


# ----------------------------------------------------------------------------- models
def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, CLASSES),
    )  # fmt: skip


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, CLASSES),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "cnn": lenet5}


def model_and_data(kind: str, n: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """The model (seeded) and ``n`` random examples ``(x, y)``."""
    torch.manual_seed(seed)
    model = MODELS[kind]()
    x = torch.randn(n, 784) if kind == "mlp" else torch.randn(n, 1, 28, 28)
    return model, x, torch.randint(0, CLASSES, (n,))


def loader(x: Tensor, y: Tensor, batch: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def peer(module: str) -> tuple[Any, str | None]:
    """``(module, None)`` or ``(None, "not installed: <why>")``."""
    try:
        return __import__(module), None
    except ImportError as err:  # also a peer whose own dependencies are missing
        return None, f"not installed ({type(err).__name__}: {err})"


def version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- Laplace
# laplace-torch's curvature back-ends compared: its default (curvlinops; the diagonal
# through torch.func Jacobians of the whole batch) and BackPACK (DiagGGNExact / KFLR).
LAPLACE_PEERS = {"laplace-torch": None, "laplace-torch BackPACK": "BackPackGGN"}


def laplace_fitters(
    model: nn.Module, data: DataLoader, hessian: str, subset: str
) -> dict[str, Fit]:
    """``{"ours": fit, <peer>: fit, ...}`` (peers only when importable); each call fits
    from scratch and returns the object that holds the posterior."""
    out: dict[str, Fit] = {}
    mine = copy.deepcopy(model)  # every contender its own copy: BackPACK extends the
    # model it is given with backward hooks, which torch.func (the default back-end) refuses

    def ours() -> Any:
        return bl.laplace.fit(mine, data, "classification", hessian, subset)

    out["ours"] = ours
    laplace, _ = peer("laplace")
    if laplace is None:
        return out
    for name, backend in LAPLACE_PEERS.items():
        kwargs: dict[str, Any] = {}
        if backend is not None:
            try:
                kwargs["backend"] = getattr(__import__("laplace.curvature").curvature, backend)
            except (ImportError, AttributeError):  # BackPACK is an optional dependency
                continue

        net = copy.deepcopy(model)

        def theirs(kwargs: dict[str, Any] = kwargs, net: nn.Module = net) -> Any:
            la = laplace.Laplace(
                net,
                "classification",
                subset_of_weights=subset,
                hessian_structure=hessian,
                **kwargs,
            )
            la.fit(data)
            return la

        out[name] = theirs
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    """One contender's peak memory of one fit, in this (fresh) process: prints JSON."""
    kind, hessian, subset, name = args.memory_child
    n, batch = sizes(args, kind, hessian, subset)
    model, x, y = model_and_data(kind, n)
    fits = laplace_fitters(model, loader(x, y, batch), hessian, subset)
    warm = laplace_fitters(model, loader(x[:2], y[:2], 2), hessian, subset)
    if name not in fits:
        print(json.dumps({"status": "not installed"}))
        return
    result = warm[name]()  # imports and first-call work happen here, not in the peak
    del result
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident set size
    except OSError as err:
        print(json.dumps({"status": f"no peak reset ({err})"}))
        return
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    result = fits[name]()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    del result
    print(json.dumps({"status": "ok", "peak_mib": (peak - before) / 1024,
                      "retained_mib": (after - before) / 1024,
                      "baseline_mib": before / 1024, "seconds": seconds}))  # fmt: skip


def measure_memory(
    args: argparse.Namespace, kind: str, hessian: str, subset: str, name: str
) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", kind, hessian, subset, name,
           "--threads", str(args.threads)] + (["--quick"] if args.quick else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"status": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sizes(args: argparse.Namespace, kind: str, hessian: str, subset: str) -> tuple[int, int]:
    """``(N, batch)`` of a Laplace configuration: the diagonal over all weights is so slow
    with laplace-torch's default back-end (a minute per batch of 128 for LeNet-5 on one
    thread) that it gets one batch."""
    if args.quick:
        return 32, 16
    return (128 if (hessian, subset) == ("diag", "all") else 1024), 128


def paired(a: list[float], b: list[float]) -> float:
    """The median of the paired per-repeat ratios ``a / b``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def round_robin(
    calls: dict[str, Fit],
    repeats: int,
    per: int,
    warmup: int | dict[str, Fit],
    failed: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """ms per call: ``repeats`` rounds, each the median of ``per`` calls per contender,
    contenders in turn with the start rotated; garbage collection off while timing.
    ``warmup``: calls of each before timing, or a dict of warm-up calls (run once).
    A contender that raises is dropped; its error goes into ``failed``."""
    names = list(calls)
    failed = {} if failed is None else failed
    for n, fn in calls.items():
        try:
            if isinstance(warmup, dict):
                warmup[n]()
            else:
                for _ in range(warmup):
                    fn()
        except Exception as err:  # noqa: BLE001 - reported as the row's status
            failed[n] = f"failed ({type(err).__name__}: {str(err)[:200]})"
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        for r in range(repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                if n in failed:
                    continue
                gc.collect()
                gc.disable()
                ts = []
                try:
                    for _ in range(per):
                        t0 = CLOCK[0]()
                        out = calls[n]()
                        ts.append((CLOCK[0]() - t0) * 1e3)
                        del out
                except Exception as err:  # noqa: BLE001 - reported as the row's status
                    failed[n] = f"failed ({type(err).__name__}: {str(err)[:200]})"
                    continue
                finally:
                    gc.enable()
                times[n].append(statistics.median(ts))
    finally:
        gc.enable()
    return {n: t for n, t in times.items() if n not in failed}


def laplace_rows(args: argparse.Namespace) -> list[dict]:
    """One row per configuration and contender (ours first; peers with their ratios)."""
    rows = []
    _, missing = peer("laplace")
    for kind, hessian, subset in args.configs:
        n, batch = sizes(args, kind, hessian, subset)
        repeats = min(args.repeats, 3) if (hessian, subset) == ("diag", "all") else args.repeats
        model, x, y = model_and_data(kind, n)
        calls = laplace_fitters(model, loader(x, y, batch), hessian, subset)
        warm = laplace_fitters(model, loader(x[:2], y[:2], 2), hessian, subset)
        if args.contenders:  # "ours" stays: it is what the ratios are of
            calls = {c: f for c, f in calls.items() if c == "ours" or c in args.contenders}
        failed: dict[str, str] = {}
        times = round_robin(calls, repeats, 1, warm, failed)
        base = {"model": kind, "hessian": hessian, "subset": subset, "n": n, "batch": batch,
                "repeats": repeats}  # fmt: skip
        mem = {}
        if args.memory:
            who = list(calls)[:2] if args.quick else list(calls)  # quick: ours, default peer
            mem = {c: measure_memory(args, kind, hessian, subset, c) for c in who}
        peers = [c for c in LAPLACE_PEERS if not args.contenders or c in args.contenders]
        names = list(calls) + ([] if not missing else peers)
        for c in names:
            row: dict[str, Any] = {**base, "contender": c}
            if c not in calls:
                row["status"] = missing
            elif c in failed:
                row["status"] = failed[c]
            else:
                row.update(status="ok", median_ms=statistics.median(times[c]), repeats_ms=times[c])
                if c != "ours" and "ours" in times:
                    row["time_ours_over_peer"] = paired(times["ours"], times[c])
                if c in mem:
                    row["memory"] = mem[c]
                    ours_m = mem.get("ours", {})
                    if c != "ours" and mem[c].get("status") == ours_m.get("status") == "ok":
                        row["memory_ours_over_peer"] = ours_m["peak_mib"] / mem[c]["peak_mib"]
            rows.append(row)
            print(_laplace_line(row), flush=True)
    return rows


def _laplace_line(r: dict) -> str:
    head = f"  {r['model']:3s} {r['hessian']:4s} {r['subset']:10s} {r['contender']:22s}"
    if r["status"] != "ok":
        return f"{head} {r['status']}"
    line = f"{head} {r['median_ms']:10.1f} ms"
    if "time_ours_over_peer" in r:
        line += f"  ours/peer {r['time_ours_over_peer']:6.3f}x"
    if r.get("memory", {}).get("status") == "ok":
        line += f"  peak {r['memory']['peak_mib']:8.1f} MiB"
    elif "memory" in r:
        line += f"  memory: {r['memory']['status']}"
    if "memory_ours_over_peer" in r:
        line += f"  ours/peer {r['memory_ours_over_peer']:5.2f}x"
    return line


# ------------------------------------------------------------------------------- IVON
def ivon_steps(
    kind: str, x: Tensor, y: Tensor, stack: contextlib.ExitStack
) -> tuple[dict[str, Fit], dict[str, str]]:
    """Training steps by name (Adam first: the baseline) and the peers not installed;
    the Bayesian model stays in ``posterior_mean`` mode until ``stack`` closes."""
    steps: dict[str, Fit] = {}
    missing: dict[str, str] = {}

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return MODELS[kind]()

    def adam_step() -> Fit:
        model = fresh()
        opt = torch.optim.Adam(model.parameters())

        def step() -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    def ivon_step(model: nn.Module, opt: Any) -> Fit:
        def step() -> Tensor:
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
            opt.step()
            return loss.detach()

        return step

    steps["Adam"] = adam_step()
    ivon, why = peer("ivon")
    if ivon is None:
        missing["ivon-opt"] = why  # type: ignore[assignment]
    else:
        model = fresh()
        steps["ivon-opt IVON"] = ivon_step(model, ivon.IVON(model.parameters(), **IVON_HYPER))
    model = fresh()
    steps["ours IVON"] = ivon_step(model, IVON(model.parameters(), **IVON_HYPER))
    layers = bl.to_bayesian(fresh(), "reparameterization")
    step = ivon_step(layers, IVON(ivon_parameters(layers), **IVON_HYPER))
    stack.enter_context(bl.posterior_mean(layers))  # the whole run, as a training loop would
    steps["ours IVON, Bayesian layers"] = step
    return steps, missing


def ivon_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for kind in args.ivon_models:
        torch.manual_seed(1)
        b = args.ivon_batch
        x = torch.randn(b, 784) if kind == "mlp" else torch.randn(b, 1, 28, 28)
        y = torch.randint(0, CLASSES, (b,))
        per, warm = (1, 1) if args.quick else (5, 3)
        with contextlib.ExitStack() as stack:
            steps, missing = ivon_steps(kind, x, y, stack)
            times = round_robin(steps, args.repeats, per, warm)
        row: dict[str, Any] = {"model": kind, "batch": b, "missing": missing,
                               "median_ms": {n: statistics.median(t) for n, t in times.items()},
                               "repeats_ms": times}  # fmt: skip
        ratios = {f"{n} / Adam": paired(t, times["Adam"]) for n, t in times.items() if n != "Adam"}
        if "ivon-opt IVON" in times:
            for n in ("ours IVON", "ours IVON, Bayesian layers"):
                ratios[f"{n} / ivon-opt"] = paired(times[n], times["ivon-opt IVON"])
        row["ratios"] = ratios
        rows.append(row)
        print(f"  {kind} batch {b}: " + ", ".join(f"{n} {t:.2f} ms" for n, t in
              row["median_ms"].items()), flush=True)  # fmt: skip
        for n, v in ratios.items():
            print(f"    {n:38s} {v:5.2f}x")
        for n, why in missing.items():
            print(f"    {n}: {why}")
    return rows


# ----------------------------------------------------------------------------- report
def markdown(meta: dict, lrows: list[dict], irows: list[dict]) -> str:
    def mem(m: dict | None) -> str:
        if not m:
            return "-"
        return f"{m['peak_mib']:.1f}" if m.get("status") == "ok" else str(m.get("status"))

    lines = [
        "# Posterior methods against their reference libraries (`benchmarks/posterior_peers.py`)",
        "",
        f"{meta['date']}; torch {meta['torch']}, laplace-torch {meta['laplace-torch']}, "
        f"backpack-for-pytorch {meta['backpack-for-pytorch']}, ivon-opt {meta['ivon-opt']}; "
        f"{meta['threads']} thread(s), clock {meta['clock']}, {meta['cpu']} "
        f"({meta['cpu_count']} CPUs), load average {meta['loadavg_1min_start']} -> "
        f"{meta['loadavg_1min_end']}; commit "
        f"{str(meta['commit'])[:10]}.",
        "",
        "## Laplace fit (classification, float32, random data, batch 128)",
        "",
        "Time: median over repeats of one whole `fit` (ours: `bl.laplace.fit`, the posterior "
        "written into the layers; laplace-torch: `Laplace(...).fit`), contenders round-robin; "
        "ours/peer = median of the paired per-repeat ratios (below 1: ours faster). Memory: "
        "peak resident set during the fit over the resident set just before it, each "
        "contender in its own fresh process. Goal: " + LAPLACE_GOAL + ".",
        "",
        "| model | hessian | subset | N | contender | ms | time ours/peer | peak MiB "
        "| memory ours/peer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lrows:
        cells = [r["model"], r["hessian"], r["subset"], str(r["n"]), r["contender"]]
        if r["status"] != "ok":
            cells += [r["status"], "-", "-", "-"]
        else:
            t = r.get("time_ours_over_peer")
            m = r.get("memory_ours_over_peer")
            cells += [f"{r['median_ms']:.1f}", f"{t:.3f}x" if t is not None else "",
                      mem(r.get("memory")), f"{m:.2f}x" if m is not None else ""]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## IVON training step (forward + cross-entropy + backward + step, one MC sample)",
        "",
        "Median ms per step; ratios are medians of paired per-repeat ratios. "
        "'ours IVON' trains the plain model's parameters (the optimizer alone), 'ours IVON, "
        "Bayesian layers' the means of the `to_bayesian` model in `posterior_mean` mode.",
        "",
        "| model, batch | Adam ms | ivon-opt ms | ours ms | ours (layers) ms | ivon-opt/Adam "
        "| ours/Adam | ours/ivon-opt | ours (layers)/Adam | ours (layers)/ivon-opt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in irows:
        ms, q = r["median_ms"], r["ratios"]
        theirs = ms.get("ivon-opt IVON")
        cells = [
            f"{r['model']}, {r['batch']}",
            f"{ms['Adam']:.2f}",
            f"{theirs:.2f}" if theirs is not None else r["missing"].get("ivon-opt", "-"),
            f"{ms['ours IVON']:.2f}",
            f"{ms['ours IVON, Bayesian layers']:.2f}",
        ]
        for key in ("ivon-opt IVON / Adam", "ours IVON / Adam", "ours IVON / ivon-opt",
                    "ours IVON, Bayesian layers / Adam",
                    "ours IVON, Bayesian layers / ivon-opt"):  # fmt: skip
            cells.append(f"{q[key]:.2f}" if key in q else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main
ALL_CONFIGS = [(k, h, s) for k in ("mlp", "cnn") for h in ("diag", "kron")
               for s in ("all", "last_layer")]  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run, for tests")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=None, help=f"directory (default {RESULTS})")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time (see README, Caveats)")  # fmt: skip
    p.add_argument("--only", choices=("laplace", "ivon"), default=None)
    p.add_argument(
        "--configs",
        dest="config_filter",
        default=None,
        help="Laplace configurations, e.g. cnn:kron:all,mlp:diag:last_layer",
    )
    p.add_argument(
        "--contenders",
        default=None,
        help="Laplace contenders to run, e.g. 'ours,laplace-torch BackPACK'",
    )
    p.add_argument("--memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.configs = [("mlp", "kron", "last_layer")]
        args.ivon_models, args.ivon_batch = ["mlp"], 16
    else:
        args.configs = ALL_CONFIGS
        args.ivon_models, args.ivon_batch = ["mlp", "cnn"], 128
    if args.config_filter:
        args.configs = [tuple(c.split(":")) for c in args.config_filter.split(",")]
        unknown = [c for c in args.configs if c not in ALL_CONFIGS]
        if unknown:
            p.error(f"--configs: unknown {unknown}; choose from model:hessian:subset in "
                    f"{[':'.join(c) for c in ALL_CONFIGS]}")  # fmt: skip
    if args.contenders:
        args.contenders = args.contenders.split(",")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only before any inter-op work (not in tests)
        torch.set_num_interop_threads(1)
    CLOCK[0] = time.perf_counter if args.clock == "wall" else time.process_time
    if args.memory_child:
        memory_child(args)
        return {}
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "laplace-torch": version("laplace-torch"),
            "ivon-opt": version("ivon-opt"),
            "backpack-for-pytorch": version("backpack-for-pytorch"),
            "threads": args.threads, "clock": args.clock, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "commit": git_commit(), "repeats": args.repeats,
            "package": str(Path(bl.__file__).parent),
            "allocator": {k: os.environ.get(k) for k in
                          ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
            "loadavg_1min_start": loadavg()}  # fmt: skip
    print(f"posterior peers: {args.threads} thread(s), {args.repeats} repeats, "
          f"load average {meta['loadavg_1min_start']}")  # fmt: skip
    lrows = irows = []
    if args.only in (None, "laplace"):
        print("Laplace fit (ours vs laplace-torch)")
        lrows = laplace_rows(args)
    if args.only in (None, "ivon"):
        print("IVON step")
        irows = ivon_rows(args)
    meta["loadavg_1min_end"] = loadavg()
    results = {"meta": meta, "laplace": lrows, "ivon": irows}
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "posterior_peers" + (".quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    if not args.quick or args.out is not None:
        (out / f"{stem}.md").write_text(markdown(meta, lrows, irows))
    print(f"wrote {out / stem}.json")
    return results


if __name__ == "__main__":
    main()
