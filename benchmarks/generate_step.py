"""Cost of generating text with Bayesian LoRA: ``bl.generate`` (K = 8 function samples
mixed per token) against plain LoRA's generation of the same tokens (issue 21,
deliverable 4).

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/generate_step.py [--quick] [--threads 2] [--repeats 5]
        [--num-samples 8] [--clock wall|cpu]

The model is a ``transformers`` GPT-2 built offline from a config (``SIZES``: 4 blocks,
width 256, 4 heads, 1024-token vocabulary; the code path after ``from_pretrained``) with
rank-8 adapters (alpha 16) on ``c_attn`` and ``c_proj`` (attention and feed-forward
output) of every block, made by ``bl.lora``. Each row generates ``NEW_TOKENS`` tokens
after a ``(B, T)`` prompt under ``torch.no_grad()`` in eval mode:

* ``plain LoRA: generate`` (the baseline): ``bl.generate(plain, prompt, n, 1)``: one
  sample, nothing stochastic, the key-value cache of the one model.
* ``every block``: Bayesian adapters (``posterior=`` each of ``ESTIMATORS``) in every
  block, K samples folded into the batch, one key-value cache per sample (the default).
* ``last block, trunk='prefix'``: plain adapters in the blocks before the last, Bayesian
  ones in the last: the blocks before it run once per token and keep one cache for the
  K samples; ``trunk=None`` beside it (K caches of every block).
* ``every block, cache=False`` (Flipout, information): ``bl.predict`` on the whole
  sequence at every token, what a model without a cache costs.

Contenders of a table run round-robin inside every repeat (the start rotates); a
repeat's time is the median of ``CALLS`` calls; a ratio is the median of the paired
per-repeat ratios to the first row. Information only: no targets (issue 21's cost
target is ``bl.predict``'s, in ``lora_step.py``).
"""

from __future__ import annotations

import copy
import os

import torch
from bench_cli import parse_sampling, print_paired, sampling_parser, write_results
from cnn_lstm_step import Step, run  # one timing loop for all benchmarks
from report import cpu_model, git_commit, loadavg
from torch import Tensor, nn

import bayesian_layers as bl

SIZES = dict(n_layer=4, n_embd=256, n_head=4, vocab_size=1024, batch=4, prompt=64)
QUICK_SIZES = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=32, batch=2, prompt=4)
NEW_TOKENS, QUICK_NEW_TOKENS = 32, 3
TARGETS = ("c_attn", "c_proj")
RANK, ALPHA = 8, 16.0
ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")
CALLS = (2, 1)  # (calls per repeat, warm-up calls)
PLAIN = "plain LoRA: generate"


def base_model(sizes: dict[str, int]) -> nn.Module:
    """The deterministic GPT-2, the same weights every call (ImportError without
    ``transformers``)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=sizes["n_layer"], n_embd=sizes["n_embd"], n_head=sizes["n_head"],
        vocab_size=sizes["vocab_size"], n_positions=256, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def adapted(base: nn.Module, posterior: str | None, *, last_only: bool = False) -> nn.Module:
    """A copy of ``base`` with adapters on ``TARGETS``; ``last_only``: Bayesian in the last
    block, plain in the others. ``B`` is drawn (LoRA starts it at 0) so ``A`` matters."""
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    if last_only:
        last = len(model.transformer.h) - 1
        early = [name for i in range(last) for name in _block_targets(i)]
        bl.lora(model, target=early, rank=RANK, alpha=ALPHA, posterior=None)
        final = _block_targets(last)
        model = bl.lora(model, target=final, rank=RANK, alpha=ALPHA, posterior=posterior)
    else:
        model = bl.lora(model, target=list(TARGETS), rank=RANK, alpha=ALPHA, posterior=posterior)
    for _, adapter in bl.adapters.adapters(model):
        nn.init.normal_(adapter.lora_B.weight, std=0.02)
    return model.eval()


def _block_targets(i: int) -> list[str]:
    """The qualified names of ``TARGETS`` in block ``i``."""
    return [f"transformer.h.{i}.attn.c_attn", f"transformer.h.{i}.attn.c_proj",
            f"transformer.h.{i}.mlp.c_proj"]  # fmt: skip


def _generate(model: nn.Module, prompt: Tensor, n: int, k: int, **kw: object) -> Step:
    def step() -> Tensor:
        g = torch.Generator().manual_seed(0)
        return bl.generate(model, prompt, n, k, generator=g, **kw).tokens  # type: ignore[arg-type]

    return step


def generate_steps(base: nn.Module, prompt: Tensor, n: int, k: int) -> dict[str, Step]:
    """Plain LoRA first (the baseline), then each estimator, then the information rows."""
    steps: dict[str, Step] = {PLAIN: _generate(adapted(base, None), prompt, n, 1)}
    for est in ESTIMATORS:
        steps[f"Bayesian LoRA {est}, every block: generate"] = _generate(
            adapted(base, est), prompt, n, k
        )
        last = adapted(base, est, last_only=True)
        steps[f"Bayesian LoRA {est}, last block, trunk='prefix': generate"] = _generate(
            last, prompt, n, k, trunk="prefix"
        )
        steps[f"Bayesian LoRA {est}, last block, trunk=None: generate"] = _generate(
            last, prompt, n, k, trunk=None
        )
    steps["Bayesian LoRA flipout, every block, cache=False: generate"] = _generate(
        adapted(base, "flipout"), prompt, n, k, cache=False
    )
    return steps


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = sampling_parser(__doc__, num_samples=8)
    parser.set_defaults(repeats=5)
    args, clock = parse_sampling(parser, argv)
    k = args.num_samples
    repeats = 2 if args.quick else args.repeats
    calls = (1, 1) if args.quick else CALLS
    sizes = QUICK_SIZES if args.quick else SIZES
    n = QUICK_NEW_TOKENS if args.quick else NEW_TOKENS
    meta = {"threads": args.threads, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "git_commit": git_commit(), "clock": args.clock,
            "num_samples": k, "repeats": repeats, "calls_per_repeat_and_warmup": calls,
            "sizes": sizes, "new_tokens": n, "targets": list(TARGETS), "rank": RANK,
            "alpha": ALPHA, "loadavg_1min_start": loadavg()}  # fmt: skip
    try:
        base = base_model(sizes)
    except ImportError:
        print("generate_step: transformers is not installed (the `hf` extra); skipped")
        return {}
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, sizes["vocab_size"], (sizes["batch"], sizes["prompt"]), generator=g)
    key = f"generate {n} tokens, K={k} @{sizes['batch']}x{sizes['prompt']}"
    results = {key: run(generate_steps(base, prompt, n, k), repeats, *calls, clock)}
    meta["loadavg_1min_end"] = loadavg()
    print(f"GPT-2 {sizes}, LoRA rank {RANK} on {', '.join(TARGETS)}; {n} new tokens; "
          f"{args.threads} threads, clock {args.clock}, median of {repeats} repeats; load "
          f"average {meta['loadavg_1min_start']} -> {meta['loadavg_1min_end']}")  # fmt: skip
    print_paired(key, results[key], width=64)
    write_results(args, "generate_step", {"meta": meta, **results})
    return results


if __name__ == "__main__":
    main()
