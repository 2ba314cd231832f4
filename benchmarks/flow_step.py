"""Training-step speed of our reversible flows against zuko's and nflows' flows.

Run by ``make bench`` after ``cnn_lstm_step.py`` (same allocator setting), or directly::

    .venv/bin/python benchmarks/flow_step.py [--quick] [--threads 2] [--repeats 9]

Density estimation: 64-dim data (standard normal, seed 0), batch 256, one training step
``-log_prob(x).mean()`` + backward + Adam (default settings everywhere).

* autoregressive: 5 affine autoregressive transforms, each a MADE with hidden [256, 256].
  Ours: ``nn.Sequential`` of ``layers.MaskedAutoregressiveFlow(layers.MADE(hidden_dims=
  [256, 256], order=...))`` with the order alternating left-to-right / right-to-left,
  applied to ``bl.Normal(zeros(256, 64), 1.)``; loss from
  ``model(base).distribution.log_prob(x)``, the random variable rebuilt every step.
  zuko: ``zuko.flows.MAF(features=64, transforms=5, hidden_features=[256, 256])``
  (order reversed between transforms). nflows: ``MaskedAutoregressiveFlow(features=64,
  hidden_features=256, num_layers=5, num_blocks_per_layer=1, use_residual_blocks=False)``:
  its MADE is an initial masked layer, ``num_blocks_per_layer`` masked hidden->hidden
  layers and a final layer, so one plain (non-residual) block gives the same
  64 -> 256 -> 256 -> 128 masked MLP as the others (its default residual blocks with
  ``num_blocks_per_layer=2`` would add four 256x256 layers); a reverse permutation sits
  between transforms.
* coupling: 5 affine coupling transforms. Ours: ``layers.RealNVP(layers.MADE(
  hidden_dims=[256, 256]), flip=...)`` with ``flip`` alternating (the MADE maps the
  32 conditioning features to shift and log-scale of the other 32: a masked
  32 -> 256 -> 256 -> 64 MLP). zuko: ``zuko.flows.RealNVP(features=64, transforms=5,
  hidden_features=[256, 256])`` (an unmasked 32 -> 256 -> 256 -> 64 MLP, halves
  alternating).

Our ``model(base)`` returns a random variable whose value (a sampling pass, sequential
for ``MaskedAutoregressiveFlow``) is computed only when read, and ``log_prob`` takes one
network pass per transform (``reverse_and_log_det`` gives the inverse and its log-det
together), as zuko's and nflows' flows do. The ``(distribution built once)`` rows reuse
one ``TransformedDistribution`` across steps (its transforms call the live layers, so
this is still exact): the difference to the per-step rows is the cost of building the
random variable.

Contenders run round-robin inside every repeat (the start rotates); a repeat's time is the
median of a few steps; the ratio is the median of the paired per-repeat ratios to the
first contender (ours). Peers are used when importable.
"""

from __future__ import annotations

import torch
from bench_cli import parse_and_pin, step_parser, write_results
from cnn_lstm_step import Step, adam_step, run  # one timing loop and Adam step for all
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

TRANSFORMS = 5


def _ours(model: nn.Module, x: Tensor, once: bool) -> Step:
    model(x)  # MADE reads its input size on the first call: build before the optimizer
    base = bl.Normal(torch.zeros_like(x), 1.0)
    if once:
        dist = model(base).distribution

        def loss() -> Tensor:
            return -dist.log_prob(x).mean()
    else:

        def loss() -> Tensor:
            return -model(base).distribution.log_prob(x).mean()

    return adam_step(model, loss)


def _ours_maf(hidden: list[int], d: int) -> nn.Sequential:
    orders = ("left-to-right", "right-to-left")
    return nn.Sequential(*[
        layers.MaskedAutoregressiveFlow(layers.MADE(hidden_dims=hidden, order=orders[i % 2]))
        for i in range(TRANSFORMS)
    ])  # fmt: skip


def _ours_realnvp(hidden: list[int], d: int) -> nn.Sequential:
    return nn.Sequential(*[
        layers.RealNVP(layers.MADE(hidden_dims=hidden), flip=bool(i % 2))
        for i in range(TRANSFORMS)
    ])  # fmt: skip


def _zuko(x: Tensor, hidden: list[int], cls_name: str) -> Step | None:
    try:
        import zuko
    except ImportError:
        return None
    flow = getattr(zuko.flows, cls_name)(
        features=x.shape[-1], transforms=TRANSFORMS, hidden_features=hidden
    )
    return adam_step(flow, lambda: -flow().log_prob(x).mean())


def autoregressive_contenders(x: Tensor, hidden: list[int]) -> dict[str, Step]:
    d = x.shape[-1]
    out: dict[str, Step] = {
        "ours: MaskedAutoregressiveFlow": _ours(_ours_maf(hidden, d), x, once=False),
        "ours: MAF (distribution built once)": _ours(_ours_maf(hidden, d), x, once=True),
    }
    if (step := _zuko(x, hidden, "MAF")) is not None:
        out["zuko: MAF"] = step
    try:
        from nflows.flows.autoregressive import MaskedAutoregressiveFlow

        assert len(set(hidden)) == 1, "nflows' MADE has one hidden width"
        peer = MaskedAutoregressiveFlow(
            features=d,
            hidden_features=hidden[0],
            num_layers=TRANSFORMS,
            num_blocks_per_layer=len(hidden) - 1,
            use_residual_blocks=False,
        )
        out["nflows: MaskedAutoregressiveFlow"] = adam_step(peer, lambda: -peer.log_prob(x).mean())
    except ImportError:
        pass
    return out


def coupling_contenders(x: Tensor, hidden: list[int]) -> dict[str, Step]:
    d = x.shape[-1]
    out: dict[str, Step] = {
        "ours: RealNVP": _ours(_ours_realnvp(hidden, d), x, once=False),
        "ours: RealNVP (distribution built once)": _ours(_ours_realnvp(hidden, d), x, once=True),
    }
    if (step := _zuko(x, hidden, "RealNVP")) is not None:
        out["zuko: RealNVP"] = step
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__)
    args = parse_and_pin(parser, argv)
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, 3, 2)
    batch, dim, hidden = (16, 8, [16, 16]) if args.quick else (256, 64, [256, 256])
    x = torch.randn(batch, dim)
    results = {
        "autoregressive": run(autoregressive_contenders(x, hidden), repeats, per, warm),
        "coupling": run(coupling_contenders(x, hidden), repeats, per, warm),
    }
    for kind, rows in results.items():
        print(f"{kind}: training step, {args.threads} threads, median of {repeats} repeats")
        for name, r in rows.items():
            print(f"  {name:42s} {r['median_ms']:9.2f} ms  {r['ratio']:5.2f}x")
    write_results(args, "flow_step", results)
    return results


if __name__ == "__main__":
    main()
