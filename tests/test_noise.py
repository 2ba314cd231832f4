"""The parallel normal generator: distribution, reproducibility, fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bayesian_layers import noise


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_parallel_draw_is_standard_normal(two_threads) -> None:
    """KS test of 400 000 draws against N(0, 1) at α = 1e-3 (a fixed seed: deterministic)."""
    torch.manual_seed(0)
    x = noise.randn((400, 1000), torch.empty(0, dtype=torch.float64))
    assert x.shape == (400, 1000) and x.dtype == torch.float64
    assert stats.kstest(x.flatten().numpy(), "norm").pvalue > 1e-3


def test_chunks_are_independent(two_threads) -> None:
    """Neighbouring chunks (consecutive seeds) are uncorrelated: |r| < z(1-α/2)/√n, α = 1e-3."""
    torch.manual_seed(1)
    n = noise.CHUNK_NUMEL
    x = noise.randn((4 * n,), torch.empty(0))
    a, b = x[:n], x[n : 2 * n]
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(r) < stats.norm.ppf(1 - 5e-4) / math.sqrt(n)
    assert not torch.equal(a, b)


def test_reproducible_from_manual_seed_and_independent_of_thread_count() -> None:
    old = torch.get_num_threads()
    try:
        draws = []
        for threads in (2, 3, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(7)
            draws.append(noise.randn((300_000,), torch.empty(0)))
        assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
        torch.manual_seed(8)
        assert not torch.equal(draws[0], noise.randn((300_000,), torch.empty(0)))
    finally:
        torch.set_num_threads(old)


def test_small_and_single_thread_draws_are_torch_randn() -> None:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.manual_seed(3)
        small = noise.randn((10, 10), torch.empty(0))
        torch.manual_seed(3)
        assert torch.equal(small, torch.randn(10, 10))
        torch.set_num_threads(1)
        torch.manual_seed(3)
        big = noise.randn((300_000,), torch.empty(0))
        torch.manual_seed(3)
        assert torch.equal(big, torch.randn(300_000))
    finally:
        torch.set_num_threads(old)


def test_meta_device_and_dtype_follow_like() -> None:
    x = noise.randn((3, 4), torch.empty(0, device="meta", dtype=torch.float64))
    assert x.device.type == "meta" and x.dtype == torch.float64
