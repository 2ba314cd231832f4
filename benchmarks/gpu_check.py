"""One prepared check for a CUDA machine: every layer family on the GPU against the CPU,
``torch.compile`` there, bf16 autocast there, and the training throughput of a Bayesian
Transformer against the same model with deterministic layers.

    python benchmarks/gpu_check.py                 # on a CUDA machine (skips cleanly without)
    python benchmarks/gpu_check.py --device cpu --quick   # seconds: proves the script runs

Checks, per family (dense, MCDropout, conv and transposed conv, LSTM/GRU cells, LSTM,
attention, embedding, stochastic outputs, flows, Discretize):

1. *device*: the CPU model copied to the device gives the CPU output in posterior-mean
   mode (TF32 off), and its sampled outputs have the CPU's means and variances
   (two-sample z-tests, Bonferroni over all elements, α = 1e-3).
2. *compile*: ``torch.compile(..., fullgraph=True)`` on the device matches eager in
   posterior-mean mode and samples with eager's moments.
3. *bf16*: under ``torch.autocast(device, bfloat16)`` the output dtype is the one torch's
   deterministic layer gives, the losses are float32 and equal to the plain ones, the
   posterior-mean output is the float32 one to bf16 precision.

Predictive: ``bl.predict`` with K = 32 of the 784-512-512-10 Bayesian MLP (each dense
estimator, and ``nn.Linear`` with ``MCDropout``), batch 16, eager against the same call
captured once as a CUDA graph (``torch.cuda.CUDAGraph``, replayed: each replay draws new
noise from the graph-safe generator) and against ``torch.compile(mode="reduce-overhead")``
(CUDA graphs through inductor); per contender the median ms per predictive, the ratio to
eager, and a check: a new sample on every call, and the samples' means and variances equal
eager's (two-sample z-tests as above). Without CUDA (``--device cpu``) the graph contender
is skipped and the compiled one uses the default mode.

Throughput: a decoder-only character transformer (pre-norm blocks of causal multi-head
attention and a GELU feed-forward, as ``examples/bayesian_transformer.py``), built once
with ``MultiheadAttentionFlipout``/``LinearFlipout`` and once with ``nn.MultiheadAttention``
/``nn.Linear``; tokens per second of a training step (cross-entropy + KL/N + backward +
AdamW), eager and compiled, fp32 and bf16 autocast. It is built here rather than imported
because the example has no deterministic twin. Prints a table and writes JSON; the exit
status is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

Inputs = tuple[Tensor, ...]


@dataclass
class Family:
    build: Callable[[], tuple[nn.Module, Inputs]]
    fn: Callable[[nn.Module, Inputs], Tensor]
    #: torch's deterministic counterpart and its call, for the autocast dtype (None: skip)
    reference: Callable[[], tuple[nn.Module, Callable[[nn.Module, Inputs], Tensor]]] | None
    #: a deterministic function compared in posterior-mean mode (default: ``fn``)
    mean: Callable[[nn.Module, Inputs], Tensor] | None = None

    def mean_fn(self, m: nn.Module, x: Inputs) -> Tensor:
        return (self.mean or self.fn)(m, x)


def _widen(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rho"):
                p.fill_(math.log(math.expm1(0.3)))
    return model


def _flat(*ts: Tensor) -> Tensor:
    return torch.cat([t.float().flatten() for t in ts])


def _one(cls: Callable[..., nn.Module], *args: int, x: Callable[[], Tensor]) -> Callable:
    return lambda: (_widen(cls(*args)), (x(),))


def _first(m: nn.Module, x: Inputs) -> Tensor:
    out = m(*x)
    return out[0] if isinstance(out, tuple) else out


def _outputs() -> tuple[nn.Module, Inputs]:
    model = nn.ModuleList([layers.Normal(2, in_features=5), layers.Categorical(3, in_features=5),
                           layers.MixtureLogistic(2, num_components=3, in_features=5)])  # fmt: skip
    return model, (torch.randn(4, 5),)


def _flows() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(layers.RealNVP(layers.MADE(hidden_dims=[8])), layers.Permute(4),
                          layers.MaskedAutoregressiveFlow(layers.MADE(hidden_dims=[8])),
                          layers.ActNorm())  # fmt: skip
    x = torch.randn(6, 4)
    model(x)  # lazy builds and ActNorm's data-dependent initialisation
    return model, (x,)


def _discretize() -> tuple[nn.Module, Inputs]:
    model = nn.Sequential(
        layers.MixtureLogistic(1, num_components=3, in_features=4), layers.Discretize(0, 8)
    )
    return model, (torch.randn(3, 4),)


def _cells_fn(m: nn.Module, x: Inputs) -> Tensor:
    lstm, gru = m
    state, h = lstm.get_initial_state(x[0][0]), gru.get_initial_state(x[0][0])
    for x_t in x[0]:
        state, h = lstm(x_t, state), gru(x_t, h)
    return _flat(*state, h)


def _attn_fn(m: nn.Module, x: Inputs) -> Tensor:
    q = x[0]
    return _first(m, (q, q, q))


FAMILIES: dict[str, Family] = {
    **{
        cls: Family(_one(getattr(layers, cls), 6, 5, x=lambda: torch.randn(4, 6)), _first,
                    lambda: (nn.Linear(6, 5), _first))
        for cls in ("LinearReparameterization", "LinearFlipout", "LinearLocalReparameterization")
    },
    "MCDropout": Family(lambda: (layers.MCDropout(0.3), (torch.randn(4, 6),)), _first,
                        lambda: (nn.Dropout(0.3), _first)),
    **{
        cls: Family(_one(getattr(layers, cls), 3, 4, 3, x=lambda: torch.randn(2, 3, 6, 6)),
                    _first, lambda: (nn.Conv2d(3, 4, 3), _first))
        for cls in ("Conv2dReparameterization", "Conv2dFlipout", "Conv2dLocalReparameterization")
    },
    **{
        cls: Family(_one(getattr(layers, cls), 3, 4, 2, x=lambda: torch.randn(2, 3, 4, 4)),
                    _first, lambda: (nn.ConvTranspose2d(3, 4, 2), _first))
        for cls in ("ConvTranspose2dReparameterization", "ConvTranspose2dFlipout")
    },
    "recurrent cells": Family(
        lambda: (_widen(nn.ModuleList([layers.LSTMCellFlipout(3, 4),
                                       layers.GRUCellReparameterization(3, 4)])),
                 (torch.randn(3, 2, 3),)),
        _cells_fn, None,
    ),
    **{
        cls: Family(lambda cls=cls: (_widen(getattr(layers, cls)(3, 4, batch_first=True)),
                                     (torch.randn(2, 5, 3),)),
                    _first, lambda: (nn.LSTM(3, 4, batch_first=True), _first))
        for cls in ("LSTMReparameterization", "LSTMFlipout")
    },
    **{
        cls: Family(lambda cls=cls: (_widen(getattr(layers, cls)(8, 2, batch_first=True)),
                                     (torch.randn(2, 5, 8),)),
                    _attn_fn, lambda: (nn.MultiheadAttention(8, 2, batch_first=True), _attn_fn))
        for cls in ("MultiheadAttentionReparameterization", "MultiheadAttentionFlipout")
    },
    "EmbeddingReparameterization": Family(
        lambda: (_widen(layers.EmbeddingReparameterization(10, 4)),
                 (torch.tensor([[1, 3, 3, 9], [0, 2, 5, 1]]),)),
        _first, lambda: (nn.Embedding(10, 4), _first),
    ),
    "stochastic outputs": Family(
        _outputs, lambda m, x: _flat(*(o(x[0]).value for o in m)), None,
        lambda m, x: _flat(*(o(x[0]).distribution.mean for o in (m[0], m[2])),
                           m[1](x[0]).distribution.probs),
    ),
    "flows": Family(
        _flows, lambda m, x: _flat(layers.reverse_sequential(m, torch.randn_like(x[0]))), None,
        lambda m, x: _flat(m(x[0]), layers.sequential_log_det_jacobian(m, x[0])),
    ),
    "Discretize": Family(
        _discretize, lambda m, x: _flat(m(x[0]).value), None,
        lambda m, x: _flat(m(x[0]).distribution.mean),
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _to(x: Inputs, device: torch.device) -> Inputs:
    return tuple(t.to(device) for t in x)


def _draws(fn: Callable[[], Tensor], n: int) -> Tensor:
    with torch.no_grad():
        return torch.stack([fn().float().cpu() for _ in range(n)])


def _moments_agree(a: Tensor, b: Tensor) -> bool:
    """Two-sample z-tests of means and variances per element (any distribution:
    SE²(var) = (m₄ - s⁴)/n), Bonferroni over 2·d checks, α = 1e-3."""
    n, d = a.shape[0], a[0].numel()
    z = NormalDist().inv_cdf(1 - 1e-3 / (4 * d))

    def stats(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v = s.var(0)
        return s.mean(0), v, ((s - s.mean(0)).pow(4).mean(0) - v.square()) / n

    (ma, va, sa), (mb, vb, sb) = stats(a), stats(b)
    mean_ok = (ma - mb).abs() <= z * ((va + vb) / n).sqrt() + 1e-5
    var_ok = (va - vb).abs() <= z * (sa + sb).sqrt() + 1e-5
    return bool(mean_ok.all() and var_ok.all())


def _close(a: Tensor, b: Tensor, rel: float) -> bool:
    return bool(((a.float().cpu() - b.float().cpu()).abs() <= rel * (b.abs().max() + 1e-6)).all())


def check_device(family: Family, device: torch.device, n: int) -> str:
    torch.manual_seed(0)
    model, x = family.build()
    moved, xd = copy.deepcopy(model).to(device), _to(x, device)
    with torch.no_grad(), bl.posterior_mean(model), bl.posterior_mean(moved):
        if not _close(family.mean_fn(moved, xd), family.mean_fn(model, x), 1e-4):
            return "FAIL posterior mean differs"
    if not _moments_agree(_draws(lambda: family.fn(moved, xd), n),
                          _draws(lambda: family.fn(model, x), n)):  # fmt: skip
        return "FAIL sampled moments differ"
    return "ok"


def check_compile(family: Family, device: torch.device, n: int, backend: str) -> str:
    torch.manual_seed(0)
    model, x = family.build()
    model, x = model.to(device), _to(x, device)
    compiled = torch.compile(family.fn, backend=backend, fullgraph=True)
    compiled_mean = torch.compile(family.mean_fn, backend=backend, fullgraph=True)
    with torch.no_grad(), bl.posterior_mean(model):
        if not _close(compiled_mean(model, x), family.mean_fn(model, x), 1e-4):
            return "FAIL posterior mean differs"
    if not _moments_agree(_draws(lambda: compiled(model, x), n),
                          _draws(lambda: family.fn(model, x), n)):  # fmt: skip
        return "FAIL sampled moments differ"
    return "ok"


def check_bf16(family: Family, device: torch.device) -> str:
    torch.manual_seed(0)
    model, x = family.build()
    model, x = model.to(device), _to(x, device)
    plain = bl.losses(model)
    with bl.posterior_mean(model), torch.no_grad():
        full = family.mean_fn(model, x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = family.mean_fn(model, x)
            losses = bl.losses(model)
    if any(t.dtype != torch.float32 for t in losses):
        return "FAIL losses not float32"
    if not all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(losses, plain, strict=True)):
        return "FAIL losses differ under autocast"
    if family.reference is not None:
        ref, call = family.reference()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            expected = call(ref.to(device), x).dtype
        if half.dtype != expected:
            return f"FAIL dtype {half.dtype}, torch gives {expected}"
    if not _close(half, full, 2**-5):
        return "FAIL bf16 output far from float32"
    return "ok"


# --------------------------------------------------------------------------------------
# Throughput: Bayesian Transformer against its deterministic twin
# --------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, bayesian: bool) -> None:
        super().__init__()
        attn = layers.MultiheadAttentionFlipout if bayesian else nn.MultiheadAttention
        linear = layers.LinearFlipout if bayesian else nn.Linear
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn(dim, heads, batch_first=True)
        self.ff = nn.Sequential(linear(dim, 4 * dim), nn.GELU(), linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class Decoder(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, depth: int, context: int,
                 bayesian: bool) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, bayesian) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, vocab))

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.embed(tokens) + self.position[:t]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


def throughput(device: torch.device, quick: bool, backend: str) -> list[dict]:
    vocab, dim, heads, depth, context, batch = (
        (32, 16, 2, 1, 8, 4) if quick else (96, 256, 8, 4, 128, 32)
    )
    steps, repeats = (2, 1) if quick else (10, 5)
    rows = []
    for compiled, amp, bayesian in itertools.product(
        (False,) if quick else (False, True), (False, True), (False, True)
    ):
        torch.manual_seed(0)
        model = Decoder(vocab, dim, heads, depth, context, bayesian).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, vocab, (batch, context + 1), device=device)

        def loss_fn(model: nn.Module = model, tokens: Tensor = tokens, amp: bool = amp) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(tokens[:, :-1])
            nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            kl = bl.losses(model)
            return nll + sum(kl) / 1e6 if kl else nll

        loss = torch.compile(loss_fn, backend=backend) if compiled else loss_fn

        def step(opt: torch.optim.Optimizer = opt, loss: Callable = loss) -> None:
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()

        step()  # warm-up (and compilation)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / steps)
        ms = statistics.median(times) * 1e3
        rows.append({"model": "bayesian" if bayesian else "deterministic",
                             "compiled": compiled, "bf16": amp, "step_ms": ms,
                             "tokens_per_s": batch * context / ms * 1e3})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------
# Predictive: K = 32 function samples of a Bayesian MLP, eager vs CUDA graph vs compiled
# --------------------------------------------------------------------------------------

PREDICTIVE_MODELS = ("LinearReparameterization", "LinearFlipout",
                     "LinearLocalReparameterization", "MCDropout")  # fmt: skip


def _mlp(name: str, sizes: tuple[int, ...]) -> nn.Module:
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        mods.append(nn.Linear(fan_in, fan_out) if name == "MCDropout"
                    else getattr(layers, name)(fan_in, fan_out))  # fmt: skip
        if i < len(sizes) - 2:
            mods += [nn.ReLU(), layers.MCDropout(0.2)] if name == "MCDropout" else [nn.ReLU()]
    return _widen(nn.Sequential(*mods))


def _cuda_graph(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``fn`` captured once as a CUDA graph; the returned callable replays it and returns
    a copy of its static output (random draws inside a graph are graph-safe: every replay
    advances the generator's offset, so it draws new numbers)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (caches, workspaces)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fn()

    def replay() -> Tensor:
        graph.replay()
        return static.clone()

    return replay


def _time_ms(fn: Callable[[], Tensor], device: torch.device, calls: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e3


def _predictive_check(fn: Callable[[], Tensor], eager: Tensor, reps: int) -> str:
    first = fn()
    if torch.equal(first, fn()):
        return "FAIL the same sample on two calls"
    draws = torch.cat([fn().float().cpu() for _ in range(reps)])  # (reps·K, B, C)
    return "ok" if _moments_agree(draws, eager) else "FAIL sampled moments differ"


def predictive(device: torch.device, quick: bool, backend: str) -> list[dict]:
    """Rows ``{model, contender, ms, vs_eager, check}`` of the K = 32 predictive."""
    sizes, batch, k = ((16, 8, 8, 3), 4, 32) if quick else ((784, 512, 512, 10), 16, 32)
    calls, repeats, reps = (2, 1, 2) if quick else (20, 5, 30)
    rows = []
    for name in PREDICTIVE_MODELS[:2] if quick else PREDICTIVE_MODELS:
        torch.manual_seed(0)
        model = _mlp(name, sizes).to(device).eval()
        x = torch.randn(batch, sizes[0], device=device)

        def eager(model: nn.Module = model, x: Tensor = x) -> Tensor:
            with torch.no_grad():
                return bl.predict(model, x, k).samples  # (K, B, C)

        reference = torch.cat([eager().float().cpu() for _ in range(reps)])
        if device.type == "cuda" and backend == "inductor":
            compiled = torch.compile(eager, mode="reduce-overhead")
        else:
            compiled = torch.compile(eager, backend=backend)
        contenders: dict[str, Callable[[], Callable[[], Tensor]]] = {
            "eager": lambda eager=eager: eager,
            "cuda graph": lambda eager=eager: _cuda_graph(eager),
            "compiled": lambda compiled=compiled: compiled,
        }
        eager_ms = None
        for contender, make in contenders.items():
            row: dict[str, object] = {"model": name, "contender": contender, "K": k,
                                      "batch": batch}  # fmt: skip
            if contender == "cuda graph" and device.type != "cuda":
                rows.append({**row, "check": "skipped (no CUDA)"})
                continue
            try:
                fn = make()
                for _ in range(2):  # warm-up (compilation, autotuning, graph recording)
                    fn()
                row["check"] = _predictive_check(fn, reference, reps)
                row["ms"] = _time_ms(fn, device, calls, repeats)
            except Exception as exc:  # report and go on: one prepared run on a rare machine
                row["check"] = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if not quick:
                    traceback.print_exc()
            if contender == "eager":
                eager_ms = row.get("ms")
            if "ms" in row and eager_ms:
                row["vs_eager"] = row["ms"] / eager_ms
            rows.append(row)
        torch._dynamo.reset()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="seconds: a smoke run")
    parser.add_argument("--samples", type=int, default=2000, help="draws per moment check")
    parser.add_argument("--backend", default=None, help="compile backend (default inductor; "
                        "aot_eager with --quick)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped (use --device cpu for a smoke run)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = args.backend or ("aot_eager" if args.quick else "inductor")
    n = 50 if args.quick else args.samples
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name}, torch {torch.__version__}, compile backend {backend}")
    checks: dict[str, dict[str, str]] = {}
    compile_families = ["LinearFlipout"] if args.quick else list(FAMILIES)
    for fname, family in FAMILIES.items():
        row = {}
        for check, run in (
            ("device vs cpu", lambda f=family: check_device(f, device, n)),
            ("compile", lambda f=family, fname=fname: check_compile(f, device, n, backend)
             if fname in compile_families else "skipped (--quick)"),
            ("bf16 autocast", lambda f=family: check_bf16(f, device)),
        ):  # fmt: skip
            try:
                row[check] = run()
            except Exception as exc:  # report and go on: one prepared run on a rare machine
                row[check] = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if not args.quick:
                    traceback.print_exc()
            torch._dynamo.reset()
        checks[fname] = row
        print(f"  {fname:38s} " + "  ".join(f"{k}: {v}" for k, v in row.items()))
    pred_rows = predictive(device, args.quick, backend)
    print(f"  {'predictive K=32':38s} {'contender':>10s} {'ms':>9s} {'vs eager':>9s}  check")
    for r in pred_rows:
        ms = f"{r['ms']:9.2f}" if "ms" in r else f"{'':9s}"
        vs = f"{r['vs_eager']:8.2f}x" if "vs_eager" in r else f"{'':9s}"
        print(f"  {r['model']:38s} {r['contender']:>10s} {ms} {vs}  {r['check']}")
    rows = throughput(device, args.quick, backend)
    base = {(r["compiled"], r["bf16"]): r for r in rows if r["model"] == "deterministic"}
    print(f"  {'transformer':14s} {'compiled':>8s} {'bf16':>5s} {'step ms':>9s} "
          f"{'tokens/s':>10s} {'vs deterministic':>17s}")  # fmt: skip
    for r in rows:
        ratio = r["step_ms"] / base[(r["compiled"], r["bf16"])]["step_ms"]
        r["vs_deterministic"] = ratio
        print(f"  {r['model']:14s} {r['compiled']!s:>8s} {r['bf16']!s:>5s} "
              f"{r['step_ms']:9.2f} {r['tokens_per_s']:10.0f} {ratio:16.2f}x")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ".quick" if args.quick else ""
    out = {"device": name, "torch": torch.__version__, "checks": checks,
           "predictive": pred_rows, "throughput": rows}  # fmt: skip
    (args.out / f"gpu_check.{device.type}{suffix}.json").write_text(json.dumps(out, indent=1))
    failed = [f"{f}: {c}" for f, row in checks.items() for c, v in row.items()
              if v.startswith(("FAIL", "ERROR"))]  # fmt: skip
    failed += [f"predictive {r['model']} {r['contender']}: {r['check']}" for r in pred_rows
               if str(r["check"]).startswith(("FAIL", "ERROR"))]  # fmt: skip
    if failed:
        print("FAILED:", *failed, sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
