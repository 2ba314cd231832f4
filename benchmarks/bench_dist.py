"""Step time and per-rank parameter memory of the Bayesian Transformer under torch.distributed.

The model of ``examples/bayesian_transformer.py`` (Flipout attention and
feed-forward layers) trains on one global batch per step with 1, 2 and 4
processes (gloo on loopback, CPU, one thread each), tensor-parallel
(``bl.distributed.transformer_plan``) and data-parallel (DDP, the global batch
split over the ranks). Reported: the median step time over the timed steps
(forward, ELBO, backward, AdamW), tokens per second, and the bytes of
parameters each rank holds (local shards of DTensors). All rows run in one
invocation; ratios are against the 1-process row of the same run.

    make bench-dist                    # or: python benchmarks/bench_dist.py [--quick]

The processes share this machine's cores: with fewer cores than processes the
step time measures contention, not scaling; the memory column does not depend
on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import bayesian_layers as bl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported by its path: the examples are scripts, not a package."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an import does: its dataclasses look themselves up
        spec.loader.exec_module(module)
    return sys.modules[name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes(params) -> int:  # noqa: ANN001 - parameters, DTensors counted by local shard
    return sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in params
    )


def _worker(rank: int, world: int, mode: str, port: int, cfg: dict, out: str) -> None:
    example = _example("bayesian_transformer")
    VOCAB, CharTransformer = example.VOCAB, example.CharTransformer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = CharTransformer(
        len(VOCAB), cfg["dim"], cfg["heads"], cfg["hidden"], cfg["depth"], cfg["context"]
    )
    net: torch.nn.Module = model
    batch, dp_size, dp_rank = cfg["batch"], 1, 0
    if mode == "tp" and world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        mesh = init_device_mesh("cpu", (world,))
        parallelize_module(model, mesh, bl.distributed.transformer_plan(model))
    elif mode == "dp" and world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
        batch, dp_size, dp_rank = cfg["batch"] // world, world, rank
    bl.distributed.manual_seed(0, rank=dp_rank)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(dp_rank)
    data = torch.randint(0, len(VOCAB), (batch, cfg["context"] + 1), generator=g)
    times = []
    for step in range(cfg["warmup"] + cfg["steps"]):
        dist.barrier()
        start = time.perf_counter()
        logits = net(data[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten(), reduction="sum")
        loss = bl.distributed.elbo_loss(
            nll, model, 100_000, global_batch_size=cfg["batch"] * cfg["context"],
            data_parallel_size=dp_size,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dist.barrier()
        if step >= cfg["warmup"]:
            times.append(time.perf_counter() - start)
    if rank == 0:
        result = {
            "step_s": statistics.median(times),
            "param_bytes": bl.distributed.parameter_bytes(model),
            "bayes_bytes": _bytes(
                {id(p): p for m in bl.bayesian_modules(model) for p in m.parameters()}.values()
            ),
            "tokens": cfg["batch"] * cfg["context"],
        }
        torch.save(result, Path(out) / f"{mode}{world}.pt")
    dist.destroy_process_group()


def run(mode: str, world: int, cfg: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, mode, _free_port(), cfg, out), nprocs=world, join=True)
        return torch.load(Path(out) / f"{mode}{world}.pt")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, few steps")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    cfg = dict(dim=256, heads=4, hidden=1024, depth=2, context=64, batch=16, warmup=2, steps=8)
    if args.quick:
        cfg.update(dim=64, hidden=256, depth=1, context=32, batch=8, warmup=1, steps=3)
    print(
        f"Bayesian Transformer (Flipout attention + feed-forward), dim {cfg['dim']}, "
        f"{cfg['heads']} heads, hidden {cfg['hidden']}, {cfg['depth']} blocks, global batch "
        f"{cfg['batch']} x {cfg['context']} tokens; gloo on CPU, 1 thread per process, "
        f"{os.cpu_count()} cores; median of {cfg['steps']} steps"
    )
    rows = []
    base = run("tp", 1, cfg)
    rows.append(("1 process", 1, base))
    for mode, label in (("tp", "tensor parallel"), ("dp", "data parallel (DDP)")):
        for n in args.procs:
            if n > 1:
                rows.append((label, n, run(mode, n, cfg)))
    header = (
        f"{'mode':<20} {'procs':>5} {'step ms':>9} {'tokens/s':>9} {'speed-up':>8} "
        f"{'param MB/rank':>13} {'ratio':>6} {'Bayesian-layer MB/rank':>22} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for label, n, r in rows:
        speed = base["step_s"] / r["step_s"]
        ratio = r["param_bytes"] / base["param_bytes"]
        bayes_ratio = r["bayes_bytes"] / base["bayes_bytes"]
        print(
            f"{label:<20} {n:>5} {1e3 * r['step_s']:>9.1f} {r['tokens'] / r['step_s']:>9.0f} "
            f"{speed:>8.2f} {r['param_bytes'] / 2**20:>13.3f} {ratio:>6.3f} "
            f"{r['bayes_bytes'] / 2**20:>22.3f} {bayes_ratio:>6.3f}"
        )
        results.append(
            {"mode": label, "procs": n, "speed_up": speed, "mem_ratio": ratio,
             "bayes_mem_ratio": bayes_ratio, **r}
        )  # fmt: skip
    return results


if __name__ == "__main__":
    main()
