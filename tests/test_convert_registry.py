"""The converter registry (bayesian_layers/layers/registry.py) and to_bayesian reading it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesian_layers as bl
from bayesian_layers import convert, layers
from bayesian_layers.convert import to_bayesian
from bayesian_layers.layers import registry
from bayesian_layers.layers.base import BayesianLayer

REP, FLIP, LOCAL, VD = registry.ESTIMATORS


class Scale(nn.Module):
    """A toy torch layer: ``x * weight`` elementwise."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class BayesianScale(BayesianLayer):
    """Its Bayesian counterpart: a normal posterior over ``weight``."""

    def __init__(
        self,
        features: int,
        *,
        weight_initializer: str = "trainable_normal",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.add_param(
            "weight",
            (features,),
            weight_initializer,
            "normal_kl_divergence",
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, module: Scale, **kwargs: object) -> BayesianScale:
        like = module.weight
        new = cls(like.shape[0], device=like.device, dtype=like.dtype, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            new.point("weight").copy_(module.weight)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sample_param("weight")


@pytest.fixture
def scale_registered() -> Iterator[None]:
    """``BayesianScale`` registered for ``Scale`` under reparameterization, then removed."""
    registry.converts(Scale, REP)(BayesianScale)
    try:
        yield
    finally:
        registry.unregister(Scale)


def test_the_estimator_names_are_one_tuple() -> None:
    assert convert.ESTIMATORS is registry.ESTIMATORS


def test_every_registered_class_is_a_bayesian_layer_with_from_torch() -> None:
    assert registry.registered_torch_classes()
    for torch_cls in registry.registered_torch_classes():
        found = registry.counterparts(torch_cls)
        assert REP in found, torch_cls  # the fallback every torch class has
        for estimator, cls in found.items():
            assert estimator in registry.ESTIMATORS
            assert issubclass(cls, BayesianLayer) and callable(cls.from_torch), cls


def test_the_documented_families_and_their_estimators() -> None:
    """The estimator rule to_bayesian documents: local reparameterization for nn.Linear,
    nn.Bilinear and nn.Conv2d, flipout for all but nn.Embedding, variational dropout for
    nn.Linear and nn.Conv2d."""
    everything = {REP, FLIP, LOCAL}
    expected = {nn.Linear: everything | {VD}, nn.Bilinear: everything, nn.Conv2d: everything | {VD}}
    expected[nn.Embedding] = {REP}
    for cls in (nn.Conv1d, nn.Conv3d, nn.LSTM, nn.LSTMCell, nn.GRUCell, nn.MultiheadAttention):
        expected[cls] = {REP, FLIP}
    for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        expected[cls] = {REP, FLIP}
    for torch_cls, estimators in expected.items():
        assert set(registry.counterparts(torch_cls)) == estimators, torch_cls


def test_duplicate_registration_raises_and_keeps_the_holder() -> None:
    class Other(layers.LinearFlipout):
        pass

    with pytest.raises(ValueError, match=r"nn.Linear under 'flipout' is already LinearFlipout"):
        registry.converts(nn.Linear, FLIP)(Other)
    assert registry.counterparts(nn.Linear)[FLIP] is layers.LinearFlipout
    # the same class again (a module reload) is a no-op
    assert registry.converts(nn.Linear, FLIP)(layers.LinearFlipout) is layers.LinearFlipout


def test_bad_registrations_raise() -> None:
    with pytest.raises(TypeError, match="`torch_cls` to be an nn.Module class"):
        registry.converts(int, REP)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`torch_cls` to be an nn.Module class"):
        registry.converts(nn.Linear(2, 2), REP)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="estimator in"):
        registry.converts(Scale, "mc_dropout")

    class NotAModule:
        @classmethod
        def from_torch(cls, module: nn.Module) -> NotAModule:
            return cls()

    with pytest.raises(TypeError, match="decorated class to be an nn.Module class"):
        registry.converts(Scale, REP)(NotAModule)

    class NoFromTorch(BayesianLayer):
        pass

    with pytest.raises(TypeError, match="NoFromTorch has no from_torch"):
        registry.converts(Scale, REP)(NoFromTorch)
    assert Scale not in registry.registered_torch_classes()


def test_counterparts_is_read_only_and_unregister_returns_what_it_removed(
    scale_registered: None,
) -> None:
    found = registry.counterparts(Scale)
    with pytest.raises(TypeError):
        found[FLIP] = BayesianScale  # type: ignore[index]
    assert registry.unregister(Scale, FLIP) == {}
    assert registry.unregister(Scale, REP) == {REP: BayesianScale}
    assert Scale not in registry.registered_torch_classes()
    assert registry.unregister(Scale) == {}


def test_a_user_registered_layer_is_converted(scale_registered: None) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(Scale(3), nn.Linear(3, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    ref = net(x)
    old = net[0]
    # Scale has no flipout class: it falls back to reparameterization
    net, report = to_bayesian(net, "flipout", pretrained_scale=1e-2, return_report=True)
    assert [(s.name, s.target, s.estimator) for s in report] == [
        ("0", "BayesianScale", REP),
        ("1", "LinearFlipout", FLIP),
    ]
    assert isinstance(net[0], BayesianScale) and torch.equal(net[0].weight_loc, old.weight)
    torch.testing.assert_close(F.softplus(net[0].weight_rho), 1e-2 * old.weight.abs())
    assert "pretrained_scale=0.01" in repr(net[0])
    with bl.posterior_mean(net):
        torch.testing.assert_close(net(x), ref)
    assert len(bl.losses(net)) == 2


def test_a_subclass_keeping_forward_converts_and_one_with_its_own_is_unsupported(
    scale_registered: None,
) -> None:
    class Kept(Scale):
        pass

    class Doubled(Scale):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    net, report = to_bayesian(nn.Sequential(Kept(2), Doubled(2)), return_report=True)
    assert isinstance(net[0], BayesianScale) and type(net[1]) is Doubled
    assert [(u.name, u.reason) for u in report.unsupported] == [
        ("1", "subclass of Scale with its own forward")
    ]


def test_a_registered_type_without_a_usable_class_is_reported() -> None:
    registry.converts(Scale, FLIP)(BayesianScale)  # no reparameterization fallback
    try:
        net = nn.Sequential(Scale(2), nn.Linear(2, 2))
        net, report = to_bayesian(net, LOCAL, return_report=True)
        assert [(s.name, s.reason) for s in report.skipped] == [
            ("0", "no Bayesian class registered for Scale under "
             "'local_reparameterization' or 'reparameterization'")
        ]  # fmt: skip
        assert [s.name for s in report] == ["1"]
        assert isinstance(to_bayesian(Scale(2), FLIP), BayesianScale)
    finally:
        registry.unregister(Scale)


def test_from_torch_must_return_a_module() -> None:
    class Broken(BayesianScale):
        @classmethod
        def from_torch(cls, module: nn.Module, **kwargs: object) -> BayesianScale:
            return None  # type: ignore[return-value]

    registry.converts(Scale, REP)(Broken)
    try:
        with pytest.raises(TypeError, match="Broken.from_torch returned NoneType"):
            to_bayesian(Scale(2))
    finally:
        registry.unregister(Scale)


@pytest.mark.parametrize("estimator", [REP, FLIP, LOCAL])
def test_bilinear_conversion_reproduces_outputs(estimator: str) -> None:
    torch.manual_seed(0)
    bilinear = nn.Bilinear(3, 4, 2).double()
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    ref = bilinear(x1, x2)
    new, report = to_bayesian(bilinear, estimator, pretrained_scale=1e-2, return_report=True)
    assert report.swapped[0].target == registry.counterparts(nn.Bilinear)[estimator].__name__
    with bl.posterior_mean(new):
        torch.testing.assert_close(new(x1, x2), ref, rtol=0, atol=1e-12)
