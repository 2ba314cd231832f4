"""Standard noise for weight draws, generated in parallel on CPU.

PyTorch's CPU generator (mt19937) fills a tensor with ``normal_`` on one thread:
drawing the 670k normals of a 784-512-512-10 MLP costs more than its forward
pass. :func:`randn` splits a large draw into fixed-size chunks, each filled by
its own generator on a small thread pool (``normal_`` releases the GIL). The
chunk generators are seeded from one 63-bit seed drawn from torch's default
generator, so ``torch.manual_seed`` still makes every draw reproducible, and
the chunking does not depend on the thread count. Small draws, non-CPU devices,
``torch.compile`` tracing and single-threaded runs use ``torch.randn`` itself.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["randn", "PARALLEL_MIN_NUMEL", "CHUNK_NUMEL"]

#: Draws smaller than this use ``torch.randn`` directly (thread hand-off costs ~20 µs).
PARALLEL_MIN_NUMEL = 1 << 17
#: Elements per chunk; fixed so results do not depend on the number of threads.
CHUNK_NUMEL = 1 << 16

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, rebuilt after a fork or a thread-count change."""
    global _pool, _pool_key
    key = (os.getpid(), threads)
    if _pool is None or _pool_key != key:
        with _pool_lock:
            if _pool is None or _pool_key != key:
                _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bl-noise")
                _pool_key = key
    return _pool


def _generator() -> torch.Generator:
    gen = getattr(_local, "generator", None)
    if gen is None:
        gen = torch.Generator()
        _local.generator = gen
    return gen


def _fill(chunks: list[Tensor], seeds: list[int]) -> None:
    gen = _generator()
    for chunk, seed in zip(chunks, seeds, strict=True):
        gen.manual_seed(seed)
        chunk.normal_(generator=gen)


def randn(shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device.

    Example:
        >>> _ = torch.manual_seed(0); a = randn((300_000,), torch.empty(0))
        >>> _ = torch.manual_seed(0); b = randn((300_000,), torch.empty(0))
        >>> torch.equal(a, b), round(a.std().item(), 2)
        (True, 1.0)
    """
    if torch.compiler.is_compiling() or like.device.type != "cpu":
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    shape = torch.Size(shape)
    numel = shape.numel()
    threads = torch.get_num_threads()
    if numel < PARALLEL_MIN_NUMEL or threads < 2:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    out = torch.empty(numel, dtype=like.dtype)
    chunks = list(out.split(CHUNK_NUMEL))
    base = int(torch.randint(0, 2**62, (1,)).item())
    seeds = [base + i for i in range(len(chunks))]
    workers = min(threads, len(chunks))
    pool = _executor(threads)
    futures = [pool.submit(_fill, chunks[w::workers], seeds[w::workers]) for w in range(1, workers)]
    _fill(chunks[0::workers], seeds[0::workers])
    for f in futures:
        f.result()
    return out.view(shape)
