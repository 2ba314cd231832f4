"""Training-step time of Bayesian models under ``torch.compile`` against eager mode.

Run by ``make bench`` after ``flow_step.py`` (same allocator setting), or directly::

    .venv/bin/python benchmarks/compile_step.py [--quick] [--threads 2] [--repeats 9]
        [--backend inductor]

* MLP: 784-512-512-10 (ReLU), batch 128, the dense estimators (``benchmarks/contenders.py``).
* CNN: 32x32x3 input, batch 128, the three-convolution network of ``cnn_lstm_step.py``.
* ``MCDropout``: the deterministic network with ``MCDropout(0.2)`` after every hidden ReLU.

A step is forward + cross-entropy + ``sum(bl.losses(model)) / N`` + backward + Adam. The
compiled contender compiles the loss closure (forward, NLL and KL in one graph, its
backward through AOTAutograd, ``fullgraph=True``) and keeps the optimizer step eager;
the deterministic model (``nn.Linear``/``nn.Conv2d``) is timed the same two ways as the
reference. Compilation happens in the warm-up steps and is reported separately (the
first call's time, cold cache). Contenders run round-robin in every repeat (``run`` of
``cnn_lstm_step.py``); "vs eager" is the median over repeats of the paired ratio of the
compiled step to the eager step of the same model.

Target (issue 22): compiled/eager <= 1.0 for every estimator's row (reparameterization,
Flipout, local reparameterization; MLP and CNN); a PASS/FAIL line is printed and
``target`` in the JSON holds the bound, the worst row, its ratio and the other rows'
ratios (``nn.*``, ``MCDropout``: the deterministic network's own compiled/eager ratio
bounds what dropout in it can reach). On CPU our layers draw a compiled graph's noise with torch's
eager generator (``bayesian_layers/layers/_base/compiled_rng.py``): inductor's own
random-number kernels made the compiled steps up to 1.7x slower than eager.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_cli import parse_and_pin, step_parser, write_results
from cnn_lstm_step import Step, _cnn, run  # one timing loop for all benchmarks
from contenders import NUM_TRAIN, mlp
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

MLP_LAYERS = ("nn.Linear", "LinearReparameterization", "LinearFlipout",
              "LinearLocalReparameterization", "MCDropout")  # fmt: skip
CNN_LAYERS = ("nn.Conv2d", "Conv2dReparameterization", "Conv2dFlipout",
              "Conv2dLocalReparameterization", "MCDropout")  # fmt: skip
DROPOUT = 0.2
TARGET = 1.0  # compiled/eager step time of every Bayesian row


def _layer(name: str) -> Callable[..., nn.Module]:
    return getattr(nn, name[3:]) if name.startswith("nn.") else getattr(layers, name)


def _model(kind: str, name: str) -> nn.Module:
    """The benchmark network with ``name``'s layers; ``MCDropout``: the deterministic one
    with MC dropout after every hidden ReLU."""
    make = (
        _layer("nn.Linear" if kind == "mlp" else "nn.Conv2d")
        if name == "MCDropout"
        else _layer(name)
    )
    if kind == "mlp":
        mods = list(mlp(make))
    else:
        mods = [*_cnn(make), nn.Linear(128, 10)]
    if name == "MCDropout":
        mods = [
            n
            for m in mods
            for n in ((m, layers.MCDropout(DROPOUT)) if isinstance(m, nn.ReLU) else (m,))
        ]
    return nn.Sequential(*mods)


def _step(model: nn.Module, x: Tensor, y: Tensor, backend: str | None) -> tuple[Step, float]:
    """A training step, and the seconds its first call took (compilation, if any)."""

    def loss_fn() -> Tensor:
        nll = F.cross_entropy(model(x), y)
        terms = bl.losses(model)
        return nll + sum(terms) / NUM_TRAIN if terms else nll

    loss = loss_fn if backend is None else torch.compile(loss_fn, backend=backend, fullgraph=True)
    opt = torch.optim.Adam(model.parameters())

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        out = loss()
        out.backward()
        opt.step()
        return out

    t0 = time.perf_counter()
    step()
    return step, time.perf_counter() - t0


def contenders(
    kind: str, x: Tensor, y: Tensor, backend: str, names: tuple[str, ...]
) -> tuple[dict[str, Step], dict[str, float]]:
    steps: dict[str, Step] = {}
    first: dict[str, float] = {}
    for name in names:
        for mode in ("eager", "compiled"):
            torch.manual_seed(0)
            model = _model(kind, name)
            key = f"{name} {mode}"
            steps[key], first[key] = _step(model, x, y, None if mode == "eager" else backend)
    return steps, first


def paired_ratios(result: dict[str, dict]) -> dict[str, float]:
    """Compiled over eager of the same model, median of paired per-repeat ratios."""
    out = {}
    for key, row in result.items():
        if key.endswith(" compiled"):
            eager = result[key.replace(" compiled", " eager")]["repeats_ms"]
            pairs = zip(row["repeats_ms"], eager, strict=True)
            out[key] = statistics.median(c / e for c, e in pairs)
    return out


def target(results: dict[str, dict]) -> dict[str, object]:
    """The worst compiled/eager ratio over the estimators' rows against :data:`TARGET`;
    ``MCDropout`` and the ``nn.*`` rows are reported beside it (MCDropout's network is
    the deterministic one, whose own compiled/eager ratio bounds what dropout can do)."""
    ratios = {
        f"{kind} {key.removesuffix(' compiled')}": row["vs_eager"]
        for kind, rows in results.items()
        for key, row in rows.items()
        if "vs_eager" in row
    }
    ours = {k: v for k, v in ratios.items() if not k.split()[1].startswith(("nn.", "MCDropout"))}
    worst = max(ours, key=ours.__getitem__)
    return {"bound": TARGET, "worst": worst, "worst_ratio": ours[worst],
            "pass": ours[worst] <= TARGET,
            "beside": {k: v for k, v in ratios.items() if k not in ours}}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parse_and_pin(parser, argv)
    # every contender compiles the same loss closure's code for another model: one cache
    # entry each (the default limit of 8 would refuse the later ones)
    torch._dynamo.config.recompile_limit = 64
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, 3, 2)
    batch = 8 if args.quick else 128
    mlp_names = MLP_LAYERS[:2] if args.quick else MLP_LAYERS
    cnn_names = CNN_LAYERS[:2] if args.quick else CNN_LAYERS
    results: dict[str, dict] = {}
    torch.manual_seed(0)
    for kind, x, names in (
        ("mlp", torch.randn(batch, 784), mlp_names),
        ("cnn", torch.randn(batch, 3, 32, 32), cnn_names),
    ):
        y = torch.randint(0, 10, (batch,))
        steps, first = contenders(kind, x, y, args.backend, names)
        rows = run(steps, repeats, per, warm)
        ratios = paired_ratios(rows)
        for key, row in rows.items():
            row["first_call_s"] = first[key]
            if key in ratios:
                row["vs_eager"] = ratios[key]
        results[kind] = rows
    for kind, rows in results.items():
        print(f"{kind}: training step, batch {batch}, {args.threads} threads, backend "
              f"{args.backend}, median of {repeats} repeats")  # fmt: skip
        print(f"  {'model':48s} {'step ms':>9s} {'vs eager':>9s} {'1st call s':>11s}")
        for key, row in rows.items():
            vs = f"{row['vs_eager']:8.2f}x" if "vs_eager" in row else f"{'':9s}"
            print(f"  {key:48s} {row['median_ms']:9.2f} {vs} {row['first_call_s']:11.1f}")
    goal = target(results)
    verdict = "PASS" if goal["pass"] else "FAIL"
    beside = ", ".join(f"{k} {v:.2f}x" for k, v in goal["beside"].items())  # type: ignore[attr-defined]
    print(f"target: compiled/eager <= {TARGET:.2f} for every estimator: {verdict} "
          f"(worst {goal['worst']}: {goal['worst_ratio']:.2f}x; beside it: {beside})")  # fmt: skip
    write_results(args, "compile_step", {**results, "target": goal})
    return results


if __name__ == "__main__":
    main()
