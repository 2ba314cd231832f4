"""Cost of the K-sample predictive: ``bl.predict`` against one deterministic forward and a loop.

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/predict_step.py [--quick] [--threads 2] [--repeats 9]
        [--num-samples 32] [--clock wall|cpu]

Everything runs under ``torch.no_grad()`` with the models in eval mode (issue 22's
"Must show"):

* ``last_layer``: models whose Bayesian part is the last layer, batch 256, K = 32 —
  the MLP 784-512-512-10 (ReLU) of ``linear_step.py`` and the LeNet-5 of ``images.py``
  (28x28x1 input), each with its last ``nn.Linear`` replaced by each dense estimator
  (``LinearReparameterization``, ``LinearFlipout``, ``LinearLocalReparameterization``),
  by a post-hoc last-layer Laplace posterior (``bl.laplace.fit(..., hessian="kron",
  subset="last_layer")`` on the deterministic twin, random data) and by an SNGP head
  (``bl.sngp``). ``bl.predict(model, x, num_samples=K).samples`` against ONE forward of
  the deterministic twin (the same network of ``nn.Linear``/``nn.Conv2d``). Where
  ``bl.predict`` takes ``trunk=``, the uncached ``trunk=None`` runs beside the default;
  for the whole-draw heads (reparameterization, Laplace: exact function samples by
  default), ``joint=False`` (each example's law only) too, a row and target of its own.
  The SNGP head's random features have no ``nn.Linear`` twin: its target is against one
  forward of the SNGP model itself (its ratio to the twin is recorded too).
* ``all_bayesian``: the MLP with every layer Bayesian (each estimator), batch 16, K = 32:
  ``bl.predict`` against ``torch.stack([model(x) for _ in range(K)])``.

Contenders of a model run round-robin inside every repeat (the start rotates); a
repeat's time is the median of a few calls (``CALLS``); a ratio is the median of the paired
per-repeat ratios. Targets (PASS/FAIL, under ``"targets"`` in the JSON): ``last_layer``
predict <= ``LAST_LAYER_TARGET`` x one deterministic forward; ``all_bayesian``
loop / predict >= ``LOOP_SPEEDUP_TARGET`` for every estimator.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable

import torch
from bench_cli import paired, parse_sampling, print_paired, sampling_parser, write_results
from cnn_lstm_step import Step, run  # one timing loop for all benchmarks
from contenders import mlp
from images import lenet5
from report import cpu_model, git_commit, loadavg
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

LAST_LAYER_TARGET = 1.5  # max predict / one deterministic forward, batch 256
LOOP_SPEEDUP_TARGET = 2.0  # min loop / predict for the all-Bayesian MLP, batch 16
LAST_LAYER_BATCH, ALL_BAYESIAN_BATCH = 256, 16  # the targets' batch sizes
#: (calls per repeat, warm-up calls): LeNet-5's uncached K = 32 predictive takes ~1 s
CALLS = {"mlp": (3, 2), "lenet5": (1, 1), "all_bayesian": (2, 1)}
ESTIMATORS = (
    layers.LinearReparameterization,
    layers.LinearFlipout,
    layers.LinearLocalReparameterization,
)
DETERMINISTIC = "deterministic: one forward"
SNGP_FORWARD = "SNGP head: one forward"
NETWORKS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "mlp": (lambda: mlp(nn.Linear), (784,)),
    "lenet5": (lenet5, (1, 28, 28)),
}


def trunk_supported() -> bool:
    """Whether ``bl.predict`` takes ``trunk=`` (the trunk-caching keyword of issue 22)."""
    return "trunk" in inspect.signature(bl.predict).parameters


def _last_layer(twin: nn.Sequential, cls: type[nn.Module]) -> nn.Sequential:
    """A copy of ``twin`` whose last ``nn.Linear`` is a fresh ``cls`` of the same size."""
    model = copy.deepcopy(twin)
    last = model[-1]
    model[-1] = cls(last.in_features, last.out_features)
    return model.eval()


def _laplace(twin: nn.Sequential, shape: tuple[int, ...], n: int) -> nn.Module:
    """Last-layer Kronecker Laplace fitted to ``twin`` (copied by ``fit``) on random data."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    loader = list(zip(x.split(64), y.split(64), strict=True))
    post = bl.laplace.fit(twin, loader, "classification", hessian="kron", subset="last_layer")
    return post.eval()


def joint_supported() -> bool:
    """Whether ``bl.predict`` takes ``joint=`` (per-example draws for whole-draw layers)."""
    return "joint" in inspect.signature(bl.predict).parameters


def _predict_steps(
    name: str, model: nn.Module, x: Tensor, k: int, trunk: bool, marginal: bool = False
) -> dict:
    """``{name}: predict`` and, where ``bl.predict`` takes ``trunk=``, ``trunk=None``;
    with ``marginal`` (exact function samples by default) also ``joint=False``."""

    def predict(**kw: object) -> Step:
        @torch.no_grad()
        def step() -> Tensor:
            return bl.predict(model, x, num_samples=k, **kw).samples  # (K, B, 10)

        return step

    steps = {f"{name}: predict": predict()}
    if trunk:
        steps[f"{name}: predict trunk=None"] = predict(trunk=None)
    if marginal and joint_supported():
        steps[f"{name}: predict joint=False"] = predict(joint=False)
    return steps


def last_layer_steps(net: str, x: Tensor, k: int, trunk: bool, fit_n: int) -> dict[str, Step]:
    """The deterministic twin's forward first, then every last-layer model's predictive."""
    build, shape = NETWORKS[net]
    torch.manual_seed(0)
    twin = build().eval()

    @torch.no_grad()
    def forward(model: nn.Module = twin) -> Tensor:
        return model(x)

    steps: dict[str, Step] = {DETERMINISTIC: forward}
    for cls in ESTIMATORS:
        whole = cls is layers.LinearReparameterization  # exact function samples
        steps.update(_predict_steps(cls.__name__, _last_layer(twin, cls), x, k, trunk, whole))
    laplace = _laplace(twin, shape, fit_n)
    steps.update(_predict_steps("Laplace last layer (kron)", laplace, x, k, trunk, True))
    sngp = bl.sngp(copy.deepcopy(twin)).eval()

    @torch.no_grad()
    def sngp_forward(model: nn.Module = sngp) -> Tensor:
        return model(x)

    steps[SNGP_FORWARD] = sngp_forward
    steps.update(_predict_steps("SNGP head", sngp, x, k, trunk))
    return steps


def all_bayesian_steps(x: Tensor, k: int) -> dict[str, Step]:
    """For each estimator: ``bl.predict`` and the Python loop of ``k`` calls."""
    steps: dict[str, Step] = {}
    for cls in ESTIMATORS:
        torch.manual_seed(0)
        model = mlp(lambda i, o, cls=cls: cls(i, o)).eval()

        @torch.no_grad()
        def predict(model: nn.Module = model) -> Tensor:
            return bl.predict(model, x, num_samples=k).samples  # (K, B, 10)

        @torch.no_grad()
        def loop(model: nn.Module = model) -> Tensor:
            return torch.stack([model(x) for _ in range(k)])  # (K, B, 10)

        steps[f"{cls.__name__}: predict"] = predict
        steps[f"{cls.__name__}: loop"] = loop
    return steps


def targets(results: dict[str, dict]) -> list[dict]:
    """``last_layer`` at batch 256: each default predictive <= ``LAST_LAYER_TARGET`` x one
    forward (the twin's; the SNGP model's own for the SNGP head); ``all_bayesian`` at batch
    16: loop / predict >= ``LOOP_SPEEDUP_TARGET`` for each estimator. Other batch sizes
    (``--quick``) are not checked."""
    out = []
    for key, rows in results.items():
        if key.startswith("last_layer") and key.endswith(f"@{LAST_LAYER_BATCH}"):
            for name in rows:
                if not name.endswith((": predict", ": predict joint=False")):
                    continue
                base = SNGP_FORWARD if name.startswith("SNGP") else DETERMINISTIC
                value = paired(rows, name, base)["ratio"]
                out.append({"check": f"{key} {name} <= {LAST_LAYER_TARGET}x {base}",
                            "value": value, "pass": value <= LAST_LAYER_TARGET})  # fmt: skip
        elif key.startswith("all_bayesian") and key.endswith(f"@{ALL_BAYESIAN_BATCH}"):
            for cls in ESTIMATORS:
                name = cls.__name__
                value = paired(rows, f"{name}: loop", f"{name}: predict")["ratio"]
                out.append({"check": f"{key} {name} loop/predict >= {LOOP_SPEEDUP_TARGET}x",
                            "value": value, "pass": value >= LOOP_SPEEDUP_TARGET})  # fmt: skip
    return out


def _print(key: str, rows: dict[str, dict]) -> None:
    print_paired(key, rows)
    if key.startswith("last_layer"):
        p = paired(rows, "SNGP head: predict", SNGP_FORWARD)
        print(f"  {'SNGP head: predict / its own one forward':48s} {'':12s} {p['ratio']:6.2f}x")
    else:
        for cls in ESTIMATORS:
            p = paired(rows, f"{cls.__name__}: loop", f"{cls.__name__}: predict")
            print(f"  {cls.__name__ + ': loop / predict':48s} {'':12s} {p['ratio']:6.2f}x  "
                  f"({p['min']:.2f}..{p['max']:.2f})")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = sampling_parser(__doc__, num_samples=32)
    args, clock = parse_sampling(parser, argv)
    k = args.num_samples
    repeats = 2 if args.quick else args.repeats
    calls = {key: (1, 1) for key in CALLS} if args.quick else CALLS  # (per repeat, warm-up)
    last_batch, all_batch, fit_n = (
        (8, 4, 64) if args.quick else (LAST_LAYER_BATCH, ALL_BAYESIAN_BATCH, 512)
    )
    trunk = trunk_supported()
    meta = {"threads": args.threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "git_commit": git_commit(), "clock": args.clock,
            "num_samples": k, "repeats": repeats, "calls_per_repeat_and_warmup": calls,
            "trunk_keyword": trunk, "loadavg_1min_start": loadavg()}  # fmt: skip
    results: dict[str, dict] = {}
    for net, (_, shape) in NETWORKS.items():
        torch.manual_seed(0)
        x = torch.randn(last_batch, *shape)
        steps = last_layer_steps(net, x, k, trunk, fit_n)
        results[f"last_layer {net}@{last_batch}"] = run(steps, repeats, *calls[net], clock)
    torch.manual_seed(0)
    x = torch.randn(all_batch, 784)
    steps = all_bayesian_steps(x, k)
    results[f"all_bayesian mlp@{all_batch}"] = run(steps, repeats, *calls["all_bayesian"], clock)
    meta["loadavg_1min_end"] = loadavg()
    print(f"K = {k} predictive, {args.threads} threads, clock {args.clock}, median of "
          f"{repeats} repeats; trunk= keyword: {'yes' if trunk else 'no'}; "
          f"load average {meta['loadavg_1min_start']} -> {meta['loadavg_1min_end']}")  # fmt: skip
    for key, rows in results.items():
        _print(key, rows)
    checks = targets(results)
    if not checks:
        print(f"targets: checked at batch {LAST_LAYER_BATCH} / {ALL_BAYESIAN_BATCH} only")
    for c in checks:
        print(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['check']}  ({c['value']:.3f})")
    write_results(args, "predict_step", {"meta": meta, "targets": checks, **results})
    return results


if __name__ == "__main__":
    main()
