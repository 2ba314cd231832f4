"""Cost of Bayesian LoRA: training step and K = 8 predictive against plain LoRA (issue 21).

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/lora_step.py [--quick] [--threads 2] [--repeats 9]
        [--num-samples 8] [--clock wall|cpu]

The model is the character transformer of ``examples/bayesian_transformer.py``
(``CharTransformer(..., bayesian=False)``: pre-norm blocks of ``nn.MultiheadAttention``
and an ``nn.Linear`` feed-forward pair) at the size ``examples/bayesian_lora.py``
fine-tunes (``SIZES``: dim 128, 4 heads, hidden 512, depth 2, context 64, batch 32),
with rank-8 adapters (alpha 16) on ``TARGETS`` = ``out_proj`` (the attention's output
projection), ``ff.0`` and ``ff.2`` of every block, made by ``bl.lora``:

* ``train``: one training step (forward, backward, ``torch.optim.Adam`` step) with loss
  ``NLL + sum(bl.losses(model)) / N`` (``N = NUM_EXAMPLES``; plain LoRA has no KL) of
  Bayesian LoRA (``posterior=`` each of ``ESTIMATORS``) against plain LoRA
  (``posterior=None``). Target: <= ``TRAIN_TARGET`` x.
* ``predict``: under ``torch.no_grad()`` in eval mode, ``bl.predict(model, x,
  num_samples=K).samples`` of Bayesian LoRA against ONE forward of the plain-LoRA model,
  for Bayesian adapters in every block (``every block``) and for Bayesian adapters in
  the last block only with plain adapters elsewhere (``last block``: ``bl.lora`` on the
  early blocks' layers with ``posterior=None``, then on the last block's with the
  estimator). Target: <= ``PREDICT_TARGET`` x. The ``last block`` rows measure whether
  ``bl.predict`` shares the computation before the first stochastic module (a trunk):
  without that, K samples run the whole model K times. The ``last ff.2 only`` rows put
  the one Bayesian adapter on the last block's feed-forward output (``TAIL``; plain
  adapters elsewhere) and predict with ``trunk="prefix"``: the smallest stochastic
  tail, whose K samples cost about ``prefix + K * tail`` of one forward.

Information rows (no target): the base model without adapters (one forward; a
training step of its own parameters is not what LoRA runs), the adapted model with
the attention's ``out_proj`` left alone (torch runs ``nn.MultiheadAttention`` with an
identity output projection when that layer is adapted: this row and the identity
projections alone, one per block, price it), plain
LoRA through ``bl.predict`` (nothing stochastic), ``trunk="prefix"`` where ``bl.predict``
takes it, and for Flipout in every block ``bl.predict(..., chunk_size=1)`` and a Python
loop of K forwards beside the default ``bl.predict``.

Measured (36e2a92 under load 2.1, 642d88a idle, fb233df under load 1.9; 2 threads,
wall clock, ``make bench``'s allocator setting; its JSON in ``results/``, not
committed): training step 1.17-1.21x (Flipout), 1.01-1.07x (reparameterization),
1.21-1.23x (local reparameterization) plain LoRA's: the target holds for each. Earlier
runs (3776986, 4f78301) gave 1.22-1.35x for both; Flipout's signs are cheaper since
36e2a92 (eight bytes to a random word), local reparameterization did not change: part of
the gap is the machine. ``bl.predict`` with K = 8: 8.2-10.1x one plain forward for every
block, 4.8-5.9x for the last block with ``trunk="prefix"``, and for the ``last ff.2
only`` rows 2.02-2.23x (reparameterization), 2.08x (local reparameterization; 2.29-2.44x
before fb233df computed its output moments once for the one-sample chunks), 2.27x
(Flipout; 2.29-2.58x before): the target holds there only. Plain LoRA (nothing
stochastic) predicts at 1.06-1.09x one forward with ``trunk="prefix"`` (it runs once).
An exact predictive runs every module after the first draw K times, so K = 8 costs at
least ``prefix + 8 * rest`` of one forward; 2.5x
needs the stochastic rest under (2.5 - 1) / 7 = 21 % of the forward: the last of 2
blocks plus the head is about 60 %, the last ``ff.2`` plus the head about 15 %.

Contenders of a table run round-robin inside every repeat (the start rotates); a
repeat's time is the median of ``CALLS`` calls; a ratio is the median of the paired
per-repeat ratios to the table's first row. Targets (PASS/FAIL, under ``"targets"``
in the JSON) are checked at the full size only (not ``--quick``).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_cli import paired, parse_sampling, print_paired, sampling_parser, write_results
from cnn_lstm_step import Step, run  # one timing loop for all benchmarks
from report import cpu_model, git_commit, loadavg
from torch import Tensor, nn

import bayesian_layers as bl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from bayesian_transformer import VOCAB, CharTransformer  # noqa: E402

TRAIN_TARGET = 1.3  # max Bayesian / plain LoRA training step
PREDICT_TARGET = 2.5  # max bl.predict (K = 8) / one plain-LoRA forward
#: the full size of examples/bayesian_lora.py; --quick: a tiny one (targets not checked)
SIZES = dict(dim=128, heads=4, hidden=512, depth=2, context=64, batch=32)
QUICK_SIZES = dict(dim=16, heads=2, hidden=32, depth=2, context=8, batch=4)
TARGETS = ("out_proj", "ff.0", "ff.2")
#: the one Bayesian adapter of the ``tail`` rows: the last block's feed-forward output
TAIL = "ff.2"
RANK, ALPHA = 8, 16.0
NUM_EXAMPLES = 40_000  # N of the ELBO: the example's fine-tuning characters
ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")
CALLS = {"train": (3, 2), "predict": (2, 1)}  # (calls per repeat, warm-up calls)
TAIL_ROW = "last ff.2 only, trunk='prefix'"
PLAIN_STEP = "plain LoRA: step"
PLAIN_FORWARD = "plain LoRA: one forward"


def base_model(sizes: dict[str, int]) -> CharTransformer:
    """The deterministic character transformer, the same weights every call."""
    torch.manual_seed(0)
    s = sizes
    return CharTransformer(
        len(VOCAB), s["dim"], s["heads"], s["hidden"], s["depth"], s["context"], bayesian=False
    )


def block_targets(depth: int, blocks: range) -> list[str]:
    """The qualified names of ``TARGETS`` in ``blocks`` (e.g. ``blocks.1.attn.out_proj``)."""
    names = {"out_proj": "attn.out_proj", "ff.0": "ff.0", "ff.2": "ff.2"}
    return [f"blocks.{i}.{names[t]}" for i in blocks for t in TARGETS if 0 <= i < depth]


def adapted(
    base: nn.Module,
    posterior: str | None,
    *,
    last_only: bool = False,
    tail_only: bool = False,
    targets=TARGETS,
) -> nn.Module:
    """A copy of ``base`` with rank-``RANK`` adapters on ``targets``; ``last_only``: the
    Bayesian ``posterior`` on the last block only, plain adapters on the others;
    ``tail_only``: Bayesian on the last block's ``ff.2`` only (``TAIL``), plain elsewhere."""
    model = copy.deepcopy(base)
    torch.manual_seed(1)  # the same start of A everywhere
    if not (last_only or tail_only):
        return bl.lora(model, target=list(targets), rank=RANK, alpha=ALPHA, posterior=posterior)
    depth = len(model.blocks)
    every = block_targets(depth, range(depth))
    if tail_only:
        bayesian = [f"blocks.{depth - 1}.{TAIL}"]
    else:
        bayesian = block_targets(depth, range(depth - 1, depth))
    plain = [t for t in every if t not in bayesian]
    bl.lora(model, target=plain, rank=RANK, alpha=ALPHA, posterior=None)
    return bl.lora(model, target=bayesian, rank=RANK, alpha=ALPHA, posterior=posterior)


def train_step(model: nn.Module, tokens: Tensor) -> Step:
    """One Adam step of the adapters on ``NLL + sum(bl.losses) / N``; ``tokens`` ``(B, T+1)``."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    x, y = tokens[:, :-1], tokens[:, 1:].flatten()

    def step() -> Tensor:
        loss = F.cross_entropy(model(x).flatten(0, 1), y)  # (B*T, V) logits
        kl = bl.losses(model)
        if kl:
            loss = loss + torch.stack(kl).sum() / NUM_EXAMPLES
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def train_steps(base: nn.Module, tokens: Tensor) -> dict[str, Step]:
    """Plain LoRA first (the baseline), then each estimator, then the information row."""
    steps = {PLAIN_STEP: train_step(adapted(base, None), tokens)}
    for est in ESTIMATORS:
        steps[f"Bayesian LoRA {est}: step"] = train_step(adapted(base, est), tokens)
    ff_only = adapted(base, None, targets=("ff.0", "ff.2"))
    steps["plain LoRA, out_proj not adapted: step"] = train_step(ff_only, tokens)
    return steps


def _forward(model: nn.Module, x: Tensor) -> Step:
    model.eval()

    @torch.no_grad()
    def step() -> Tensor:
        return model(x)  # (B, T, V)

    return step


def _predict(model: nn.Module, x: Tensor, k: int, trunk: str | None = "auto", **kw: int) -> Step:
    model.eval()
    if trunk != "auto":  # else bl.predict's default, whatever it is
        kw = {**kw, "trunk": trunk}  # type: ignore[dict-item]

    @torch.no_grad()
    def step() -> Tensor:
        return bl.predict(model, x, num_samples=k, **kw).samples  # (K, B, T, V)

    return step


def _loop(model: nn.Module, x: Tensor, k: int) -> Step:
    model.eval()

    @torch.no_grad()
    def step() -> Tensor:
        return torch.stack([model(x) for _ in range(k)])  # (K, B, T, V)

    return step


def prefix_supported() -> bool:
    """Whether ``bl.predict`` takes ``trunk="prefix"`` (any model's modules before its
    first draw run once)."""
    try:
        bl.predict(nn.Linear(1, 1), torch.zeros(1, 1), num_samples=1, trunk="prefix")
    except (TypeError, ValueError):
        return False
    return True


def _identity_projections(base: nn.Module, x: Tensor) -> Step:
    """The work an ``out_proj`` adapter adds inside torch's attention: one identity
    projection ``(B, T, D) -> (B, T, D)`` per block (``adapters/_attention.py``)."""
    h = torch.randn(*x.shape, base.head.in_features)  # (B, T, D)
    eye, zero = torch.eye(h.shape[-1]), torch.zeros(h.shape[-1])

    @torch.no_grad()
    def step() -> Tensor:
        return torch.stack([F.linear(h, eye, zero) for _ in base.blocks])

    return step


def predict_steps(base: nn.Module, x: Tensor, k: int, prefix: bool) -> dict[str, Step]:
    """One plain-LoRA forward first (the baseline), then the predictives of each estimator
    (every block, last block), then the information rows (``prefix``: the last-block
    models and plain LoRA with ``trunk="prefix"`` too)."""
    steps: dict[str, Step] = {PLAIN_FORWARD: _forward(adapted(base, None), x)}
    for est in ESTIMATORS:
        steps[f"Bayesian LoRA {est}, every block: predict"] = _predict(adapted(base, est), x, k)
        last = adapted(base, est, last_only=True)
        steps[f"Bayesian LoRA {est}, last block: predict"] = _predict(last, x, k)
        if prefix:
            name = f"Bayesian LoRA {est}, last block: predict trunk='prefix'"
            steps[name] = _predict(last, x, k, trunk="prefix")
            tail = adapted(base, est, tail_only=True)
            steps[f"Bayesian LoRA {est}, {TAIL_ROW}: predict"] = _predict(tail, x, k, "prefix")
    steps["base model (no adapters): one forward"] = _forward(copy.deepcopy(base), x)
    ff_only = adapted(base, None, targets=("ff.0", "ff.2"))
    steps["plain LoRA, out_proj not adapted: one forward"] = _forward(ff_only, x)
    steps["identity out projections of the out_proj adapters"] = _identity_projections(base, x)
    steps["plain LoRA: predict"] = _predict(adapted(base, None), x, k)
    if prefix:
        steps["plain LoRA: predict trunk='prefix'"] = _predict(adapted(base, None), x, k, "prefix")
    flipout = adapted(base, "flipout")
    steps["Bayesian LoRA flipout, every block: predict chunk_size=1"] = _predict(
        flipout, x, k, chunk_size=1
    )
    steps[f"Bayesian LoRA flipout, every block: loop of {k}"] = _loop(flipout, x, k)
    return steps


def targets(results: dict[str, dict], full: bool) -> list[dict]:
    """``train``: each Bayesian step <= ``TRAIN_TARGET`` x plain LoRA's; ``predict``: each
    Bayesian ``bl.predict`` (every block, last block) <= ``PREDICT_TARGET`` x one
    plain-LoRA forward. Checked only for a full-size run (``full``)."""
    if not full:
        return []
    out = []
    for key, rows in results.items():
        if key.startswith("train"):
            names = [f"Bayesian LoRA {e}: step" for e in ESTIMATORS]
            base, limit = PLAIN_STEP, TRAIN_TARGET
        elif key.startswith("predict"):
            names = [f"Bayesian LoRA {e}, {w}: predict" for e in ESTIMATORS
                     for w in ("every block", "last block", TAIL_ROW)]  # fmt: skip
            names = [n for n in names if n in rows]  # the tail rows need trunk="prefix"
            base, limit = PLAIN_FORWARD, PREDICT_TARGET
        else:
            continue
        for name in names:
            value = paired(rows, name, base)["ratio"]
            out.append({"check": f"{key} {name} <= {limit}x {base}",
                        "value": value, "pass": value <= limit})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = sampling_parser(__doc__, num_samples=8)
    args, clock = parse_sampling(parser, argv)
    k = args.num_samples
    repeats = 2 if args.quick else args.repeats
    calls = {key: (1, 1) for key in CALLS} if args.quick else CALLS
    sizes = QUICK_SIZES if args.quick else SIZES
    meta = {"threads": args.threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "git_commit": git_commit(), "clock": args.clock,
            "num_samples": k, "repeats": repeats, "calls_per_repeat_and_warmup": calls,
            "sizes": sizes, "targets": list(TARGETS), "rank": RANK, "alpha": ALPHA,
            "num_examples": NUM_EXAMPLES, "loadavg_1min_start": loadavg()}  # fmt: skip
    base = base_model(sizes)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, len(VOCAB), (sizes["batch"], sizes["context"] + 1), generator=g)
    tag = f"@{sizes['batch']}x{sizes['context']}"
    results: dict[str, dict] = {}
    results[f"train {tag}"] = run(train_steps(base, tokens), repeats, *calls["train"], clock)
    prefix = prefix_supported()
    meta["trunk_prefix"] = prefix
    steps = predict_steps(base, tokens[:, :-1], k, prefix)
    results[f"predict K={k} {tag}"] = run(steps, repeats, *calls["predict"], clock)
    meta["loadavg_1min_end"] = loadavg()
    print(f"LoRA rank {RANK} on {', '.join(TARGETS)}; {sizes}; {args.threads} threads, clock "
          f"{args.clock}, median of {repeats} repeats; trunk='prefix': "
          f"{'yes' if prefix else 'no'}; load average "
          f"{meta['loadavg_1min_start']} -> {meta['loadavg_1min_end']}")  # fmt: skip
    for key, rows in results.items():
        print_paired(key, rows, width=72)
    checks = targets(results, full=not args.quick)
    if not checks:
        print("targets: checked at the full size only")
    for c in checks:
        print(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['check']}  ({c['value']:.3f})")
    write_results(args, "lora_step", {"meta": meta, "targets": checks, **results})
    return results


if __name__ == "__main__":
    main()
