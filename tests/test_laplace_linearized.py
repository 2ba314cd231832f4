"""``bl.laplace.linearized_samples``: Monte Carlo samples of the linearised network by
forward-mode Jacobian-vector products.

References are independent of the code under test: the per-example covariance ``J Σ Jᵀ``
of ``glm_predictive(..., method="jacobian")`` (``torch.func.jacrev``), the network itself
at the drawn weights (for a model linear in its random parameters), and central finite
differences of the network along a draw (a LoRA-adapted transformer). Monte Carlo
tolerances are Bonferroni-corrected normal quantiles of the exact standard errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from bayesian_transformer import VOCAB, CharTransformer  # examples/ is on the pythonpath
from stats_util import z_bonferroni
from torch import Tensor, nn
from torch.func import functional_call

import bayesian_layers as bl
from bayesian_layers import laplace as bll
from bayesian_layers.adapters import lora
from bayesian_layers.laplace.linearized import (
    _forward_mode,
    _jvps,
    draw_deviations,
    linearized_samples,
)
from bayesian_layers.laplace.predictive import _posterior_parts

DT = torch.float64
FN = "laplace.linearized_samples"


def _mlp_posterior(hessian: str, subset: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    net = net.to(DT)
    x = torch.randn(24, 3, dtype=DT)
    y = torch.randint(0, 3, (24,))
    # a small prior precision: a wide posterior, so J Σ Jᵀ is far from 0
    post = bll.fit(net, [(x, y)], hessian=hessian, subset=subset, prior_precision=0.5)
    return post, torch.randn(4, 3, dtype=DT)


def _map(model: nn.Module, x: Tensor) -> Tensor:
    with bl.posterior_mean(model), torch.no_grad():
        return model(x)


@pytest.mark.parametrize(
    ("hessian", "subset"),
    [("kron", "all"), ("kron", "last_layer"), ("diag", "all"), ("full", "all")],
)
def test_sample_moments_are_the_glm_mean_and_jacobian_covariance(hessian, subset):
    post, x = _mlp_posterior(hessian, subset)
    k = 4000
    g = torch.Generator().manual_seed(1)
    s = linearized_samples(post, x, k, antithetic=False, generator=g)  # (K, B, C)
    mean, cov = bll.glm_predictive(post, x, "regression", method="jacobian")
    assert s.shape == (k, 4, 3) and s.dtype == DT
    torch.testing.assert_close(mean, _map(post, x), rtol=0, atol=1e-12)
    var = cov.diagonal(dim1=-2, dim2=-1)  # (B, C)
    assert bool((var > 1e-3).all())  # a posterior wide enough for the test to mean something
    d = s - mean
    emp = torch.einsum("kbc,kbd->bcd", d, d) / k  # known mean: unbiased
    # exact standard errors of a Gaussian: Var(mean_c) = Σ_cc / K,
    # Var(S_cd) = (Σ_cc Σ_dd + Σ_cd²) / K
    se_mean = (var / k).sqrt()
    se_cov = ((var[:, :, None] * var[:, None, :] + cov.square()) / k).sqrt()
    z = z_bonferroni(mean.numel() + cov.numel())
    assert bool(((d.mean(0)).abs() <= z * se_mean).all()), (d.mean(0) / se_mean).abs().max()
    assert bool(((emp - cov).abs() <= z * se_cov).all()), ((emp - cov) / se_cov).abs().max()
    # and a wrong covariance (0.8 Σ) would fail the same check
    assert not bool(((emp - 0.8 * cov).abs() <= z * se_cov).all())


@pytest.mark.parametrize("hessian", ["kron", "diag", "full"])
def test_a_model_linear_in_its_random_parameters_gives_the_network_at_the_draws(hessian):
    # last-layer Laplace: the output is linear in the last layer's weight and bias
    post, x = _mlp_posterior(hessian, "last_layer")
    k, chunk = 7, 3
    s = linearized_samples(post, x, k, chunk_size=chunk, generator=torch.Generator().manual_seed(5))
    parts = _posterior_parts(post)
    means = {key: layer.point(name).detach() for key, layer, name in parts}
    g = torch.Generator().manual_seed(5)
    draws = k - k // 2
    deltas = [draw_deviations(parts, min(chunk, draws - i), g) for i in range(0, draws, chunk)]
    delta = {key: torch.cat([d[key] for d in deltas]) for key in means}
    with bl.posterior_mean(post), torch.no_grad():
        nn_samples = [
            functional_call(post, {n: means[n] + sign * delta[n][j] for n in means}, (x,))
            for sign, j in [(1, j) for j in range(draws)] + [(-1, j) for j in range(k // 2)]
        ]
    torch.testing.assert_close(s, torch.stack(nn_samples), rtol=1e-12, atol=1e-12)
    # the antithetic partners (samples j and draws + j) average to the MAP output
    torch.testing.assert_close(s[:3] + s[draws:], 2 * _map(post, x).expand(3, -1, -1))
    assert not torch.allclose(s[0], s[1])


def _lora_transformer() -> tuple[nn.Module, Tensor]:
    """A one-block character transformer (torch's attention) with Laplace-LoRA adapters on
    the attention output projection and both feed-forward layers, fitted on random text."""
    torch.manual_seed(0)
    base = CharTransformer(len(VOCAB), 16, 2, 32, 2, 16, bayesian=False).to(DT).eval()
    model = lora(base, target=["out_proj", "ff.0", "ff.2"], rank=2, posterior="laplace")
    with torch.no_grad():  # B away from its zero start: every factor has curvature
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, len(VOCAB), (4, 17), generator=g)
    post = bll.fit(
        model, [(text[:, :-1], text[:, 1:])], hessian="kron", subset="lora", mc_samples=2
    )
    return post, torch.randint(0, len(VOCAB), (2, 16), generator=g)


def test_lora_transformer_token_samples_have_the_map_logits_as_mean():
    post, x = _lora_transformer()
    s = linearized_samples(post, x, 6, generator=torch.Generator().manual_seed(2))
    logits = _map(post, x)
    assert s.shape == (6, 2, 16, len(VOCAB))
    torch.testing.assert_close(s.mean(0), logits, rtol=0, atol=1e-12)
    spread = (s - logits).abs().amax()
    assert 1e-3 < float(spread) < 1e3  # samples that differ, by a finite amount
    # one draw's product J δ against central differences of the network along δ
    parts = _posterior_parts(post)
    means = {key: layer.point(name).detach() for key, layer, name in parts}
    delta = draw_deviations(parts, 2, torch.Generator().manual_seed(3))

    def f(p: dict[str, Tensor]) -> Tensor:
        return functional_call(post, p, (x,), strict=False)

    with _forward_mode(post):  # eval, posterior means, no graph, attention's math kernel
        jd, vectorized = _jvps(f, means, delta, True)
        looped, _ = _jvps(f, means, delta, False)

        def central(h: float) -> Tensor:
            plus = f({n: means[n] + h * delta[n][0] for n in means})
            return (plus - f({n: means[n] - h * delta[n][0] for n in means})) / (2 * h)

        fd = (4 * central(1e-4) - central(2e-4)) / 3  # Richardson: O(h⁴) truncation
    assert vectorized  # vmap over the tangents works through torch's attention
    torch.testing.assert_close(jd, looped, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jd[0], fd, rtol=1e-7, atol=1e-9)


def test_the_samples_leave_the_model_modes_and_posterior_untouched():
    post, x = _mlp_posterior("kron", "all")
    post.train()
    before = copy.deepcopy(post.state_dict())
    linearized_samples(post, x, 3)
    assert post.training and all(m.training for m in post.modules())
    assert all(layer.sampling == "sample" for layer in bl.sampling.bayesian_modules(post))
    after = post.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_bad_inputs_name_the_function_and_argument():
    post, x = _mlp_posterior("kron", "last_layer")
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match=rf"{FN} expected `num_samples` an int >= 1"):
            linearized_samples(post, x, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"{FN} expected `chunk_size` an int >= 1 or None"):
        linearized_samples(post, x, 4, chunk_size=0)
    with pytest.raises(TypeError, match=rf"{FN} expected `antithetic` a bool"):
        linearized_samples(post, x, 4, antithetic="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"{FN} expected `x` a batched Tensor"):
        linearized_samples(post, [1.0, 2.0], 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"{FN} expected a model with random parameters"):
        linearized_samples(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3), 4)
    flat = nn.Sequential(post, nn.Flatten(0))  # (B·C,) outputs: no class dimension
    with pytest.raises(ValueError, match=rf"{FN} expected model outputs of shape \(B, C\)"):
        linearized_samples(flat, x, 4)
    assert math.isfinite(float(linearized_samples(post, x, 1).sum()))  # K = 1 is fine
