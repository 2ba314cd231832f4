"""THE registry of layer cases: one :class:`Case` per public layer class (and a few
``Name[variant]`` constructions), and :data:`SKIP` for the public classes that are not
layers, each with its reason. Every cross-cutting test in ``tests/contract`` (and the
bad-input sweep, the graph, state and mixed-precision tests) is driven by it.

Adding a layer is one line here, with the builder of its family (``_dense``,
``_conv``, ``_cell``, ...); ``test_contract_registry.py`` fails while a public class is
in neither :data:`CASES` nor :data:`SKIP`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from contract.util import resized
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

Args = Callable[[Tensor], tuple[Any, ...]]


def _alone(x: Tensor) -> tuple[Any, ...]:
    return (x,)


@dataclass(frozen=True, eq=False)
class Case:
    """How to build, call and check one layer.

    Attributes:
        cls: the public class.
        args: positional constructor arguments (their ints are the sizes the
            bad-constructor test breaks one at a time).
        shape: a valid primary input's shape.
        kwargs: keyword constructor arguments.
        variant: a name for a second construction of ``cls`` (``Name[variant]``).
        make: builds the layer instead of ``cls(*args, **kwargs, **factory)``.
        inputs: the positional call arguments from the primary input (attention adds
            key and value).
        stateful: the call arguments with a state too (cells, LSTMs: ``hx``), for the
            checks of every argument (a cell called with a state continues its
            sequence with the same draw, so the other contracts call it without).
        arguments: the names of the floating arguments of ``stateful`` (else
            ``inputs``), in order.
        kind: ``"float"`` (normal draws), ``"index"`` (ints below ``high``) or
            ``"points"`` (uniform in ``[0, 1)``).
        high: the index range of ``"index"`` inputs.
        feature_dim: the dim whose size the layer fixes (``None``: any size).
        batch_dim: the batch dim (set to 0 for the empty batch, K-folded when vectorised).
        min_rank: the fewest dims the layer accepts (0: any rank).
        max_rank: the most dims the layer accepts (``None``: any number of batch dims).
        more_shapes: other valid input shapes (unbatched, extra batch dims).
        counterpart: torch's deterministic layer with the same arguments: output
            shapes (and with posterior scale 0, values on the posterior means) agree.
        counterpart_values: the counterpart loaded with the posterior means is this layer
            (False for rank-1 / BatchEnsemble: their means are W plus per-member factors
            and an (E, out) bias, which torch's layer cannot hold).
        factory: accepts ``device=`` / ``dtype=``.
        random: two calls give different outputs (and the same seed the same).
        vectorized: supports ``bl.vectorized_samples`` (K folded into ``batch_dim``).
        traced: ``bl.tape`` records its random parameters by module path.
        checks_dtype: a floating argument of another dtype than the parameters' raises
            ``TypeError`` naming the layer, the argument and both dtypes (under
            autocast, the autocast dtype is accepted too).
        autocast: bf16 autocast on CPU gives torch's output dtype, float32 losses.
        compile: ``torch.compile(fullgraph=True)`` traces its posterior-mean call.
        warm: needs one call before its state is complete (lazy sizes, data init).
        scores_input: the input is data the layer scores or initialises from, so a
            NaN/inf must raise (not propagate).
        extra: more tensors to check from the output (e.g. the log-density it scores).
        bad: extra ``(args, kwargs)`` constructions that must raise naming the layer.
    """

    cls: type[nn.Module]
    args: tuple[Any, ...]
    shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    make: Callable[..., nn.Module] | None = None
    inputs: Args = _alone
    stateful: Args | None = None
    arguments: tuple[str, ...] = ("input",)
    kind: str = "float"
    high: int = 0
    feature_dim: int | None = -1
    batch_dim: int = 0
    min_rank: int = 1
    max_rank: int | None = None
    more_shapes: tuple[tuple[int, ...], ...] = ()
    counterpart: Callable[..., nn.Module] | None = None
    counterpart_values: bool = True
    factory: bool = False
    random: bool = False
    vectorized: bool = False
    traced: bool = False
    checks_dtype: bool = False
    autocast: bool = False
    compile: bool = True
    warm: bool = False
    scores_input: bool = False
    extra: Callable[[nn.Module, object], list[Tensor]] | None = None
    bad: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...] = ()

    @property
    def name(self) -> str:
        return self.cls.__name__ + (f"[{self.variant}]" if self.variant else "")

    @property
    def bayesian(self) -> bool:
        return issubclass(self.cls, layers.BayesianLayer)

    def build(self, seed: int = 0, **factory: Any) -> nn.Module:
        """A fresh layer under ``seed`` (``factory``: ``dtype=`` / ``device=``)."""
        torch.manual_seed(seed)
        if self.make is not None:
            return self.make(**factory)
        return self.cls(*self.args, **self.kwargs, **factory)

    def build_torch(self, **factory: Any) -> nn.Module:
        assert self.counterpart is not None
        return self.counterpart(**factory)

    def input(self, shape: tuple[int, ...] | None = None, seed: int = 0, **like: Any) -> Tensor:
        """A valid primary input (``like``: ``dtype=`` / ``device=`` of float inputs)."""
        shape = self.shape if shape is None else shape
        gen = torch.Generator().manual_seed(seed)
        if self.kind == "index":
            return torch.randint(0, self.high, shape, generator=gen).to(like.get("device"))
        if self.kind == "points":
            return torch.rand(shape, generator=gen).to(**like)
        return torch.randn(shape, generator=gen).to(**like)

    def batch(self, size: int) -> tuple[int, ...]:
        """The valid shape with ``size`` examples."""
        return resized(self.shape, self.batch_dim, size)

    def call(self, layer: nn.Module, x: Tensor) -> object:
        return layer(*self.inputs(x))

    def all_inputs(self, x: Tensor) -> tuple[Any, ...]:
        """Every argument named in :attr:`arguments` (states included)."""
        return (self.stateful or self.inputs)(x)

    def warmed(self, seed: int = 0, **factory: Any) -> nn.Module:
        """:meth:`build`, then one call where the layer needs it to be complete."""
        layer = self.build(seed, **factory)
        if self.warm:
            self.call(layer, self.input())
        return layer


# ------------------------------------------------------------------------ families
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}
_WEIGHT = {"factory": True, "random": True, "vectorized": True, "traced": True}
_WEIGHT |= {"checks_dtype": True, "autocast": True}


def _dense(cls: type[nn.Module], variant: str = "", **kwargs: Any) -> Case:
    bias = kwargs.get("bias", True)
    return Case(
        cls, (3, 5), (4, 3), kwargs, variant,
        more_shapes=((3,), (2, 4, 3)),
        counterpart=lambda **f: nn.Linear(3, 5, bias=bias, **f),
        **_WEIGHT,
    )  # fmt: skip


def _bilinear(name: str) -> Case:
    def inputs(x: Tensor) -> tuple[Any, ...]:  # a second input one wider
        return (x, torch.cat([x, x[..., :1]], -1) if x.dim() else x)

    return Case(
        getattr(layers, name), (3, 4, 5), (4, 3), RANDOM_BIAS, inputs=inputs,
        arguments=("input1", "input2"), more_shapes=((3,), (2, 4, 3)),
        counterpart=lambda **f: nn.Bilinear(3, 4, 5, **f), **_WEIGHT,
    )  # fmt: skip


def _conv(name: str) -> Case:
    d = int(name.split("d")[0][-1])
    transpose = "Transpose" in name
    spatial = {1: (8,), 2: (6, 6), 3: (4, 4, 4)}[d]
    torch_cls = getattr(nn, f"Conv{'Transpose' if transpose else ''}{d}d")
    # padding and stride varied across the family; a random bias for the 2d layers
    extra = {"padding": 1} if name.endswith("Flipout") else {"stride": 2} if transpose else {}
    kwargs = extra | (RANDOM_BIAS if d == 2 else {})
    return Case(
        getattr(layers, name), (3, 4, 3), (2, 3, *spatial), kwargs,
        feature_dim=-(d + 1), min_rank=d + 1, max_rank=d + 2,
        more_shapes=((3, *spatial), (1, 3, *spatial)),
        counterpart=lambda **f: torch_cls(3, 4, 3, **extra, **f),
        **_WEIGHT,
    )  # fmt: skip


def _cell(name: str) -> Case:
    lstm = name.startswith("LSTM")

    def inputs(x: Tensor) -> tuple[Any, ...]:
        if x.dim() == 0 or not x.is_floating_point():
            return (x,)
        h = torch.zeros(*x.shape[:-1], 5, dtype=x.dtype)
        return (x, (h, h.clone()) if lstm else h)

    torch_cls = nn.LSTMCell if lstm else nn.GRUCell
    return Case(
        getattr(layers, name), (3, 5), (4, 3), stateful=inputs, arguments=("input", "hx"),
        max_rank=2, more_shapes=((3,),), counterpart=lambda **f: torch_cls(3, 5, **f),
        **_WEIGHT,
    )  # fmt: skip


def _lstm(name: str, **kwargs: Any) -> Case:
    hidden = 2 * kwargs.get("num_layers", 1) * (1 + kwargs.get("bidirectional", False))

    def inputs(x: Tensor) -> tuple[Any, ...]:
        if x.dim() < 2 or not x.is_floating_point():
            return (x,)
        h = torch.zeros(hidden // 2, *x.shape[1:-1], 5, dtype=x.dtype)
        return (x, (h, h.clone()))

    return Case(
        getattr(layers, name), (3, 5), (6, 2, 3), kwargs, stateful=inputs,
        arguments=("input", "hx"), batch_dim=1, min_rank=2, max_rank=3,
        more_shapes=((6, 3),),
        counterpart=lambda **f: nn.LSTM(3, 5, **kwargs, **f), **_WEIGHT,
    )  # fmt: skip


def _attention(name: str, **kwargs: Any) -> Case:
    return Case(
        getattr(layers, name), (8, 2), (5, 2, 8), kwargs,
        inputs=lambda x: (x, x, x), arguments=("query", "key", "value"),
        batch_dim=1, min_rank=2, max_rank=3, more_shapes=((5, 8),),
        counterpart=lambda **f: nn.MultiheadAttention(8, 2, **kwargs, **f), **_WEIGHT,
    )  # fmt: skip


def _output(name: str, *args: int) -> Case:
    return Case(getattr(layers, name), (2, *args), (4, 3), {"in_features": 3}, random=True)


def _rate(points: Tensor) -> Tensor:
    return 1.0 + points.sum(-1)  # positive on the unit box


def _log_prob(m: nn.Module, out: object) -> list[Tensor]:
    assert isinstance(out, bl.RandomVariable)
    return [out.log_prob(out)]


def _as_random_variable(x: Tensor) -> tuple[Any, ...]:
    """The input as a random variable: normal around ``x``, its value ``x`` (any dtype)."""
    loc = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    normal = torch.distributions.Normal(loc, torch.ones_like(loc), validate_args=False)
    return (bl.RandomVariable(normal, value=x),)


def _gp(**factory: Any) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    x, y = x.to(**factory), y.to(**factory)
    return layers.GaussianProcess(2, conditional_inputs=x, conditional_outputs=y, **factory)


def _made(**kwargs: Any) -> Callable[..., nn.Module]:
    return lambda: layers.MADE(hidden_dims=[8], **kwargs)


_ESTIMATORS = ("Reparameterization", "Flipout")
_CONVS = [f"Conv{t}{d}d{e}" for t in ("", "Transpose") for d in (1, 2, 3) for e in _ESTIMATORS]
_CONVS.append("Conv2dLocalReparameterization")
#: variational dropout without pruning: its counterpart on posterior means is the unpruned
#: mean (pruning is tested in tests/layers/test_variational_dropout.py)
_NO_PRUNING = {"threshold": math.inf}


def _members(cls: type[nn.Module], variant: str = "", **kwargs: Any) -> Case:
    """Rank-1 / BatchEnsemble with ensemble_size=1: any batch is valid (E > 1 needs a
    batch divisible by E: tests/layers/test_rank1.py, test_batch_ensemble.py)."""
    kwargs.setdefault("ensemble_size", 1)
    random = "Rank1" in cls.__name__  # BatchEnsemble: point estimates, no _rho
    flags = _WEIGHT | {"random": random, "traced": random, "vectorized": random}
    flags |= {"autocast": random, "counterpart_values": False}
    if "Conv" in cls.__name__:
        return Case(cls, (3, 4, 3), (2, 3, 6, 6), kwargs, variant, feature_dim=-3, min_rank=3,
                    max_rank=4, more_shapes=((3, 6, 6), (1, 3, 6, 6)),
                    counterpart=lambda **f: nn.Conv2d(3, 4, 3, **f), **flags)  # fmt: skip
    return Case(cls, (3, 5), (2, 3), kwargs, variant, more_shapes=((3,), (2, 4, 3)),
                counterpart=lambda **f: nn.Linear(3, 5, **f), **flags)  # fmt: skip


_DENSE = ("LinearReparameterization", "LinearFlipout", "LinearLocalReparameterization")
_OUTPUTS = ("Normal", "LogNormal", "StudentT", "Laplace", "Bernoulli", "Poisson")
_OUTPUTS += ("NegativeBinomial", "Categorical", "OneHotCategorical", "MultivariateNormalTriL")

# fmt: off
_ALL: list[Case] = [
    *(_dense(getattr(layers, n), **RANDOM_BIAS) for n in _DENSE),
    *(_dense(getattr(layers, n), "fixed_bias") for n in _DENSE),
    *(_dense(getattr(layers, n), "no_bias", bias=False) for n in _DENSE),
    *(_bilinear(f"Bilinear{e}") for e in (*_ESTIMATORS, "LocalReparameterization")),
    *(_conv(n) for n in _CONVS),
    *(_cell(f"{c}{e}") for c in ("LSTMCell", "GRUCell") for e in _ESTIMATORS),
    _lstm("LSTMReparameterization", bidirectional=True),
    _lstm("LSTMFlipout", num_layers=2),
    _attention("MultiheadAttentionReparameterization", add_bias_kv=True),
    _attention("MultiheadAttentionFlipout"),
    Case(layers.EmbeddingReparameterization, (10, 4), (4, 3), kind="index", high=10,
         min_rank=0, more_shapes=((), (2, 4, 3)), arguments=(),
         counterpart=lambda **f: nn.Embedding(10, 4, **f),
         **(_WEIGHT | {"traced": False, "checks_dtype": False})),
    Case(layers.MCDropout, (0.5,), (4, 3), feature_dim=None, min_rank=0, random=True,
         counterpart=lambda **f: nn.Dropout(0.5),
         bad=(((1.0,), {}), ((-0.1,), {}), ((True,), {}), (("a",), {}))),
    *(_output(n) for n in _OUTPUTS),
    _output("MixtureNormal", 3),
    _output("MixtureLogistic", 3),
    Case(layers.Normal, (2,), (4, 3), variant="lazy", feature_dim=None, random=True, warm=True),
    Case(layers.Discretize, (0, 8), (4, 3), feature_dim=None, min_rank=0,
         inputs=_as_random_variable, bad=(((0, 0), {}), ((True, 8), {}), ((0, "a"), {}))),
    Case(layers.Reverse, (), (4, 3), make=lambda: layers.Reverse(layers.Permute(3))),
    Case(layers.MADE, (), (4, 3), make=_made(in_features=3)),
    Case(layers.MADE, (), (4, 3), variant="lazy", make=_made(), feature_dim=None, warm=True),
    Case(layers.RealNVP, (), (4, 4), make=lambda: layers.RealNVP(_made(in_features=2)())),
    Case(layers.MaskedAutoregressiveFlow, (), (4, 3),
         make=lambda: layers.MaskedAutoregressiveFlow(_made(in_features=3)())),
    # a fresh ActNorm initialises from its first batch: non-finite values must raise
    Case(layers.ActNorm, (3,), (4, 3), scores_input=True, warm=True),
    Case(layers.ActNorm, (), (4, 3), variant="lazy", feature_dim=None, scores_input=True,
         warm=True),
    Case(layers.Permute, (3,), (4, 3)),
    Case(layers.InvertibleConv1x1, (3,), (2, 3, 4, 4), feature_dim=-3, min_rank=3),
    # the input is a point set: data scored by the process, so NaN/inf must raise
    Case(layers.PoissonProcess, (), (5, 2),
         make=lambda: layers.PoissonProcess(_rate, [(0.0, 1.0), (0.0, 1.0)], num_points=8),
         min_rank=2, kind="points", scores_input=True, extra=_log_prob, compile=False),
    # the exact and sparse GPs compile with graph breaks at the Cholesky jitter check
    # (docs/training.md, "Compiling"; tests/test_compile_gp.py), as does the Laplace RFF
    Case(layers.GaussianProcess, (2,), (5, 3), make=_gp, factory=True, random=True,
         compile=False),
    Case(layers.SparseGaussianProcess, (2, 4), (5, 3), {"in_features": 3}, factory=True,
         random=True, compile=False),
    Case(layers.RandomFourierFeatures, (2, 16), (5, 3), {"in_features": 3}, factory=True,
         random=True),
    Case(layers.RandomFourierFeatures, (2, 16), (5, 3),
         {"in_features": 3, "posterior": "laplace"}, variant="laplace", factory=True,
         compile=False),
    Case(layers.GaussianLikelihood, (2,), (4, 2), random=True),
    *(_members(getattr(layers, n))
      for n in ("LinearRank1", "Conv2dRank1", "LinearBatchEnsemble", "Conv2dBatchEnsemble")),
    _members(layers.LinearRank1, "random_bias", **RANDOM_BIAS),
    # the Laplace precision's Cholesky jitter check breaks the graph, as for the Laplace RFF
    Case(layers.SNGPHead, (3, 2), (5, 3), {"num_features": 16}, factory=True, compile=False),
    # five classes: two draws of four labels from two classes coincide too often
    *(Case(getattr(layers, n), (5,), (4, 3), {"in_features": 3, "num_factors": 2}, random=True)
      for n in ("HeteroscedasticCategorical", "HeteroscedasticBernoulli")),
    *(Case(getattr(layers, n), (5,), (4, 3),
           {"in_features": 3, "num_factors": 2, "parameter_efficient": True},
           variant="efficient", random=True)
      for n in ("HeteroscedasticCategorical", "HeteroscedasticBernoulli")),
    _dense(layers.LinearVariationalDropout, **(RANDOM_BIAS | _NO_PRUNING)),
    _dense(layers.LinearVariationalDropout, "no_bias", bias=False, **_NO_PRUNING),
    Case(layers.Conv2dVariationalDropout, (3, 4, 3), (2, 3, 6, 6),
         {"padding": 1} | RANDOM_BIAS | _NO_PRUNING, feature_dim=-3, min_rank=3, max_rank=4,
         more_shapes=((3, 6, 6), (1, 3, 6, 6)),
         counterpart=lambda **f: nn.Conv2d(3, 4, 3, padding=1, **f), **_WEIGHT),
]
# fmt: on

#: name -> case; the names are the test ids.
CASES: dict[str, Case] = {case.name: case for case in _ALL}
assert len(CASES) == len(_ALL), "two cases with one name"

_KERNEL = "a covariance function, not a layer (checked through the GP layers that use it)"
_MEAN = "a mean function of the GP layers, not a layer (checked through them)"
#: public classes that are not layers -> why they have no case.
SKIP: dict[str, str] = {
    "BayesianLayer": "abstract base of the weight layers",
    "ParameterSpec": "a record of one parameter (BayesianLayer.named_random_parameters)",
    "ReversibleLayer": "abstract base of the reversible layers",
    "StochasticOutput": "abstract base of the stochastic output layers",
    "DiscretizedDistribution": "a distribution (the output of Discretize), not a layer",
    "PoissonProcessDistribution": "a distribution (the output of PoissonProcess), not a layer",
    "PointSetVariable": "a random variable (the value of PoissonProcess), not a layer",
    "MultivariateNormalColumns": "a distribution (the output of the GP layers), not a layer",
    "NotPositiveDefiniteError": "an exception",
    "JitterWarning": "a warning",
    "SpectralNormalization": "a weight parametrization that spectral_normalization registers "
    "on a torch layer (the layer stays torch's; tests/layers/test_spectral_norm.py)",
    "SparsityReport": "a record of the sparsity reached (variational_dropout_sparsity), "
    "not a layer",
    **{
        name: _KERNEL
        for name in (
            "Kernel",
            "SumKernel",
            "ProductKernel",
            "StationaryKernel",
            "ExponentiatedQuadratic",
            "Matern12",
            "Matern32",
            "Matern52",
            "RationalQuadratic",
            "Periodic",
            "LinearKernel",
            "WhiteNoise",
            "ConstantKernel",
        )
    },  # fmt: skip
    **{name: _MEAN for name in ("ZeroMean", "ConstantMean", "LinearMean")},
}

#: the modules whose ``__all__`` lists public layer classes.
PUBLIC_MODULES = (layers, layers.gp, layers.outputs, layers.reversible)


def public_classes() -> dict[str, type]:
    """Every class named in the ``__all__`` of :data:`PUBLIC_MODULES`."""
    out: dict[str, type] = {}
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                out[name] = obj
    return out


#: (test function, case name) -> why the layer breaks that contract today. Strict
#: xfails: a fix flips the test, and the entry must go.
KNOWN: dict[tuple[str, str], str] = {}


def names(**flags: bool) -> list[str]:
    """Names of the cases whose attributes have the given values, e.g. ``random=True``."""
    return [n for n, c in CASES.items() if all(getattr(c, k) == v for k, v in flags.items())]


def params(test: str, selected: list[str]) -> list[Any]:
    """``selected`` case names as pytest params, :data:`KNOWN` failures of ``test``
    marked strict xfail."""
    import pytest

    out = []
    for name in selected:
        reason = KNOWN.get((test, name))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out
