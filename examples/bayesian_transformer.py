"""The Bayesian Transformer (paper §3.1): a character language model with Flipout layers.

A decoder-only transformer whose attention is ``layers.MultiheadAttentionFlipout``
and whose feed-forward layers are ``layers.LinearFlipout`` (embeddings, layer norms
and the output head stay deterministic), trained by variational inference on the
source code of CPython's standard library (read from this interpreter's own
installation; nothing is downloaded). It reports validation loss and perplexity
with the posterior mean and with the Monte Carlo predictive, and the uncertainty
of the next-token distribution over weight samples: the variance of the
next-token probabilities and the mutual information between token and weights.

    python examples/bayesian_transformer.py                          # one process
    torchrun --nproc_per_node=2 examples/bayesian_transformer.py     # tensor parallel
    torchrun --nproc_per_node=2 examples/bayesian_transformer.py --data-parallel  # DDP
    python examples/bayesian_transformer.py --deterministic          # torch baseline

Tensor parallelism shards every block with ``bl.distributed.transformer_plan``
(head-parallel attention, column/row-parallel feed-forward); data parallelism
wraps the model in ``DistributedDataParallel`` with independent noise per rank.
Both use ``bl.distributed.elbo_loss`` so the KL is counted once.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

#: standard-library modules whose source is the corpus (all pure Python in CPython)
MODULES = (
    "argparse", "textwrap", "string", "functools", "heapq", "bisect", "fractions",
    "statistics", "random", "calendar", "difflib", "inspect", "pathlib", "tokenize",
)  # fmt: skip
VOCAB = [chr(c) for c in range(32, 127)] + ["\n", "\t"]  # printable ASCII; others -> "?"


def corpus(max_chars: int) -> str:
    """The source text of :data:`MODULES`, as installed with this Python."""
    import importlib

    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in MODULES)
    return text[:max_chars]


def encode(text: str) -> Tensor:
    index = {c: i for i, c in enumerate(VOCAB)}
    unknown = index["?"]
    return torch.tensor([index.get(c, unknown) for c in text], dtype=torch.long)


class Block(nn.Module):
    """Pre-norm transformer block: causal Flipout attention, Flipout feed-forward
    (``bayesian=False``: torch's deterministic layers, the baseline)."""

    def __init__(self, dim: int, heads: int, hidden: int, bayesian: bool = True) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        attention = layers.MultiheadAttentionFlipout if bayesian else nn.MultiheadAttention
        linear = layers.LinearFlipout if bayesian else nn.Linear
        self.attn = attention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(linear(dim, hidden), nn.GELU(), linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.ff(self.ln2(x))


class CharTransformer(nn.Module):
    """Decoder-only character model. Input ``(B, T)`` token ids; output ``(B, T, V)`` logits."""

    def __init__(
        self, vocab: int, dim: int, heads: int, hidden: int, depth: int, context: int,
        bayesian: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, bayesian) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        x = self.embed(tokens) + self.position[:t]  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def batches(data: Tensor, batch: int, context: int, generator: torch.Generator) -> Tensor:
    """``batch`` random windows of ``context + 1`` tokens: shape ``(batch, context + 1)``."""
    start = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
    return torch.stack([data[s : s + context + 1] for s in start.tolist()])


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensor, context: int, windows: int, samples: int) -> dict:
    """Loss/perplexity (posterior mean and MC predictive) and next-token uncertainty."""
    g = torch.Generator().manual_seed(123)  # the same windows on every rank and run
    chunk = batches(data, windows, context, g)
    x, y = chunk[:, :-1], chunk[:, 1:]
    with bl.posterior_mean(model):
        mean_nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    probs = torch.stack([model(x).softmax(-1) for _ in range(samples)])  # (S, B, T, V)
    predictive = probs.mean(0).flatten(0, 1)
    mc_nll = bl.metrics.negative_log_likelihood(predictive, y.flatten()).item()
    variance = probs.var(0).sum(-1).mean().item()  # summed over the vocabulary
    mutual_info = bl.metrics.mutual_information(probs.flatten(1, 2)).mean().item()
    return {
        "mean_loss": mean_nll,
        "mean_perplexity": math.exp(mean_nll),
        "mc_loss": mc_nll,
        "mc_perplexity": math.exp(mc_nll),
        "predictive_variance": variance,
        "mutual_information": mutual_info,
    }


def setup_distributed(data_parallel: bool) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo); ``(rank, world)``, or ``(0, 1)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    dist.init_process_group("gloo")
    return dist.get_rank(), world


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps")
    parser.add_argument("--data-parallel", action="store_true", help="DDP instead of TP")
    parser.add_argument("--deterministic", action="store_true", help="the torch baseline")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    # (dim, heads, hidden, depth, context, batch, steps, characters of text)
    sizes = (32, 4, 64, 1, 32, 16, 150, 60_000) if args.quick else (
        128, 4, 512, 2, 64, 32, 600, 400_000
    )  # fmt: skip
    dim, heads, hidden, depth, context, batch, steps, chars = sizes
    steps = args.steps or steps
    rank, world = setup_distributed(args.data_parallel)
    data_parallel = args.data_parallel and world > 1
    tokens = encode(corpus(chars))
    split = int(0.9 * len(tokens))
    train, valid = tokens[:split], tokens[split:]

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = CharTransformer(len(VOCAB), dim, heads, hidden, depth, context, not args.deterministic)
    net: nn.Module = model
    if data_parallel:
        net = nn.parallel.DistributedDataParallel(model)
    elif world > 1:
        if args.deterministic:
            raise SystemExit(
                "tensor parallelism here is for the Bayesian model; add --data-parallel"
            )
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        mesh = init_device_mesh("cpu", (world,))
        parallelize_module(model, mesh, bl.distributed.transformer_plan(model))
    # noise: independent per data-parallel rank, shared by a tensor-parallel group
    dp_rank, dp_size = (rank, world) if data_parallel else (0, 1)
    bl.distributed.manual_seed(args.seed, rank=dp_rank)
    data_gen = torch.Generator().manual_seed(bl.distributed.derive_seed(args.seed, dp_rank))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        chunk = batches(train, batch, context, data_gen)
        logits = net(chunk[:, :-1])
        nll_sum = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        loss = bl.distributed.elbo_loss(
            nll_sum, model, len(train), global_batch_size=batch * context * dp_size,
            data_parallel_size=dp_size,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        bl.distributed.clip_grad_norm_(model.parameters(), 1.0)  # DTensor-aware
        opt.step()
        sched.step()
        if rank == 0 and (step % max(1, steps // 5) == 0 or step == 1):
            nll = nll_sum.item() / (batch * context)
            print(f"step {step:4d}  negative ELBO per token {loss.item():.3f} (NLL {nll:.3f})")
    seconds = time.perf_counter() - start
    model.eval()
    result = evaluate(model, valid, context, windows=32 if args.quick else 128, samples=8)
    result.update(steps=steps, seconds=seconds, world=world, data_parallel=data_parallel)
    result["uniform_perplexity"] = float(len(VOCAB))
    if rank == 0:
        mode = "data parallel" if data_parallel else "tensor parallel" if world > 1 else "one"
        kind = "deterministic baseline" if args.deterministic else "Bayesian"
        print(
            f"{kind}, {mode} process{'es' if world > 1 else ''} ({world}): {steps} steps in "
            f"{seconds:.1f} s on "
            f"{len(train)} training characters of CPython's standard library"
        )
        print(
            f"validation: posterior-mean loss {result['mean_loss']:.3f} nats/char "
            f"(perplexity {result['mean_perplexity']:.2f}); MC predictive (8 samples) loss "
            f"{result['mc_loss']:.3f} (perplexity {result['mc_perplexity']:.2f}); "
            f"uniform perplexity {len(VOCAB)}"
        )
        print(
            f"next-token uncertainty: variance of the probabilities over weight samples "
            f"(summed over the vocabulary) {result['predictive_variance']:.2e}, "
            f"mutual information {result['mutual_information']:.2e} nats"
        )
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
