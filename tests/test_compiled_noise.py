"""Compiled draws on CPU through torch's eager generator
(:mod:`bayesian_layers.layers._base.compiled_rng`): inductor emits extern calls to our
fill ops instead of its Philox loops; same-shape draws in one graph stay independent (no
common-subexpression merge); the backward reads the forward's noise (no recomputation);
compiled sampling keeps the closed-form moments; one compilation; eager draws unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from stats_util import widen, z_bonferroni
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code

from bayesian_layers import layers
from bayesian_layers.layers._base import compiled_rng
from bayesian_layers.layers._util import rademacher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("checks_off_as_dynamo_sets_them"),
    # importing inductor triggers a deprecation warning inside torch itself
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

OPS = ("fill_normal_", "fill_uniform_", "fill_signs_", "fill_dropout_mask_")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    with inductor_config.patch(compile_threads=1):  # in-process: small graphs
        yield
    torch._dynamo.reset()


def _inductor(fn: Callable[..., Tensor]) -> tuple[Callable[..., Tensor], CompileCounterWithBackend]:
    counter = CompileCounterWithBackend("inductor")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _code(fn: Callable[..., Tensor], *args: Tensor) -> tuple[Tensor, str]:
    out, code = run_and_get_code(torch.compile(fn, fullgraph=True), *args)
    return out, "\n".join(code)


# ------------------------------------------------------------------ independence


def test_same_shape_draws_in_one_graph_are_independent_extern_calls() -> None:
    """Two draws of every kind with equal arguments in one inductor graph: different
    values (a pure op would be merged into one by AOTAutograd's CSE), each an extern call
    to our op, and no random kernel of inductor's own in the code."""
    layer = layers.LinearFlipout(5, 5)  # its noise() with every kind, same shape twice
    drop = layers.MCDropout(0.5)
    like = torch.zeros(())

    def draws(x: Tensor) -> Tensor:
        out = []
        for kind in ("normal", "uniform", "sign", "parameter"):
            for _ in range(2):
                out.append(layer.noise("weight", (64, 5), like, kind=kind))
        out += [drop(x), drop(x)]
        return torch.stack(out)

    samples, code = _code(draws, torch.ones(64, 5))
    for a, b in samples.view(-1, 2, 64, 5).unbind(0):
        assert not torch.equal(a, b)
    for op in OPS:
        assert f"bayesian_layers.{op}" in code
    assert "randn" not in code and "philox" not in code.lower()
    normal, uniform, sign, parameter, mask = samples.view(-1, 2, 64 * 5).unbind(0)
    assert set(sign.unique().tolist()) == {-1.0, 1.0}
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert ((uniform >= 0) & (uniform < 1)).all()
    # mean and variance of the 640 normals: 4 checks at z(α/2k); SE²(var) = 2σ⁴/(n-1)
    z = z_bonferroni(4)
    for s in (normal, parameter):
        assert abs(s.mean()) <= z / math.sqrt(s.numel())
        assert abs(s.var() - 1) <= z * math.sqrt(2 / (s.numel() - 1))


def test_two_layers_of_one_shape_draw_different_weights() -> None:
    """Twin layers (equal parameters) in one graph: different weight draws. With x = I
    the output of a reparameterization layer is its drawn weight, transposed."""
    first = widen(layers.LinearReparameterization(6, 6, bias=False))
    second = layers.LinearReparameterization(6, 6, bias=False)
    second.load_state_dict(first.state_dict())
    compiled, _ = _inductor(lambda x: torch.stack([first(x), second(x)]))
    with torch.no_grad():
        w1, w2 = compiled(torch.eye(6))
    assert not torch.allclose(w1, w2)


# ------------------------------------------------------------------ backward


def test_backward_reads_the_noise_of_the_forward() -> None:
    """A reparameterization layer on x = I outputs ``Wᵀ`` with ``W = μ + softplus(ρ) ε``,
    so ε can be read off the output; the gradient of ``Σ c ∘ y`` in ρ must be
    ``cᵀ ∘ sigmoid(ρ) ∘ ε`` with that ε (a recomputed draw would give another)."""
    layer = widen(layers.LinearReparameterization(8, 5, bias=False))
    with torch.no_grad():
        layer.weight_rho.add_(torch.randn(5, 8))  # distinct scales
    c = torch.randn(8, 5)
    compiled, _ = _inductor(lambda x: layer(x))
    for _ in range(2):
        y = compiled(torch.eye(8))  # (8, 5) = Wᵀ
        (grad_rho, grad_loc) = torch.autograd.grad(
            (y * c).sum(), [layer.weight_rho, layer.weight_loc]
        )
        rho = layer.weight_rho.detach()
        eps = (y.detach().T - layer.weight_loc.detach()) / F.softplus(rho)
        torch.testing.assert_close(grad_loc, c.T)
        torch.testing.assert_close(grad_rho, c.T * torch.sigmoid(rho) * eps)


def _dense_and_conv() -> tuple[nn.Module, Callable[[nn.Module, Tensor, Tensor], Tensor]]:
    model = nn.ModuleDict({
        "lr": layers.LinearReparameterization(6, 4, bias_initializer="trainable_normal"),
        "lf": layers.LinearFlipout(6, 4),
        "llr": layers.LinearLocalReparameterization(6, 4),
        "drop": layers.MCDropout(0.3),
        "c2r": layers.Conv2dReparameterization(2, 3, 3, padding=1),
        "c2f": layers.Conv2dFlipout(2, 3, 3, padding=1),
        "c2lr": layers.Conv2dLocalReparameterization(2, 3, 3, padding=1),
        "c1f": layers.Conv1dFlipout(2, 3, 3),
        "c3r": layers.Conv3dReparameterization(2, 3, 2),
        "t2f": layers.ConvTranspose2dFlipout(2, 3, 2, stride=2),
        "t1r": layers.ConvTranspose1dReparameterization(2, 3, 3),
    })  # fmt: skip

    def fn(m: nn.Module, x: Tensor, img: Tensor) -> Tensor:
        parts = [m["lr"](x), m["lf"](x), m["llr"](x), m["drop"](x)]
        parts += [m[k](img) for k in ("c2r", "c2f", "c2lr", "t2f")]
        parts += [
            m["c1f"](img[:, :, 0]),
            m["t1r"](img[:, :, 0]),
            m["c3r"](torch.stack([img, img.flip(-1)], 2)),
        ]
        return torch.cat([p.flatten() for p in parts])

    return widen(model), fn


def test_every_estimator_compiles_in_one_graph_and_its_backward_draws_nothing() -> None:
    """Every dense and conv estimator and MCDropout in one ``fullgraph`` inductor graph:
    one compilation over calls, a new sample per call, finite gradients for every
    parameter, and the generator untouched by the backward (a draw recomputed there
    would advance it and give the gradient other noise than the forward's)."""
    model, fn = _dense_and_conv()
    compiled, counter = _inductor(fn)
    x, img = torch.randn(3, 6), torch.randn(2, 2, 4, 4)
    params = list(model.parameters())
    outs = []
    for _ in range(3):
        before = torch.get_rng_state()
        out = compiled(model, x, img)
        after_forward = torch.get_rng_state()
        grads = torch.autograd.grad((out * out.detach().sin()).sum(), params)
        assert not torch.equal(before, after_forward)
        assert torch.equal(torch.get_rng_state(), after_forward)
        assert all(torch.isfinite(g).all() for g in grads)
        outs.append(out.detach())
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    assert counter.frame_count == 1  # fullgraph, no recompilation


# ------------------------------------------------------------------ moments


def test_compiled_samples_have_the_closed_form_moments() -> None:
    """n = 2000 compiled draws of each dense estimator's output against the closed form
    (mean ``F.linear(x, μ_W, μ_b)``, variance ``F.linear(x², σ_W²) + σ_b²``) and of
    MCDropout's (mean x, variance ``x² p / (1 - p)``). Means: half-width z·σ/√n;
    variances: SE² = (m₄ - s⁴)/n from the sample. k = 2 × 4 × 12 checks, α = 1e-3."""
    model, _ = _dense_and_conv()
    dense = [model["lr"], model["lf"], model["llr"]]
    drop = model["drop"]
    x = torch.randn(3, 6)
    compiled, counter = _inductor(lambda x: torch.stack([*(m(x) for m in dense), drop(x[:, :4])]))
    n = 2000
    with torch.no_grad():
        samples = torch.stack([compiled(x) for _ in range(n)])  # (n, 4, 3, 4)
        mean, var = [], []
        for m in dense:
            b_loc, b_scale = m.posterior_loc_scale("bias")
            mean.append(F.linear(x, m.posterior_loc_scale("weight")[0], b_loc))
            var.append(F.linear(x.square(), F.softplus(m.weight_rho).square()))
            if b_scale is not None:
                var[-1] = var[-1] + b_scale.square()
        p = drop.p
        mean.append(x[:, :4])
        var.append(x[:, :4].square() * p / (1 - p))
    mean_t, var_t = torch.stack(mean), torch.stack(var)
    z = z_bonferroni(2 * samples[0].numel())
    s_mean, s_var = samples.mean(0), samples.var(0)
    m4 = (samples - s_mean).pow(4).mean(0)
    assert ((s_mean - mean_t).abs() <= z * (var_t / n).sqrt()).all()
    assert ((s_var - var_t).abs() <= z * ((m4 - s_var.square()) / n).sqrt()).all()
    assert counter.frame_count == 1


# ------------------------------------------------------------------ families, eager


def test_a_non_normal_family_draws_through_the_ops() -> None:
    """A posterior family's own ``noise`` (half-Cauchy: ``tan(π/2 · U)``) is run under
    :class:`EagerGenerator`: its ``torch.rand`` becomes our uniform fill."""
    layer = layers.LinearReparameterization(4, 3, weight_initializer="trainable_half_cauchy")
    out, code = _code(lambda x: layer(x), torch.randn(2, 4))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert "bayesian_layers.fill_uniform_" in code and "bayesian_layers.fill_normal_" not in code


def test_eager_generator_mode_routes_plain_factories_only() -> None:
    gen = torch.Generator().manual_seed(3)
    want = torch.randn(4, generator=torch.Generator().manual_seed(3))
    with compiled_rng.EagerGenerator():
        torch.manual_seed(5)
        a = torch.randn(2, 3, dtype=torch.float64)
        b = torch.rand_like(a)
        c = torch.randn(4, generator=gen)  # a generator: left to torch
        d = torch.randint(0, 5, (3,))  # not a float draw: left to torch
    torch.manual_seed(5)
    torch.testing.assert_close(a, torch.randn(2, 3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(b, torch.rand(2, 3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(c, want, rtol=0, atol=0)
    assert d.dtype == torch.int64


def test_eager_draws_keep_torchs_stream() -> None:
    """Eager mode never reaches the ops: ``noise`` is ``torch.randn``/``torch.rand`` on
    the same seed, signs come from the byte table, MCDropout from ``F.dropout``."""
    layer = layers.LinearFlipout(3, 2)
    like = torch.zeros((), dtype=torch.float64)
    for kind, ref in (("normal", torch.randn), ("uniform", torch.rand)):
        torch.manual_seed(7)
        got = layer.noise("weight", (5, 3), like, kind=kind)
        torch.manual_seed(7)
        torch.testing.assert_close(got, ref(5, 3, dtype=torch.float64), rtol=0, atol=0)
    torch.manual_seed(7)
    signs = rademacher(torch.Size((5, 3)), like)
    torch.manual_seed(7)
    torch.testing.assert_close(signs, compiled_rng.table_signs(torch.Size((5, 3)), like))
    x = torch.randn(50)
    torch.manual_seed(7)
    got = layers.MCDropout(0.4)(x)
    torch.manual_seed(7)
    torch.testing.assert_close(got, F.dropout(x, 0.4, training=True), rtol=0, atol=0)


def test_table_signs_are_fair_independent_and_shaped() -> None:
    """Every one of the 64 sign positions that one random word feeds is fair (a word
    with a constant bit, e.g. a non-negative int64, would fix one position), and
    neighbours are uncorrelated: each of 64 means and 63 neighbour correlations over
    n = 20000 words within 5 standard errors (1/sqrt(n); Bonferroni over 127 checks at a
    family-wise rate below 1e-3). Odd sizes keep their shape and dtype."""
    torch.manual_seed(0)
    rows = 20_000
    s = compiled_rng.table_signs(torch.Size((rows, 64)), torch.zeros((), dtype=torch.float64))
    assert s.dtype == torch.float64 and set(s.unique().tolist()) == {-1.0, 1.0}
    bound = 5 / rows**0.5
    assert s.mean(0).abs().max() < bound
    assert (s[:, 1:] * s[:, :-1]).mean(0).abs().max() < bound
    odd = compiled_rng.table_signs(torch.Size((3, 5, 7)), torch.zeros((), dtype=torch.bfloat16))
    assert odd.shape == (3, 5, 7) and odd.dtype == torch.bfloat16
    assert compiled_rng.table_signs(torch.Size((0, 4)), torch.zeros(())).shape == (0, 4)


def test_compiled_draws_seed_like_eager_and_fill_any_float_dtype() -> None:
    """The ops draw from torch's default generator (``manual_seed`` seeds them) in the
    requested dtype; the same seed gives the eager ``randn``'s values."""
    for dtype in (torch.float64, torch.bfloat16):
        like = torch.zeros((), dtype=dtype)
        torch.manual_seed(11)
        got = compiled_rng.normal((3, 4), like)
        torch.manual_seed(11)
        want = torch.randn(3, 4, dtype=dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_export_keeps_atens_random_ops() -> None:
    """``torch.export`` is not routed: the exported program runs without this package."""
    model = nn.Sequential(layers.LinearFlipout(4, 3), layers.MCDropout(0.2))
    program = torch.export.export(model, (torch.randn(2, 4),))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("bayesian_layers" in t for t in targets)
    assert any("randn" in t or "normal" in t for t in targets)
