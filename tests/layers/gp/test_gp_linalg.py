"""Tests for ``layers/gp_numerics.py``: Cholesky with growing jitter and its clear error."""

from __future__ import annotations

import pytest
import torch

from bayesian_layers.layers.gp import NotPositiveDefiniteError, cholesky_with_jitter
from bayesian_layers.layers.gp.linalg import gaussian_log_marginal_likelihood

D64 = {"dtype": torch.float64}


def test_positive_definite_needs_no_jitter():
    a = torch.randn(6, 6, **D64)
    spd = a @ a.mT + 6 * torch.eye(6, **D64)
    torch.testing.assert_close(cholesky_with_jitter(spd, layer="T"), torch.linalg.cholesky(spd))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_deficient_succeeds_with_small_relative_jitter(dtype: torch.dtype):
    """A rank-2 10 × 10 Gram matrix fails plain Cholesky and succeeds with a jitter
    no larger than the last one tried (1e-3 × mean diagonal in float32, 1e-7 in float64)."""
    v = torch.randn(10, 2, dtype=dtype) * 3.0
    gram = v @ v.mT
    assert torch.linalg.cholesky_ex(gram).info != 0
    chol = cholesky_with_jitter(gram, layer="T")
    largest = (1e-3 if dtype == torch.float32 else 1e-7) * gram.diagonal().mean()
    added = chol @ chol.mT - gram
    assert torch.isfinite(chol).all()
    torch.testing.assert_close(added, added.diagonal().diag(), rtol=0, atol=10 * largest)
    assert added.diagonal().max() <= largest * 1.01


def test_batched_jitter_only_where_needed():
    spd = torch.eye(3, **D64) * 2.0
    ones = torch.ones(3, 3, **D64)
    chol = cholesky_with_jitter(torch.stack([spd, ones, spd]), layer="T")
    torch.testing.assert_close(chol[0], torch.linalg.cholesky(spd), rtol=0, atol=0)
    torch.testing.assert_close(chol[2], torch.linalg.cholesky(spd), rtol=0, atol=0)
    torch.testing.assert_close(chol[1] @ chol[1].mT, ones, rtol=0, atol=1e-8)


def test_gradient_flows_through_the_factor():
    a = torch.randn(4, 4, **D64)
    spd = (a @ a.mT + torch.eye(4, **D64)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m: cholesky_with_jitter(0.5 * (m + m.mT), layer="T"), (spd,)
    )


def test_negative_definite_raises_clear_error():
    m = -torch.eye(3, **D64) * 2.0
    with pytest.raises(NotPositiveDefiniteError) as info:
        cholesky_with_jitter(m, layer="GaussianProcess", max_tries=3)
    message = str(info.value)
    assert "GaussianProcess" in message and "smallest eigenvalue -2.000e+00" in message
    assert info.value.min_eigenvalue == pytest.approx(-2.0)
    assert info.value.layer == "GaussianProcess"
    assert isinstance(info.value, ValueError) and isinstance(info.value, torch.linalg.LinAlgError)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Lay: .* square matrices .* got \(2, 3\)"):
        cholesky_with_jitter(torch.ones(2, 3), layer="Lay")
    with pytest.raises(ValueError, match="NaN or infinite"):
        cholesky_with_jitter(torch.full((2, 2), float("nan")), layer="Lay")
    with pytest.raises(ValueError, match="max_tries >= 0, got -1"):
        cholesky_with_jitter(torch.eye(2), layer="Lay", max_tries=-1)
    with pytest.raises(ValueError, match="initial_jitter > 0, got 0"):
        cholesky_with_jitter(torch.eye(2), layer="Lay", initial_jitter=0)


def test_log_marginal_likelihood_value_and_gradcheck():
    a = torch.randn(5, 5, **D64)
    k = a @ a.mT + torch.eye(5, **D64)
    r = torch.randn(5, 2, **D64)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(5, **D64), k)
    expected = mvn.log_prob(r.mT).sum()
    torch.testing.assert_close(gaussian_log_marginal_likelihood(k, r, layer="T"), expected)

    noise = torch.tensor(0.3, **D64)
    shifted = gaussian_log_marginal_likelihood(
        k - noise * torch.eye(5, **D64), r, layer="T", noise=noise
    )
    torch.testing.assert_close(shifted, expected)

    def f(m: torch.Tensor, res: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:  # symmetric m
        return gaussian_log_marginal_likelihood(0.5 * (m + m.mT), res, layer="T", noise=s2)

    inputs = (k.clone().requires_grad_(True), r.requires_grad_(True), noise.requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs)
    with pytest.raises(ValueError, match=r"matrix \(N, N\) and residual \(N, U\), got \(5, 5\)"):
        gaussian_log_marginal_likelihood(k, torch.ones(4, 1, **D64), layer="T")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_error_suggests_float64_only_below_float64(dtype: torch.dtype):
    with pytest.raises(NotPositiveDefiniteError) as info:
        cholesky_with_jitter(-torch.eye(3, dtype=dtype), layer="T")
    assert ("use float64" in str(info.value)) == (dtype != torch.float64)


def test_jitter_is_reported_through_the_callback():
    seen: list[float] = []
    ones = torch.ones(3, 3, **D64)
    cholesky_with_jitter(ones, layer="T", on_jitter=seen.append)
    assert len(seen) == 1 and 0 < seen[0] <= 1e-7
    cholesky_with_jitter(torch.eye(3, **D64), layer="T", on_jitter=seen.append)
    assert len(seen) == 1  # no jitter, no report
