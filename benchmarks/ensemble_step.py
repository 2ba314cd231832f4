"""Speed of ``Ensemble``'s vmapped forward against a Python loop over its members.

Run directly::

    .venv/bin/python benchmarks/ensemble_step.py [--quick] [--threads 1] [--repeats 9]
        [--batch 256] [--members 5]

Models: the MLP 784-512-512-10 (ReLU) of ``linear_step.py`` and LeNet-5 (conv 6@5x5, max
pool, conv 16@5x5, max pool, 120, 84, 10, ReLU) on 1x28x28 inputs; ``n`` members
(default 5), batch 256, float32. Contenders, for each model:

* ``loop``: ``torch.stack([m(x) for m in members])``, the ``n`` plain modules;
* ``vmap``: ``Ensemble(make_model, n)(x)`` (``torch.vmap`` over ``functional_call``);
* ``ensemble loop``: the same with ``vectorize=False`` (``functional_call`` per member);

each timed for the forward (under ``torch.no_grad()``) and for a training step
(cross-entropy summed over the members + backward + Adam). Contenders run round-robin
inside every repeat; a repeat's time is the median of a few calls; the reported time is the
median over repeats and the ratio the median of the paired per-repeat ratios to ``loop``.

Measured (2026-12-06, torch 2.13 CPU, 1 thread, batch 256, n = 5, 9 repeats, on a shared
2-core machine with a load average of 4-9, so ±20%): vmap / loop = 1.14 (MLP forward),
1.44 (MLP train step), 1.54 (LeNet-5 forward), 1.53 (LeNet-5 train step); the ensemble's own
loop (``vectorize=False``) 0.98-1.17. On one CPU thread vmap does not pay: the batched
linear layers become ``bmm`` + a separate bias ``add`` (84% of the MLP forward in ``bmm``),
and max pooling goes through ``max_pool2d_with_indices``. Its gain is fewer, larger kernels
(GPU launches); that was not measured here (no device).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bayesian_layers.ensemble import Ensemble


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )  # fmt: skip


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def _median_ms(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def contenders(make: Callable[[], nn.Module], n: int, x: torch.Tensor, y: torch.Tensor):
    """``{name: (forward, train step)}``, ``loop`` first."""
    torch.manual_seed(0)
    members = [make() for _ in range(n)]
    copies = iter([copy.deepcopy(m) for m in members] * 2)
    vmapped = Ensemble(lambda: next(copies), n)
    looped = Ensemble(lambda: next(copies), n, vectorize=False)
    opt_loop = torch.optim.Adam([p for m in members for p in m.parameters()], lr=1e-3)
    opt_vmap = torch.optim.Adam(vmapped.parameters(), lr=1e-3)
    opt_looped = torch.optim.Adam(looped.parameters(), lr=1e-3)

    def loop_forward() -> torch.Tensor:
        return torch.stack([m(x) for m in members])

    def step(forward: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> Callable:
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            sum(F.cross_entropy(o, y) for o in forward()).backward()
            opt.step()

        return run

    def no_grad(forward: Callable[[], torch.Tensor]) -> Callable:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return forward()

        return run

    return {
        "loop": (no_grad(loop_forward), step(loop_forward, opt_loop)),
        "vmap": (no_grad(lambda: vmapped(x)), step(lambda: vmapped(x), opt_vmap)),
        "ensemble loop": (no_grad(lambda: looped(x)), step(lambda: looped(x), opt_looped)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats of 2 calls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--members", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, calls = (2, 2) if args.quick else (args.repeats, 5)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {args.threads}, batch {args.batch}, members {args.members}"
    )
    print(f"{'model':8} {'what':8} {'contender':14} {'ms':>9} {'ratio to loop':>14}")
    for model_name, make in {"mlp": mlp, "lenet5": lenet5}.items():
        x = torch.randn(args.batch, 1, 28, 28)
        y = torch.randint(0, 10, (args.batch,))
        runs = contenders(make, args.members, x, y)
        for what, slot in (("forward", 0), ("train", 1)):
            names = list(runs)
            for fn in runs.values():
                fn[slot]()  # warm up (and the vmap path check)
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(repeats):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    times[name].append(_median_ms(runs[name][slot], calls))
            for name in names:
                ratio = statistics.median(
                    t / b for t, b in zip(times[name], times["loop"], strict=True)
                )
                ms = statistics.median(times[name])
                print(f"{model_name:8} {what:8} {name:14} {ms:9.2f} {ratio:14.2f}")


if __name__ == "__main__":
    main()
