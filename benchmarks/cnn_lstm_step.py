"""Training-step speed of Bayesian convolutions and LSTMs against torch's layers and peers.

Run by ``make bench`` after ``linear_step.py`` (same allocator setting), or directly::

    .venv/bin/python benchmarks/cnn_lstm_step.py [--quick] [--threads 2] [--repeats 9]

* CNN: 32x32x3 input, batch 128: conv 3->32, 32->64 stride 2, 64->128 stride 2 (3x3,
  ReLU), global average pool, linear 10; cross-entropy + KL/N + backward + Adam.
* LSTM: input 64, hidden 256, sequence 50, batch 64, one layer, a linear read-out of the
  last hidden state; regression loss + KL/N + backward + Adam.

Contenders run round-robin inside every repeat (the start rotates); a repeat's time is the
median of a few steps; the ratio is the median of the paired per-repeat ratios to the
deterministic model. Peers (bayesian-torch, blitz) are used when importable, with their
default priors; their forward passes return or store the KL as their docs describe.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_cli import parse_and_pin, step_parser, write_results
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

N = 60_000  # data-set size in the ELBO
Step = Callable[[], Tensor]


class _KLModel(nn.Module):
    """Wraps a peer model whose layers return ``(output, kl)``: sums the KLs."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks, self.head = nn.ModuleList(blocks), head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kl = x.new_zeros(())
        for b in self.blocks:
            out = b(x)
            if isinstance(out, tuple):
                x, k = out
                kl = kl + k
            else:
                x = out
        return self.head(x), kl


def _cnn(conv: Callable[..., nn.Module]) -> list[nn.Module]:
    return [
        conv(3, 32, 3, padding=1), nn.ReLU(),
        conv(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        conv(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ]  # fmt: skip


def adam_step(model: nn.Module, loss_fn: Callable[[], Tensor]) -> Step:
    opt = torch.optim.Adam(model.parameters())

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    return step


def cnn_contenders(x: Tensor, y: Tensor) -> dict[str, Step]:
    out: dict[str, Step] = {}
    for name, conv in (
        ("nn.Conv2d", nn.Conv2d),
        ("ours: Conv2dReparameterization", layers.Conv2dReparameterization),
        ("ours: Conv2dFlipout", layers.Conv2dFlipout),
        ("ours: Conv2dLocalReparameterization", layers.Conv2dLocalReparameterization),
    ):
        model = nn.Sequential(*_cnn(conv), nn.Linear(128, 10))

        def loss(model: nn.Module = model) -> Tensor:
            nll = F.cross_entropy(model(x), y)
            terms = bl.losses(model)
            return nll + sum(terms) / N if terms else nll

        out[name] = adam_step(model, loss)
    try:
        import bayesian_torch.layers as btl

        for name, cls in (("Reparameterization", btl.Conv2dReparameterization),
                          ("Flipout", btl.Conv2dFlipout)):  # fmt: skip
            peer = _KLModel(_cnn(cls), nn.Linear(128, 10))

            def loss(peer: nn.Module = peer) -> Tensor:
                logits, kl = peer(x)
                return F.cross_entropy(logits, y) + kl / N

            out[f"bayesian-torch: Conv2d{name}"] = adam_step(peer, loss)
    except ImportError:
        pass
    try:
        from blitz.modules import BayesianConv2d

        def blitz_conv(i: int, o: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
            return BayesianConv2d(i, o, (k, k), stride=stride, padding=padding)

        peer = nn.Sequential(*_cnn(blitz_conv), nn.Linear(128, 10))
        convs = [m for m in peer if isinstance(m, BayesianConv2d)]

        def loss(peer: nn.Module = peer, convs: list = convs) -> Tensor:
            nll = F.cross_entropy(peer(x), y)
            kl = sum(c.log_variational_posterior - c.log_prior for c in convs)
            return nll + kl / N

        out["blitz: BayesianConv2d"] = adam_step(peer, loss)
    except ImportError:
        pass
    return out


def lstm_contenders(x: Tensor, y: Tensor) -> dict[str, Step]:
    hidden = 256
    out: dict[str, Step] = {}
    for name, cls in (
        ("nn.LSTM", nn.LSTM),
        ("ours: LSTMReparameterization", layers.LSTMReparameterization),
        ("ours: LSTMFlipout", layers.LSTMFlipout),
    ):
        rnn, head = cls(x.shape[-1], hidden, batch_first=True), nn.Linear(hidden, 1)
        model = nn.ModuleDict({"rnn": rnn, "head": head})

        def loss(model: nn.ModuleDict = model) -> Tensor:
            seq, _ = model["rnn"](x)
            nll = F.mse_loss(model["head"](seq[:, -1]).squeeze(-1), y)
            terms = bl.losses(model)
            return nll + sum(terms) / N if terms else nll

        out[name] = adam_step(model, loss)
    try:
        import bayesian_torch.layers as btl

        rnn, head = btl.LSTMReparameterization(x.shape[-1], hidden), nn.Linear(hidden, 1)
        model = nn.ModuleDict({"rnn": rnn, "head": head})

        def loss_bt(model: nn.ModuleDict = model) -> Tensor:
            seq, _, kl = model["rnn"](x)  # (hidden sequence, (h, c), kl)
            return F.mse_loss(model["head"](seq[:, -1]).squeeze(-1), y) + kl / N

        out["bayesian-torch: LSTMReparameterization"] = adam_step(model, loss_bt)
    except ImportError:
        pass
    try:
        from blitz.modules import BayesianLSTM

        rnn, head = BayesianLSTM(x.shape[-1], hidden), nn.Linear(hidden, 1)
        model = nn.ModuleDict({"rnn": rnn, "head": head})

        def loss_blitz(model: nn.ModuleDict = model) -> Tensor:
            seq, _ = model["rnn"](x)
            kl = model["rnn"].log_variational_posterior - model["rnn"].log_prior
            return F.mse_loss(model["head"](seq[:, -1]).squeeze(-1), y) + kl / N

        out["blitz: BayesianLSTM"] = adam_step(model, loss_blitz)
    except ImportError:
        pass
    return out


def run(
    steps: dict[str, Step],
    repeats: int,
    per_repeat: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict]:
    """Round-robin timing (ms on ``clock``; ``time.process_time``: CPU time, see README)."""
    names = list(steps)
    for s in steps.values():
        for _ in range(warmup):
            s()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            ts = []
            for _ in range(per_repeat):
                t0 = clock()
                steps[n]()
                ts.append((clock() - t0) * 1e3)
            times[n].append(statistics.median(ts))
    base = names[0]
    return {
        n: {
            "median_ms": statistics.median(v),
            "ratio": statistics.median(a / b for a, b in zip(v, times[base], strict=True)),
            "repeats_ms": v,
        }
        for n, v in times.items()
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__)
    args = parse_and_pin(parser, argv)
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, 3, 2)
    cnn_batch, lstm_batch, seq = (8, 4, 5) if args.quick else (128, 64, 50)
    results = {}
    x, y = torch.randn(cnn_batch, 3, 32, 32), torch.randint(0, 10, (cnn_batch,))
    results["cnn"] = run(cnn_contenders(x, y), repeats, per, warm)
    x, y = torch.randn(lstm_batch, seq, 64), torch.randn(lstm_batch)
    results["lstm"] = run(lstm_contenders(x, y), repeats, per, warm)
    for model, rows in results.items():
        print(f"{model}: training step, {args.threads} threads, median of {repeats} repeats")
        for name, r in rows.items():
            print(f"  {name:42s} {r['median_ms']:9.2f} ms  {r['ratio']:5.2f}x")
    write_results(args, "cnn_lstm_step", results)
    return results


if __name__ == "__main__":
    main()
