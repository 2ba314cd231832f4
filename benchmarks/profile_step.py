"""Where the time goes in one training step of a Bayesian MLP, against nn.Linear.

Two views of the same step (MLP 784-512-512-10, fwd + CE + KL/N + bwd + Adam):

* ``--mode parts`` (default): times each piece of the step in isolation (median of many
  calls): sampling the weights, the matmuls, the KL, backward, the Adam step; and the
  whole step, so the pieces can be checked against the total.
* ``--mode profiler``: ``torch.profiler`` over a few steps, top ops by self CPU time.

``--layer`` picks our estimator (``reparameterization``, ``flipout``,
``local_reparameterization``) or ``reference``: a minimal hand-written reparameterization
layer (softplus scale, ``addcmul`` sample, closed-form KL to N(0, 1)), a floor for what
the step can cost in eager PyTorch.

    .venv/bin/python benchmarks/profile_step.py --batch 128 --layer reparameterization
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SIZES = (784, 512, 512, 10)
NUM_TRAIN = 60_000
CLOCK = [time.perf_counter_ns]  # --clock cpu: time.process_time_ns


class ReferenceReparameterization(nn.Module):
    """Minimal eager reparameterization layer: the floor the library layer can aim at."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight_loc = nn.Parameter(
            torch.empty(out_features, in_features).uniform_(-bound, bound)
        )
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), -5.0))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.softplus(self.weight_rho)
        w = torch.addcmul(self.weight_loc, scale, torch.randn_like(scale))
        return F.linear(x, w, self.bias)

    def kl(self) -> torch.Tensor:
        # KL(N(m, s) || N(0, 1)) = sum(0.5 * (s^2 + m^2 - 1) - log s)
        scale = F.softplus(self.weight_rho)
        return 0.5 * (scale.square().sum() + self.weight_loc.square().sum() - scale.numel()) - (
            scale.log().sum()
        )


def build(layer: str) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    mods: list[nn.Module] = []
    if layer == "linear":
        make: Callable[[int, int], nn.Module] = nn.Linear
    elif layer == "reference":
        make = ReferenceReparameterization
    else:
        from bayesian_layers import layers

        cls = getattr(
            layers,
            {
                "reparameterization": "LinearReparameterization",
                "flipout": "LinearFlipout",
                "local_reparameterization": "LinearLocalReparameterization",
            }[layer],
        )
        make = cls
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        mods.append(make(a, b))
        if i < len(SIZES) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    if layer == "linear":
        return model, lambda m: torch.zeros(())
    if layer == "reference":
        return model, lambda m: sum(mod.kl() for mod in m if hasattr(mod, "kl"))
    import bayesian_layers as bl

    return model, lambda m: sum(bl.losses(m))


def med(fn: Callable[[], object], n: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t0 = CLOCK[0]()
        fn()
        ts.append((CLOCK[0]() - t0) / 1e6)
    return statistics.median(ts)


def parts(layer: str, batch: int, n: int) -> None:
    torch.manual_seed(0)
    model, kl_fn = build(layer)
    base, _ = build("linear")
    x = torch.randn(batch, SIZES[0])
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters())
    opt_base = torch.optim.Adam(base.parameters())

    def step(m: nn.Module, o: torch.optim.Optimizer, kl: Callable | None) -> None:
        o.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y)
        if kl is not None:
            loss = loss + kl(m) / NUM_TRAIN
        loss.backward()
        o.step()

    def fwd_only() -> None:
        with torch.no_grad():
            model(x)

    def fwd_ce() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def fwd_ce_bwd() -> None:
        model.zero_grad(set_to_none=True)
        fwd_ce().backward()

    def kl_fwd() -> None:
        with torch.no_grad():
            kl_fn(model)

    def kl_fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        (kl_fn(model) / NUM_TRAIN).backward()

    fwd_ce_bwd()  # make sure every param has a grad for the Adam-only timing

    def adam_only() -> None:
        opt.step()

    base_fwd = lambda: base(x)  # noqa: E731

    def base_fwd_bwd() -> None:
        base.zero_grad(set_to_none=True)
        F.cross_entropy(base(x), y).backward()

    base_fwd_bwd()

    def base_adam() -> None:
        opt_base.step()

    numel = sum(p.numel() for p in model.parameters())
    nbase = sum(p.numel() for p in base.parameters())
    weights = [p for name, p in model.named_parameters() if p.dim() == 2]
    big = max(weights, key=lambda p: p.numel()) if weights else None
    sampled = sum(p.numel() for p in base.parameters() if p.dim() == 2)

    def step_no_kl() -> None:
        step(model, opt, None)

    rows = [
        (
            "whole step",
            med(lambda: step(model, opt, kl_fn), n),
            med(lambda: step(base, opt_base, None), n),
        ),
        ("whole step without KL term", med(step_no_kl, n), None),
    ]
    if layer not in ("linear", "reference"):
        import bayesian_layers as bl

        def step_mean() -> None:
            with bl.posterior_mean(model):
                step(model, opt, kl_fn)

        rows.append(("whole step, posterior mean", med(step_mean, n), None))
    rows += [
        ("forward (no_grad)", med(fwd_only, n), med(lambda: _ng(base_fwd), n)),
        ("forward + CE + backward", med(fwd_ce_bwd, n), med(base_fwd_bwd, n)),
        ("KL forward (no_grad)", med(kl_fwd, n), None),
        ("KL forward + backward", med(kl_fwd_bwd, n), None),
        ("Adam step", med(adam_only, n), med(base_adam, n)),
    ]
    eps = torch.empty(sampled)
    rho = torch.full((sampled,), -5.0)
    loc = torch.zeros(sampled)
    micro = [
        (f"randn {sampled} (normal_)", med(lambda: eps.normal_(), n)),
        (f"softplus {sampled}", med(lambda: F.softplus(rho), n)),
        (f"addcmul {sampled}", med(lambda: torch.addcmul(loc, rho, eps), n)),
        (f"log {sampled}", med(lambda: eps.abs().add_(1).log(), n)),
        (f"square().sum() {sampled}", med(lambda: rho.square().sum(), n)),
        (
            f"bernoulli_(0.5) {batch}x512 (signs)",
            med(lambda: torch.empty(batch, 512).bernoulli_(0.5), n),
        ),
    ]
    print(
        f"layer={layer} batch={batch} threads={torch.get_num_threads()} params {numel} vs {nbase}"
    )
    print(f"  {'part':<28} {layer[:9]:>9} {'nn.Linear':>13}  (ms, {CLOCK[0].__name__})")
    for name, a, b in rows:
        print(f"  {name:<28} {a:>9.3f} {'-' if b is None else f'{b:.3f}':>13}")
    print("  micro (whole MLP's weight count):")
    for name, a in micro:
        print(f"    {name:<44} {a:>8.3f} ms")
    if big is not None:
        print(f"  largest weight param: {tuple(big.shape)}")


def _ng(fn: Callable[[], object]) -> object:
    with torch.no_grad():
        return fn()


def profile(layer: str, batch: int, steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as tprofile

    torch.manual_seed(0)
    model, kl_fn = build(layer)
    x = torch.randn(batch, SIZES[0])
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        with record_function("## zero_grad"):
            opt.zero_grad(set_to_none=True)
        with record_function("## forward + CE"):
            nll = F.cross_entropy(model(x), y)
        with record_function("## KL"):
            loss = nll + kl_fn(model) / NUM_TRAIN
        with record_function("## backward"):
            loss.backward()
        with record_function("## Adam.step"):
            opt.step()

    for _ in range(5):
        step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    phases = sorted((e for e in events if e.key.startswith("## ")), key=lambda e: e.key)
    total = sum(e.cpu_time_total for e in phases)
    print(f"layer={layer} batch={batch} threads={torch.get_num_threads()}: {steps} steps")
    print("  phase              ms/step   share")
    for e in phases:
        ms = e.cpu_time_total / 1e3 / steps
        print(f"  {e.key[3:]:<18} {ms:>7.3f}  {100 * e.cpu_time_total / total:>5.1f}%")
    print(f"  {'total':<18} {total / 1e3 / steps:>7.3f}")
    print("top ops by self CPU time (per step):")
    ops = sorted(
        (e for e in events if not e.key.startswith("## ")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:rows]
    for e in ops:
        print(
            f"  {e.key:<44} {e.self_cpu_time_total / 1e3 / steps:>7.3f} ms"
            f"  x{e.count / steps:>5.1f}/step"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--layer",
        default="reparameterization",
        choices=[
            "linear",
            "reference",
            "reparameterization",
            "flipout",
            "local_reparameterization",
        ],
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["parts", "profiler"], default="parts")
    p.add_argument("-n", type=int, default=30, help="timed calls per part / profiled steps")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.clock == "cpu":
        CLOCK[0] = time.process_time_ns
    if a.mode == "parts":
        parts(a.layer, a.batch, a.n)
    else:
        profile(a.layer, a.batch, a.n, a.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
