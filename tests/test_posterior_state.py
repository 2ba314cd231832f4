"""Issue 19, Must show: a posterior fitted by any method survives ``state_dict`` →
``torch.save`` → ``torch.load(weights_only=True)`` → a freshly built model, and that model
predicts identically (``torch.equal``) for a fixed seed.

Every method and variant on real data (scikit-learn's 8×8 digits, 10 classes): Laplace
(``"diag"``/``"kron"`` × ``subset="all"``/``"last_layer"``, on an MLP and on a small CNN
with BatchNorm; ``"full"`` with a fixed τ), SWAG (``"low_rank"`` with joint
low-rank draws and ``"diagonal"``, BatchNorm statistics per draw on the CNN), IVON
(after ``write_posterior``) and deep ensembles (deterministic and Bayesian members).
Laplace also on an LSTM and a self-attention classifier (the rows of the image as a
sequence). Each fresh model is loaded through the documented path (``bl.laplace.restore``,
``bl.swag.prepare``, ``bl.to_bayesian``, a new ``bl.Ensemble``), and each test also
shows the loaded posterior is not trivial: draws differ across seeds, and the scales
are the fitted ones, not the prior's or the fresh model's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import laplace, swag
from bayesian_layers.ensemble import Ensemble
from bayesian_layers.layers.base import BayesianLayer
from bayesian_layers.optim import IVON, ivon_parameters

sklearn_datasets = pytest.importorskip("sklearn.datasets")

N_TRAIN, N_TEST, BATCH = 240, 32, 60
Build = Callable[[], nn.Module]


# ------------------------------------------------------------------ data, models
def _digits() -> tuple[Tensor, Tensor, Tensor]:
    """(x_train (240, 1, 8, 8), y_train (240,), x_test (32, 1, 8, 8)), pixels in [0, 1]."""
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.as_tensor(y, dtype=torch.long)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN : N_TRAIN + N_TEST]


X, Y, X_TEST = _digits()
LOADER = [(X[i : i + BATCH], Y[i : i + BATCH]) for i in range(0, N_TRAIN, BATCH)]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )


ARCHS: dict[str, Build] = {"mlp": mlp, "cnn": cnn}


def _train(model: nn.Module, epochs: int = 15) -> nn.Module:
    """Adam on the cross-entropy: the trained point estimate the post-hoc methods start at."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for x, y in LOADER:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


_TRAINED: dict[str, nn.Module] = {}


def trained(arch: str) -> nn.Module:
    """A copy of the deterministic network ``arch``, trained once per session (seed 0)."""
    if arch not in _TRAINED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _TRAINED[arch] = _train(ARCHS[arch]())
    return copy.deepcopy(_TRAINED[arch])


def _fresh(build: Build, seed: int = 123) -> nn.Module:
    """A freshly built network, initialised from another seed than the fitted one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ------------------------------------------------------------------ the round trip
def save_and_load(model: nn.Module, tmp_path: Path) -> dict[str, Tensor]:
    """``torch.save(model.state_dict(), path)``, then ``torch.load(path, weights_only=True)``."""
    path = tmp_path / "posterior.pt"
    torch.save(model.state_dict(), path)
    return torch.load(path, weights_only=True)


def assert_same_state(fresh: nn.Module, fitted: nn.Module) -> None:
    """The loaded model holds exactly the fitted model's tensors, under the same names."""
    want, got = fitted.state_dict(), fresh.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def seeded(fn: Callable[[], Tensor], seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def assert_same_predictions(
    fresh: nn.Module, fitted: nn.Module, draw: Callable[[nn.Module], Tensor]
) -> None:
    """Equal predictions for a fixed seed, and different ones for another seed (the
    draws are random: the posterior is not a point)."""
    a = seeded(lambda: draw(fitted), 7)
    b = seeded(lambda: draw(fresh), 7)
    assert a.shape[0] >= 2 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, seeded(lambda: draw(fresh), 8))


def sample_probs(model: nn.Module, k: int = 6) -> Tensor:
    """``(K, B, 10)`` class probabilities of K function samples (``bl.predict``)."""
    return bl.predict(model, X_TEST, k, transform=lambda z: z.softmax(-1)).samples


def scales(model: nn.Module) -> dict[str, Tensor]:
    """The posterior standard deviation of every random parameter, by path."""
    out = {}
    for path, layer in model.named_modules():
        if isinstance(layer, BayesianLayer):
            for name, _ in layer.named_random_parameters():
                out[f"{path}.{name}"] = layer.posterior(name).stddev.detach()
    assert out
    return out


# ------------------------------------------------------------------ Laplace
HESSIANS = ["diag", "kron"]


def _laplace_round_trip(
    arch: str, hessian: str, subset: str, tmp_path: Path, *, evidence: bool = True
) -> None:
    torch.manual_seed(1)
    post = laplace.fit(trained(arch), LOADER, hessian=hessian, subset=subset, prior_precision=2.0)
    tau = torch.tensor(2.0)
    if evidence:  # τ by the evidence, one per tensor on the CNN
        structure = "layerwise" if arch == "cnn" else "scalar"
        tau = laplace.optimize_prior_precision(post, structure=structure, n_steps=30)
    post.eval()
    state = save_and_load(post, tmp_path)
    fresh = laplace.restore(_fresh(ARCHS[arch]), state).eval()
    assert_same_state(fresh, post)
    n_fitted = 1 if subset == "last_layer" else 2
    assert sum(isinstance(m, BayesianLayer) for m in fresh.modules()) == n_fitted
    # the scales are the fitted ones: at most the prior's 1/sqrt(τ), and well below it
    # where the data speak (the posterior is not the prior)
    s_fit, s_new = scales(post), scales(fresh)
    taus = torch.as_tensor(tau).reshape(-1).expand(len(s_fit))
    shrunk = []
    for (key, s), t in zip(s_fit.items(), taus, strict=True):
        assert torch.equal(s_new[key], s), key
        assert (s <= t.rsqrt() * (1 + 1e-5)).all(), key
        shrunk.append(bool((s < 0.9 * t.rsqrt()).any()))
    assert any(shrunk)
    # the sampling predictive (vectorised) and the linearised (GLM, probit) one
    assert_same_predictions(fresh, post, sample_probs)
    glm_fit, glm_new = laplace.glm_predictive(post, X_TEST), laplace.glm_predictive(fresh, X_TEST)
    assert isinstance(glm_fit, Tensor) and isinstance(glm_new, Tensor)
    assert torch.equal(glm_new, glm_fit)
    with torch.no_grad(), bl.posterior_mean(fresh):
        point = fresh(X_TEST).softmax(-1)
    assert not torch.allclose(glm_new, point)  # the probit scaling moved the point's probs


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("hessian", HESSIANS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_laplace_round_trip(arch: str, hessian: str, subset: str, tmp_path: Path) -> None:
    """fit → optimize_prior_precision → save → restore(fresh deterministic net) → equal
    samples (bl.predict) and equal GLM predictive; BatchNorm stays a point estimate."""
    _laplace_round_trip(arch, hessian, subset, tmp_path)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_laplace_full_hessian_round_trip(arch: str, subset: str, tmp_path: Path) -> None:
    """The same round trip for the full-covariance Laplace posterior (τ fixed: the
    evidence's optimisation costs ~0.8 s a step for the MLP's 1 210 weights)."""
    _laplace_round_trip(arch, "full", subset, tmp_path, evidence=False)


class LSTMNet(nn.Module):
    """The digit's 8 rows as a sequence of 8 steps of 8 pixels; the last state classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.out = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x.reshape(-1, 8, 8))
        return self.out(h[:, -1])


class AttentionNet(nn.Module):
    """Self-attention over the digit's 8 rows, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x.reshape(-1, 8, 8))
        h, _ = self.attn(z, z, z, need_weights=False)
        return self.out(h.mean(1))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap, SDPA
@pytest.mark.parametrize(
    ("build", "hessian", "fitted"),
    [
        (LSTMNet, "kron", {"lstm", "out"}),
        (AttentionNet, "diag", {"embed", "attn", "attn.out_proj", "out"}),
    ],
)
def test_laplace_recurrent_and_attention_round_trip(
    build: Build, hessian: str, fitted: set[str], tmp_path: Path
) -> None:
    """Recurrent and attention layers get a posterior too; restore converts them in the
    fresh deterministic model from the saved keys."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _train(build(), epochs=3)
    post = laplace.fit(net, LOADER, hessian=hessian).eval()
    state = save_and_load(post, tmp_path)
    fresh = laplace.restore(_fresh(build), state).eval()
    assert {n for n, m in fresh.named_modules() if isinstance(m, BayesianLayer)} == fitted
    assert_same_state(fresh, post)
    assert_same_predictions(fresh, post, sample_probs)
    x = X_TEST[:8]
    assert torch.equal(laplace.glm_predictive(fresh, x), laplace.glm_predictive(post, x))


def test_laplace_fitted_in_place_on_a_bayesian_model_round_trip(tmp_path: Path) -> None:
    """A model already converted (to_bayesian) is fitted in place; the fresh model is
    converted the same way before restore."""
    model = bl.to_bayesian(trained("cnn"), "reparameterization")
    post = laplace.fit(model, LOADER, hessian="kron").eval()
    state = save_and_load(post, tmp_path)
    fresh = laplace.restore(bl.to_bayesian(_fresh(cnn), "reparameterization"), state).eval()
    assert_same_state(fresh, post)
    assert_same_predictions(fresh, post, sample_probs)
    assert torch.equal(laplace.glm_predictive(fresh, X_TEST), laplace.glm_predictive(post, X_TEST))


def test_laplace_diag_on_a_flipout_model_round_trip(tmp_path: Path) -> None:
    """The diagonal Laplace posterior in Flipout layers: the fresh model is converted
    with the same estimator, and Flipout's sign draws repeat for the same seed."""
    model = bl.to_bayesian(trained("mlp"), "flipout")
    post = laplace.fit(model, LOADER, hessian="diag").eval()
    state = save_and_load(post, tmp_path)
    fresh = laplace.restore(bl.to_bayesian(_fresh(mlp), "flipout"), state).eval()
    assert_same_state(fresh, post)
    assert_same_predictions(fresh, post, sample_probs)


# ------------------------------------------------------------------ SWAG
def _swag_build(arch: str) -> Build:
    return lambda: bl.to_bayesian(ARCHS[arch](), "reparameterization")


@pytest.mark.parametrize(
    ("arch", "covariance", "estimator"),
    [
        ("mlp", "low_rank", "reparameterization"),
        ("mlp", "diagonal", "reparameterization"),
        ("mlp", "diagonal", "flipout"),
        ("cnn", "low_rank", "reparameterization"),
        ("cnn", "diagonal", "reparameterization"),
    ],
)
def test_swag_round_trip(arch: str, covariance: str, estimator: str, tmp_path: Path) -> None:
    """collect (BatchNorm refreshed at θ_SWA) → save → to_bayesian(fresh) [+ prepare for
    the low-rank family] → equal joint low-rank draws (bl.predict) and equal
    swag.predict with BatchNorm statistics recomputed per draw."""
    model = bl.to_bayesian(trained(arch), estimator)
    before = scales(model)
    torch.manual_seed(2)
    moments = swag.collect(
        model, LOADER, F.cross_entropy, lr=0.05, epochs=4, max_rank=3, momentum=0.9,
        covariance=covariance,
    )  # fmt: skip
    model.eval()
    state = save_and_load(model, tmp_path)
    fresh = bl.to_bayesian(_fresh(ARCHS[arch]), estimator)
    if covariance == "low_rank":
        fresh = swag.prepare(fresh, moments.rank)
    fresh.load_state_dict(state)
    fresh.eval()
    assert_same_state(fresh, model)
    s_fit = scales(model)
    for key, s in scales(fresh).items():
        assert torch.equal(s, s_fit[key]) and not torch.equal(s, before[key]), key

    def joint(m: nn.Module) -> Tensor:
        with swag.joint_low_rank(m):
            return sample_probs(m)

    assert_same_predictions(fresh, model, joint)
    # swag.predict: the paper's predictive, BatchNorm statistics recomputed per draw
    bn_loader = LOADER[:2] if arch == "cnn" else None

    def per_draw(m: nn.Module) -> Tensor:
        return swag.predict(m, X_TEST, 3, bn_loader=bn_loader).samples

    assert_same_predictions(fresh, model, per_draw)
    assert_same_state(fresh, model)  # swag.predict restored the statistics


# ------------------------------------------------------------------ IVON
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ivon_round_trip(arch: str, tmp_path: Path) -> None:
    """IVON trains the means (posterior-mean mode, one draw per step), write_posterior
    stores N(m, 1/(ess (h + δ))) → save → to_bayesian(fresh) → equal bl.predict."""
    build = _swag_build(arch)
    model = build()
    before = scales(model)
    opt = IVON(ivon_parameters(model), lr=0.2, ess=N_TRAIN, hess_init=1.0, beta2=0.99)
    model.train()
    with bl.posterior_mean(model):
        for _ in range(3):
            for x, y in LOADER:
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                opt.step()
    written = opt.write_posterior(model)
    assert len(written) == 2
    model.eval()
    state = save_and_load(model, tmp_path)
    fresh = _fresh(build)
    fresh.load_state_dict(state)
    fresh.eval()
    assert_same_state(fresh, model)
    for path, layer in fresh.named_modules():
        if isinstance(layer, BayesianLayer):
            loc, scale = layer.posterior_loc_scale("weight")
            want = opt.posterior_scale(model.get_submodule(path).weight_loc)
            # softplus(softplus⁻¹(σ)) is σ to rounding; IVON's Hessian moved off h₀
            torch.testing.assert_close(scale, want.to(scale.dtype), rtol=1e-5, atol=0)
            assert scale.std() > 1e-3 * scale.mean()
            assert not torch.equal(scale, before[f"{path}.weight"])
    assert_same_predictions(fresh, model, sample_probs)


# ------------------------------------------------------------------ deep ensembles
def _bayesian_mlp() -> nn.Module:
    return bl.to_bayesian(mlp(), "reparameterization")


@pytest.mark.parametrize("members", ["mlp", "cnn", "bayesian_mlp"])
def test_ensemble_round_trip(members: str, tmp_path: Path) -> None:
    """Train every member with one optimizer (sum of the members' losses) → save → a new
    Ensemble built from another seed → equal bl.predict (members as function samples)."""
    make = {"mlp": mlp, "cnn": cnn, "bayesian_mlp": _bayesian_mlp}[members]
    n = 3
    ens = Ensemble(make, n)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    ens.train()
    for _ in range(2):
        for x, y in LOADER:
            opt.zero_grad()
            loss = sum(F.cross_entropy(o, y) for o in ens(x))
            if members == "bayesian_mlp":
                loss = loss + sum(bl.losses(ens)) / N_TRAIN
            opt.zero_grad()
            loss.backward()
            opt.step()
    ens.eval()
    state = save_and_load(ens, tmp_path)
    fresh = _fresh(lambda: Ensemble(make, n)).eval()
    assert not torch.equal(
        fresh.members.get_parameter(_first(fresh)), ens.members.get_parameter(_first(ens))
    )
    fresh.load_state_dict(state)
    assert_same_state(fresh, ens)

    def draw(m: nn.Module) -> Tensor:
        return sample_probs(m, k=2 * n)

    a, b = seeded(lambda: draw(ens), 7), seeded(lambda: draw(fresh), 7)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[-1])  # the members disagree: not one network
    if members == "bayesian_mlp":  # each member draws: another seed, other samples
        assert not torch.equal(a, seeded(lambda: draw(fresh), 8))
        assert not torch.equal(a[0], a[1])
    else:  # point-estimate members: sample j of each block is that member, any seed
        assert torch.equal(a[0], a[1])
        assert torch.equal(a, seeded(lambda: draw(fresh), 8))


def _first(ens: Ensemble) -> str:
    return next(name for name, _ in ens.members.named_parameters())
