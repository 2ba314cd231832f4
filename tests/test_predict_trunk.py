"""``bl.predict``'s deterministic trunk (run once) and its cheaper predictive noise: the
cached predictive equals the uncached one (exactly for a fixed seed where the draw order
allows, in distribution otherwise), and the cheaper forms keep each estimator's law."""

from __future__ import annotations

import pytest
import torch
from stats_util import z_bonferroni
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers._trunk import is_stochastic
from bayesian_layers.layers.estimators import shared_input, strategies
from bayesian_layers.layers.linear import BayesianLinear


class Counting(nn.Module):
    """A deterministic feature extractor that counts the rows it sees."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, dtype=torch.float64)
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return torch.tanh(self.linear(x))


class Net(nn.Module):
    """Not an nn.Sequential: the trunk must be declared."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.features = Counting(5, 12)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x) * 2.0)


def _seq(first: type[nn.Module], *, batch_norm: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    parts: list[nn.Module] = [nn.Linear(5, 12, dtype=torch.float64), nn.ReLU()]
    if batch_norm:
        parts.append(nn.BatchNorm1d(12, dtype=torch.float64))
    parts += [
        first(12, 9, dtype=torch.float64),
        nn.ReLU(),
        layers.LinearFlipout(9, 3, dtype=torch.float64),
    ]
    model = nn.Sequential(*parts)
    with torch.no_grad():  # scales well away from the initial 0.01: visible noise
        for m in model.modules():
            if isinstance(m, BayesianLinear):
                m.weight_rho.fill_(-1.0)
    return model


def _x(b: int = 16) -> Tensor:
    return torch.randn(b, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "first",
    [layers.LinearLocalReparameterization, layers.LinearFlipout, layers.LinearReparameterization],
)
@pytest.mark.parametrize("vectorized", [True, False])
def test_auto_trunk_equals_uncached_for_a_fixed_seed(first: type, vectorized: bool) -> None:
    """Same draws in the same order: the first layer at its shared input (moments once,
    or K whole draws in one matmul: B² = 256 > 32 K) gives the folded call's samples."""
    model = _seq(first)
    x = _x()
    outs = []
    for trunk in ("auto", None):
        torch.manual_seed(3)
        outs.append(bl.predict(model, x, 4, trunk=trunk, vectorized=vectorized).samples)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    assert outs[0].std(0).min() > 1e-3  # samples differ: the comparison is not of means


def test_trunk_runs_once_and_declared_trunk_equals_uncached() -> None:
    torch.manual_seed(0)
    head = nn.Sequential(layers.LinearLocalReparameterization(12, 4, dtype=torch.float64))
    model = Net(head)
    x = _x(6)
    torch.manual_seed(5)
    cached = bl.predict(model, x, 16, trunk=model.features, chunk_size=4).samples
    assert model.features.rows == 6  # once, on the B rows, for 4 chunks of 4 samples
    torch.manual_seed(5)
    uncached = bl.predict(model, x, 16, trunk=None, chunk_size=4).samples
    assert model.features.rows == 6 + 16 * 6
    torch.testing.assert_close(cached, uncached, rtol=1e-12, atol=1e-12)
    assert "forward" not in vars(model.features)  # the substitution is undone


def test_slice_of_a_sequential_is_a_trunk() -> None:
    model = _seq(layers.LinearLocalReparameterization)
    x = _x()
    torch.manual_seed(2)
    a = bl.predict(model, x, 4, trunk=model[:2]).samples
    torch.manual_seed(2)
    b = bl.predict(model, x, 4, trunk=None).samples
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradients_flow_through_the_trunk() -> None:
    model = _seq(layers.LinearLocalReparameterization, batch_norm=False)
    x = _x()
    grads = []
    for trunk in ("auto", None):
        model.zero_grad()
        torch.manual_seed(4)
        bl.predict(model, x, 8, trunk=trunk, grad=True).mean.square().sum().backward()
        grads.append(model[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert grads[0].abs().max() > 0


def test_what_is_stochastic() -> None:
    assert is_stochastic(nn.Sequential(nn.Linear(2, 2), layers.MCDropout(0.1)))
    assert is_stochastic(nn.Dropout(0.5).train())
    assert not is_stochastic(nn.Dropout(0.5).eval())
    assert not is_stochastic(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU()))
    assert is_stochastic(nn.Sequential(layers.GaussianProcess(1)))


def test_dropout_in_training_mode_stays_in_the_folded_part() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 12, dtype=torch.float64),
        nn.Dropout(0.5),
        layers.LinearReparameterization(12, 2, dtype=torch.float64),
    ).train()
    with bl.posterior_mean(model):  # only the dropout varies between samples
        samples = bl.predict(model, _x(), 64).samples
    assert samples.std(0).min() > 0


@pytest.mark.parametrize("bayesian", [True, False])
def test_rrelu_in_training_mode_draws_per_sample(bayesian: bool) -> None:
    """``nn.RReLU`` draws its slopes in training mode: it is not in the trunk, and a
    model with nothing else stochastic is not run once for all K samples."""
    torch.manual_seed(0)
    last = layers.LinearReparameterization if bayesian else nn.Linear
    model = nn.Sequential(
        nn.Linear(5, 12, dtype=torch.float64), nn.RReLU(0.1, 0.9), last(12, 2, dtype=torch.float64)
    ).train()
    assert is_stochastic(model[1]) and not is_stochastic(nn.RReLU().eval())
    with bl.posterior_mean(model):  # only the RReLU varies between samples
        for vectorized in (True, False):
            samples = bl.predict(model, _x(), 16, vectorized=vectorized).samples
            assert samples.std(0).min() > 0


def test_trunk_errors() -> None:
    model = _seq(layers.LinearFlipout)
    x = _x()
    with pytest.raises(ValueError, match="submodule of the model"):
        bl.predict(model, x, 2, trunk=nn.Linear(5, 12))
    with pytest.raises(ValueError, match="deterministic `trunk`"):
        bl.predict(model, x, 2, trunk=model[:4])
    with pytest.raises(ValueError, match="'auto', 'prefix', None or an nn.Module"):
        bl.predict(model, x, 2, trunk="first")
    with pytest.raises(TypeError, match="'auto', 'prefix', None or an nn.Module, got int"):
        bl.predict(model, x, 2, trunk=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the model"):
        bl.predict(model, x, 2, trunk=model)

    class Twice(Net):
        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.features(x) + self.features(x))

    class Skips(Net):
        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.zeros(x.shape[0], 12, dtype=x.dtype))

    head = layers.LinearFlipout(12, 2, dtype=torch.float64)
    twice = Twice(head)
    with pytest.raises(ValueError, match="called twice"):
        bl.predict(twice, x, 2, trunk=twice.features)
    skips = Skips(head)
    with pytest.raises(ValueError, match="did not call the trunk"):
        bl.predict(skips, x, 2, trunk=skips.features)


@pytest.mark.parametrize("vectorized", [True, False])
def test_a_trunk_not_applied_to_x_is_an_error(vectorized: bool) -> None:
    """A declared trunk stands for its call on ``x``: one the model applies to something
    else (an earlier layer's output) would hand all K samples the output of
    ``trunk(x)``, a wrong and sample-free answer, so it raises. ``x`` as a keyword
    argument, or an equal copy of it, is ``x``."""
    torch.manual_seed(0)

    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bayes = layers.LinearReparameterization(5, 5, dtype=torch.float64)
            self.features = nn.Linear(5, 5, dtype=torch.float64)

        def forward(self, x: Tensor) -> Tensor:
            return self.features(self.bayes(x))

    class Scaled(Net):
        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.features(2 * x))

    late = Late()
    seq = nn.Sequential(late.bayes, late.features, layers.LinearFlipout(5, 2, dtype=torch.float64))
    scaled = Scaled(layers.LinearFlipout(12, 2, dtype=torch.float64))
    for model, trunk in ((late, late.features), (seq, seq[1]), (scaled, scaled.features)):
        with pytest.raises(ValueError, match="on something other than its input x"):
            bl.predict(model, _x(), 4, trunk=trunk, vectorized=vectorized)

    class Copied(Net):  # the trunk gets an equal copy of x, missing values (NaN) included
        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.features(x=x.clone()).nan_to_num())

    copied = Copied(layers.LinearFlipout(12, 2, dtype=torch.float64))
    x = _x()
    x[0, 0] = torch.nan
    samples = bl.predict(copied, x, 4, trunk=copied.features, vectorized=vectorized).samples
    assert samples.isfinite().all()


def test_a_trunk_applied_to_integer_ids_cast_to_long_is_x() -> None:
    """Token ids given as int32 and cast by the model (``emb(x.long())``) are still ``x``
    for a declared trunk; the samples are those of ``trunk=None`` for a fixed seed."""

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.head = layers.LinearFlipout(6, 3)

        def forward(self, ids: Tensor) -> Tensor:
            return self.head(self.emb(ids.long()))

    torch.manual_seed(0)
    model, ids = Tagger(), torch.randint(0, 10, (4, 5), dtype=torch.int32)
    outs = []
    for trunk in (model.emb, None):
        torch.manual_seed(1)
        outs.append(bl.predict(model, ids, 3, trunk=trunk).samples)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# ----------------------------------------------------- the batch-joint form (exact)
def _joint_layer(bias: str) -> layers.LinearReparameterization:
    torch.manual_seed(0)
    layer = layers.LinearReparameterization(6, 2, bias_initializer=bias, dtype=torch.float64)
    with torch.no_grad():
        layer.weight_rho.uniform_(-1.5, 0.5)
        if bias == "trainable_normal":
            layer.bias_rho.fill_(-0.5)
    return layer


@pytest.mark.parametrize("rows", ["distinct", "repeated"])
@pytest.mark.parametrize("bias", ["zeros", "trainable_normal"])
def test_batch_joint_samples_have_the_function_law(
    rows: str, bias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a shared input the first reparameterization layer draws its outputs jointly
    over the batch: mean ``x μᵀ + μ_b``, covariance ``x diag(σ_o²) xᵀ + σ_b²`` per unit,
    as K whole weights give; a repeated row (a singular covariance) included."""
    layer = _joint_layer(bias)
    model = nn.Sequential(layer)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    if rows == "repeated":
        x[3] = x[1]
    calls = []
    real = shared_input.batch_joint_samples
    monkeypatch.setattr(strategies, "batch_joint_samples", lambda *a: calls.append(1) or real(*a))
    k = 20_000
    torch.manual_seed(11)
    y = bl.predict(model, x, k).samples  # (K, B, 2)
    assert calls  # the batch-joint form ran (B² = 16 <= 32 K)
    loc, scale = layer.posterior_loc_scale("weight")
    mean = x @ loc.T
    bias_var = torch.zeros(2, dtype=torch.float64)
    if bias == "trainable_normal":
        b_loc, b_scale = layer.posterior_loc_scale("bias")
        mean, bias_var = mean + b_loc, b_scale.square()
    cov = torch.einsum("bi,ci,oi->obc", x, x, scale.square()) + bias_var[:, None, None]
    z = z_bonferroni(2 * (4 + 16))
    se_mean = (torch.diagonal(cov, dim1=1, dim2=2).T / k).sqrt()  # (B, 2)
    assert ((y.mean(0) - mean).abs() <= z * se_mean).all()
    centred = y - mean
    emp = torch.einsum("kbo,kco->obc", centred, centred) / k
    var_diag = torch.diagonal(cov, dim1=1, dim2=2)
    se_cov = ((cov.square() + var_diag[:, :, None] * var_diag[:, None, :]) / k).sqrt()
    assert ((emp - cov).abs() <= z * se_cov).all()
    # one function: a repeated row (a singular covariance: whole draws) is equal in
    # every sample
    if rows == "repeated":
        torch.testing.assert_close(y[:, 3], y[:, 1], rtol=1e-12, atol=1e-12)


def test_batch_joint_form_is_chosen_by_cost() -> None:
    layer = _joint_layer("zeros")
    small, large = torch.randn(4, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    assert shared_input.use_batch_joint(layer, small, "weight", 32)
    assert not shared_input.use_batch_joint(layer, large, "weight", 32)  # B > in_features
    assert not shared_input.use_batch_joint(layer, small, "weight", 0)  # B² > 32 K
    assert not shared_input.use_batch_joint(layer, small.bfloat16(), "weight", 32)  # precision


# ---------------------------------------- Flipout's output-space noise (per example)
def test_flipout_predictive_keeps_each_examples_law() -> None:
    """Per example, a chain of dense Flipout layers in the predictive (output-space noise)
    has the law of whole weight draws: its moments match those of the same posterior
    sampled by whole draws (reparameterization, trunk=None), to Monte Carlo error."""
    flip, whole = _flipout_and_whole("trainable_normal")
    _same_moments_as_whole_draws(flip, whole, _x(3))


def _flipout_and_whole(bias: str = "zeros") -> tuple[nn.Sequential, nn.Sequential]:
    """Two dense Flipout layers (scales widened) and the same posterior drawn whole."""
    torch.manual_seed(0)
    kw = {"bias_initializer": bias, "dtype": torch.float64}
    flip = nn.Sequential(
        layers.LinearFlipout(5, 12, dtype=torch.float64),
        nn.Tanh(),
        layers.LinearFlipout(12, 2, **kw),
    )
    with torch.no_grad():
        for m in flip:
            if isinstance(m, layers.LinearFlipout):
                m.weight_rho.fill_(-1.0)
    whole = nn.Sequential(
        layers.LinearReparameterization(5, 12, dtype=torch.float64),
        nn.Tanh(),
        layers.LinearReparameterization(12, 2, **kw),
    )
    whole.load_state_dict(flip.state_dict())
    return flip, whole


def _same_moments_as_whole_draws(flip: nn.Module, whole: nn.Module, x: Tensor) -> None:
    """Per output element, the predictive's mean and variance of ``flip`` equal those of
    ``whole`` (trunk=None) to Monte Carlo error."""
    k = 20_000
    torch.manual_seed(1)
    a = bl.predict(flip, x, k).samples
    torch.manual_seed(2)
    b = bl.predict(whole, x, k, trunk=None, chunk_size=2000).samples
    z = z_bonferroni(2 * a[0].numel())
    se = (a.var(0) / k + b.var(0) / k).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= z * se).all()
    fourth = lambda s: ((s - s.mean(0)) ** 4).mean(0)  # noqa: E731
    se_var = ((fourth(a) - a.var(0) ** 2) / k + (fourth(b) - b.var(0) ** 2) / k).sqrt()
    assert ((a.var(0) - b.var(0)).abs() <= z * se_var).all()


def test_flipout_on_sequences_draws_output_noise_with_each_positions_law(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On ``(B, T, in)`` inputs Flipout's predictive draws output-space noise (fewer
    numbers than its signs and K perturbations) and keeps each position's law: the
    moments of whole draws (reparameterization, trunk=None), to Monte Carlo error."""
    calls: list[int] = []
    real = strategies.output_noise_samples
    monkeypatch.setattr(
        strategies,
        "output_noise_samples",
        lambda *a, **kw: calls.append(a[1].dim()) or real(*a, **kw),
    )
    flip, whole = _flipout_and_whole()
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _same_moments_as_whole_draws(flip, whole, x)  # (K, B, T, 2): per position
    assert calls and set(calls) == {3}  # both layers, on sequences


def test_flipout_draws_output_noise_only_inside_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = strategies.output_noise_samples
    monkeypatch.setattr(
        strategies, "output_noise_samples", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    model = nn.Sequential(nn.Linear(5, 12), layers.LinearFlipout(12, 3))
    model(torch.randn(4, 5))
    assert not calls  # training and plain calls keep Flipout's own estimator
    bl.predict(model, torch.randn(4, 5), 8, trunk=None)
    assert calls


def test_cached_reparameterization_keeps_the_joint_law_over_the_batch() -> None:
    """Trunk cached and the first layer in its batch-joint form against the uncached
    predictive (whole draws on K folded copies): the same means, variances and
    covariances between examples (function samples), to Monte Carlo error."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 12, dtype=torch.float64),
        nn.Tanh(),
        layers.LinearReparameterization(12, 8, dtype=torch.float64),
        nn.ReLU(),
        layers.LinearReparameterization(8, 2, dtype=torch.float64),
    )
    with torch.no_grad():
        model[2].weight_rho.fill_(0.0)
        model[4].weight_rho.fill_(0.0)
    x = _x(3)
    k = 20_000
    torch.manual_seed(1)
    a = bl.predict(model, x, k).samples.flatten(1)  # (K, B * 2)
    torch.manual_seed(2)
    b = bl.predict(model, x, k, trunk=None, chunk_size=2000).samples.flatten(1)

    def moments(s: Tensor) -> tuple[Tensor, Tensor]:
        c = s - s.mean(0)
        prod = c.unsqueeze(2) * c.unsqueeze(1)  # (K, 6, 6)
        return prod.mean(0), prod.var(0) / k  # covariance and its squared standard error

    (ca, va), (cb, vb) = moments(a), moments(b)
    z = z_bonferroni(6 + 21)
    assert ((a.mean(0) - b.mean(0)).abs() <= z * (a.var(0) / k + b.var(0) / k).sqrt()).all()
    assert ((ca - cb).abs() <= z * (va + vb).sqrt()).all()
    example = torch.arange(6) // 2
    across = example.unsqueeze(0) != example.unsqueeze(1)
    assert (ca.abs() / va.sqrt())[across].max() > 10  # examples are correlated: functions


# ------------------------------------------------- nothing stochastic: one call
def test_sngp_predicts_with_one_call_and_the_uncached_answer() -> None:
    """An SNGP head draws nothing (its output is a distribution over function values):
    the whole model runs once and the K samples and moments are the folded call's."""
    torch.manual_seed(0)
    model = bl.sngp(
        nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)), num_features=32
    ).eval()
    rows = []
    model[2].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    x = _x(6).float()
    cached = bl.predict(model, x, 8)
    assert rows == [6]
    uncached = bl.predict(model, x, 8, trunk=None)
    assert rows == [6, 6 * 8]
    for name in ("samples", "output_mean", "output_variance"):
        torch.testing.assert_close(getattr(cached, name), getattr(uncached, name))
    assert cached.function_space and uncached.function_space


def test_posterior_mean_model_runs_once() -> None:
    model = _seq(layers.LinearReparameterization).eval()  # batch norm: running statistics
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    x = _x()
    with bl.posterior_mean(model):
        pred = bl.predict(model, x, 5)
        expected = model(x)
    assert calls == [16, 16]
    torch.testing.assert_close(pred.samples, expected.expand(5, *expected.shape))
    # the mean of 5 equal values is off by at most 5 ulp of them: variance <= that squared
    bound = (5 * torch.finfo(torch.float64).eps * expected.abs()).square()
    assert (pred.variance <= bound).all()


def test_stochastic_output_layer_is_folded() -> None:
    """A deterministic network with a stochastic output layer: the network is the trunk,
    the output layer samples ``y`` afresh for each of the K samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2), layers.Normal(1))
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    x = _x(4).float()
    pred = bl.predict(model, x, 64)
    assert calls == [4]
    assert pred.variance.min() > 0  # y drawn per sample: aleatoric spread
    assert pred.epistemic.abs().max() < 1e-10  # one function


@pytest.mark.parametrize(
    "cls",
    [layers.LinearReparameterization, layers.LinearFlipout, layers.LinearLocalReparameterization],
)
@pytest.mark.parametrize("rows", [4, 12])
@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_draws_at_shared_input_says_what_shared_input_samples_does(
    cls: type, rows: int, mode: str
) -> None:
    """The predicate predict sizes its chunks by agrees with the draw, and draws nothing."""
    layer = cls(8, 3)
    layer.sampling = mode
    x = torch.randn(rows, 8)
    state = torch.get_rng_state()
    applies = layer.draws_at_shared_input(x)
    assert torch.equal(torch.get_rng_state(), state)
    with bl.vectorized_samples(layer, 4):
        y = layer.shared_input_samples(x, 4)
    assert applies == (y is not None)
    if y is not None:
        assert y.shape == (4 * rows, 3)
    # Flipout draws at the shared input only while rows < in_features
    assert applies == (mode == "sample" and (cls is not layers.LinearFlipout or rows < 8))


def test_a_sequential_with_a_forward_of_its_own_is_not_cut() -> None:
    """The parts of an ``nn.Sequential`` subclass with its own forward (or of a hooked
    one) are not its call: ``"auto"`` runs such a model whole, as ``trunk=None`` does."""

    class Doubled(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    def parts() -> list[nn.Module]:
        torch.manual_seed(0)
        return [nn.Linear(5, 12), layers.LinearLocalReparameterization(12, 3)]

    plain = nn.Sequential(*parts())
    plain.register_forward_hook(lambda m, i, o: 2 * o)
    x = _x(4).float()
    for model in (Doubled(*parts()), plain):
        outs = []
        for trunk in ("auto", None):
            torch.manual_seed(6)
            outs.append(bl.predict(model, x, 3, trunk=trunk).samples)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


class ScalesInPlace(nn.Module):
    """Scales its features' output in place before the Bayesian head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(5, 12)
        self.head = layers.LinearReparameterization(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.head(h.mul_(2.0))


@pytest.mark.parametrize("declared", [False, True])
def test_a_head_changing_the_trunk_output_in_place_leaves_the_next_chunk_alone(
    declared: bool,
) -> None:
    """Chunks of one sample hand the head a copy of the trunk's output: an in-place
    dropout (the first stochastic module) or an in-place op of a declared trunk's model
    does not reach the next chunk, whose samples stay ``trunk=None``'s for a seed."""
    torch.manual_seed(0)
    if declared:
        model: nn.Module = ScalesInPlace()
        trunk: object = model.features
    else:
        model = nn.Sequential(
            nn.Linear(5, 12), nn.Dropout(0.5, inplace=True), nn.Linear(12, 3)
        ).train()
        trunk = "auto"
    x = torch.randn(4, 5)

    def run(t: object) -> Tensor:
        torch.manual_seed(1)
        return bl.predict(model, x, 4, trunk=t, chunk_size=1).samples

    assert torch.equal(run(trunk), run(None))  # the same ops on the same shapes
