"""to_bayesian: swapping deterministic layers in place (bayesian_layers/convert/)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesian_layers as bl
from bayesian_layers import convert, layers
from bayesian_layers.convert import ConversionReport, to_bayesian
from bayesian_layers.layers import registry

_CUDA = torch.cuda.is_available()


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.blocks = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8, bias=False)})
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.head(self.blocks["b"](self.blocks["a"](h)))


def _suffix(estimator: str) -> str:
    """The class-name suffix of an estimator: ``"local_reparameterization"`` ->
    ``"LocalReparameterization"``."""
    return "".join(word.capitalize() for word in estimator.split("_"))


def _means_equal(new: nn.Module, old: nn.Module, names: tuple[str, ...]) -> None:
    assert isinstance(new, layers.BayesianLayer)
    for name in names:
        src = getattr(old, name)
        if src is not None:
            assert torch.equal(new.point(name), src), name


@pytest.mark.parametrize(
    ("estimator", "cls"),
    [
        ("reparameterization", layers.LinearReparameterization),
        ("flipout", layers.LinearFlipout),
        ("local_reparameterization", layers.LinearLocalReparameterization),
    ],
)
def test_mlp_types_names_and_means(estimator: str, cls: type) -> None:
    net = _mlp(torch.float64).eval()
    old = [net[0], net[2]]
    out, report = to_bayesian(net, estimator, return_report=True)
    assert out is net
    assert [type(m) for m in net] == [cls, nn.ReLU, cls]
    assert [(s.name, s.source, s.target, s.estimator) for s in report] == [
        (n, "Linear", cls.__name__, estimator) for n in ("0", "2")
    ]
    for new, o in zip((net[0], net[2]), old, strict=True):
        _means_equal(new, o, ("weight", "bias"))
        assert new.weight_loc.dtype == torch.float64 and not new.training
    x = torch.randn(5, 4, dtype=torch.float64)
    with bl.posterior_mean(net):
        ref = old[1](F.relu(old[0](x)))
        assert torch.equal(net(x), ref)
    assert "2 layer(s) swapped" in str(report)


def test_nested_module_shared_layer_and_mode() -> None:
    torch.manual_seed(0)
    net = _Net().train()
    net.encoder.eval()  # a mixed train/eval model keeps each flag
    shared = nn.Linear(8, 8)
    net.blocks["a"] = shared
    net.extra = shared  # the same layer at two places
    out, report = to_bayesian(net, "flipout", return_report=True)
    assert out is net
    names = [s.name for s in report]
    assert names == ["encoder.0", "encoder.2", "blocks.a", "blocks.b", "head"]
    assert net.extra is net.blocks["a"] and isinstance(net.extra, layers.LinearFlipout)
    assert not net.encoder[0].training and net.head.training
    assert net.blocks["b"].use_bias is False
    assert net(torch.randn(3, 4)).shape == (3, 2)


def test_top_level_layer_is_replaced_and_returned() -> None:
    linear = nn.Linear(3, 2)
    new = to_bayesian(linear)
    assert isinstance(new, layers.LinearReparameterization)
    _means_equal(new, linear, ("weight", "bias"))


def test_include_exclude_globs() -> None:
    net = to_bayesian(_Net(), include="encoder.*")
    assert isinstance(net.encoder[0], layers.BayesianLayer)
    assert isinstance(net.encoder[2], layers.BayesianLayer)
    assert type(net.head) is nn.Linear and type(net.blocks["a"]) is nn.Linear
    # a pattern selects a subtree; exclude wins over include
    net, report = to_bayesian(
        _Net(), include=["encoder", "blocks.?"], exclude="encoder.2", return_report=True
    )
    assert [s.name for s in report] == ["encoder.0", "blocks.a", "blocks.b"]
    assert [(s.name, s.reason) for s in report.skipped] == [("encoder.2", "excluded")]
    net = to_bayesian(_Net(), exclude=["blocks", "head"])
    assert [n for n, m in net.named_modules() if isinstance(m, layers.BayesianLayer)] == [
        "encoder.0",
        "encoder.2",
    ]


def test_already_bayesian_layers_left_alone() -> None:
    net = to_bayesian(_mlp(), include="0")
    first = net[0]
    net, report = to_bayesian(net, "flipout", return_report=True)
    assert net[0] is first and isinstance(net[2], layers.LinearFlipout)
    assert [(s.name, s.reason) for s in report.skipped] == [("0", "already Bayesian")]
    again, report = to_bayesian(net, return_report=True)
    assert again is net and len(report) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "mc_dropout"}, "estimator"),
        ({"include": "decoder.*"}, "'decoder.*' matches no module"),
        ({"exclude": "fc9"}, "'fc9' matches no module"),
        ({"include": "encoder.1"}, r"'encoder.1' selects no layer .*encoder.1 \(Tanh\)"),
        ({"include": ["head", "encoder.1"]}, "encoder.1"),
        ({"pretrained_scale": 0.0}, "pretrained_scale"),
        ({"pretrained_scale": -1e-3}, "pretrained_scale"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model(kwargs: dict, match: str) -> None:
    net = _Net()
    with pytest.raises(ValueError, match=match):
        to_bayesian(net, **kwargs)
    assert not any(isinstance(m, layers.BayesianLayer) for m in net.modules())


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (nn.LSTM(3, 4, proj_size=2), ValueError, "proj_size"),
        (nn.MultiheadAttention(4, 2, kdim=3, vdim=3), NotImplementedError, "kdim"),
        (nn.Embedding(5, 3, sparse=True), NotImplementedError, "sparse"),
    ],
    ids=["lstm_proj_size", "attention_kdim", "sparse_embedding"],
)
def test_a_configuration_the_bayesian_class_refuses_names_the_module(
    module: nn.Module, error: type, match: str
) -> None:
    """A supported type in a configuration its Bayesian class does not take: the error
    names the module's path and type and how to keep it, and the model is left as it
    was."""
    net = nn.Sequential(nn.Linear(3, 3), module)
    name = type(module).__name__
    with pytest.raises(error, match=rf"to_bayesian: '1' \({name}\) cannot become .*{match}.*"
                       r"exclude='1'"):  # fmt: skip
        to_bayesian(net)
    assert not any(isinstance(m, layers.BayesianLayer) for m in net.modules())
    assert type(to_bayesian(net, exclude="1")[0]) is layers.LinearReparameterization


def test_type_errors() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        to_bayesian(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="device"):
        to_bayesian(_mlp(), device="cpu")
    with pytest.raises(TypeError, match="pretrained_scale"):
        to_bayesian(_mlp(), pretrained_scale="small")  # type: ignore[arg-type]


def test_layer_kwargs_reach_every_layer() -> None:
    net = to_bayesian(_mlp(), bias_initializer="trainable_normal", weight_regularizer=None)
    for m in (net[0], net[2]):
        assert m.weight_regularizer is None and hasattr(m, "bias_rho")


def test_subclass_with_own_forward_and_lazy_modules() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    net = nn.Sequential(Scaled(3, 3), nn.Linear(3, 3))
    net, report = to_bayesian(net, return_report=True)
    assert type(net[0]) is Scaled and [s.name for s in report] == ["1"]
    with pytest.raises(ValueError, match="'0' selects no layer"):
        to_bayesian(nn.Sequential(Scaled(3, 3)), include="0")
    with pytest.raises(ValueError, match="lazy module"):
        to_bayesian(nn.Sequential(nn.LazyLinear(3)))


def test_fallback_rule_for_estimators_without_counterpart() -> None:
    net = nn.ModuleDict({"cell": nn.LSTMCell(3, 4), "fc": nn.Linear(4, 2)})
    net, report = to_bayesian(net, "local_reparameterization", return_report=True)
    assert isinstance(net["cell"], layers.LSTMCellReparameterization)
    assert isinstance(net["fc"], layers.LinearLocalReparameterization)
    assert [s.estimator for s in report] == ["reparameterization", "local_reparameterization"]


def test_missing_counterpart_is_skipped_or_raises_when_requested() -> None:
    removed = registry.unregister(nn.Linear, "reparameterization")  # flipout and local stay
    try:
        with pytest.warns(
            UserWarning, match=r"converted no layer; skipped: 0 \(Linear: no Bayesian class"
        ):
            net, report = to_bayesian(_mlp(), return_report=True)
        assert len(report) == 0 and type(net[0]) is nn.Linear
        assert [s.reason for s in report.skipped] == [
            "no Bayesian class registered for nn.Linear under 'reparameterization'"
        ] * 2
        with pytest.raises(ValueError, match=r"'2' \(Linear\) was requested.*registered"):
            to_bayesian(_mlp(), include="2")
    finally:
        registry.converts(nn.Linear, "reparameterization")(removed["reparameterization"])
    assert isinstance(to_bayesian(_mlp())[0], layers.LinearReparameterization)


def test_multihead_attention_internals_never_swapped_alone() -> None:
    net = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "fc": nn.Linear(8, 8)})
    net, report = to_bayesian(net, return_report=True)
    assert "attn.out_proj" not in [s.name for s in report]
    attn = net["attn"]
    if isinstance(attn, nn.MultiheadAttention):  # no Bayesian attention (yet): kept whole
        assert type(attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert [s.name for s in report.skipped] == ["attn"]
    else:
        assert type(attn).__name__ == "MultiheadAttentionReparameterization"
        assert [s.name for s in report] == ["attn", "fc"]


def test_pretrained_scale_sets_moped_stds() -> None:
    net = _mlp(torch.float64)
    with torch.no_grad():
        net[0].weight[0, 0] = 0.0
    weights = [net[0].weight.detach().clone(), net[2].weight.detach().clone()]
    net = to_bayesian(net, "flipout", pretrained_scale=0.1, bias_initializer="trainable_normal")
    for m, w in zip((net[0], net[2]), weights, strict=True):
        assert torch.equal(m.weight_loc, w)
        scale = F.softplus(m.weight_rho)
        expected = (0.1 * w.abs()).clamp_min(convert.MIN_SCALE)
        torch.testing.assert_close(scale, expected, rtol=1e-9, atol=0)
        assert torch.isfinite(m.weight_rho).all() and torch.allclose(
            F.softplus(m.bias_rho), 0.1 * m.bias_loc.abs(), rtol=1e-9, atol=1e-12
        )
    assert math.isclose(net[0].weight.stddev[0, 0].item(), convert.MIN_SCALE, rel_tol=1e-9)
    assert all(torch.isfinite(kl) for kl in bl.losses(net))


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def test_pretrained_digits_mlp_keeps_its_accuracy() -> None:
    """Must-show: MOPED conversion keeps the trained network's predictions.

    Under posterior means the converted model computes the same function, so
    the predictions (and accuracy) are identical. Sampled networks with
    ``pretrained_scale=1e-3`` perturb each weight by ~0.1 % of its size, so the
    accuracy of each of 20 samples stays within 2 points of the original.
    """
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = _digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(8):
        for batch in torch.split(torch.randperm(len(y_train)), 128):
            opt.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(x_test).argmax(-1)
    accuracy = (ref == y_test).float().mean().item()
    assert accuracy > 0.9

    model = to_bayesian(model, pretrained_scale=1e-3)
    assert all(isinstance(model[i], layers.LinearReparameterization) for i in (0, 2))
    with torch.no_grad():
        with bl.posterior_mean(model):
            pred = model(x_test).argmax(-1)
        assert torch.equal(pred, ref)
        assert (pred == y_test).float().mean().item() == accuracy
        for _ in range(20):
            sampled = (model(x_test).argmax(-1) == y_test).float().mean().item()
            assert abs(sampled - accuracy) <= 0.02


_CONVS = [
    (nn.Conv1d(3, 4, 3, padding=1, bias=False), (2, 3, 9)),
    (nn.Conv2d(4, 6, 3, stride=2, padding="valid", groups=2), (2, 4, 9, 9)),
    (nn.Conv2d(3, 4, 3, padding="same", dilation=2, padding_mode="reflect"), (2, 3, 8, 8)),
    (nn.Conv3d(2, 3, 2), (2, 2, 4, 4, 4)),
    (nn.ConvTranspose1d(3, 4, 3, stride=2, output_padding=1), (2, 3, 5)),
    (nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2, dilation=2), (2, 4, 5, 5)),
    (nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False), (2, 2, 3, 3, 3)),
]


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout", "local_reparameterization"])
@pytest.mark.parametrize(("conv", "shape"), _CONVS, ids=lambda c: type(c).__name__)
def test_conv_conversion_reproduces_outputs(conv: nn.Module, shape: tuple, estimator: str) -> None:
    local = estimator == "local_reparameterization" and type(conv) is nn.Conv2d
    suffix = _suffix(estimator if local else "reparameterization")
    if estimator == "flipout":
        suffix = "Flipout"
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(shape, dtype=torch.float64)
    ref = conv(x)
    new, report = to_bayesian(conv, estimator, pretrained_scale=1e-2, return_report=True)
    assert type(new).__name__ == type(conv).__name__ + suffix == report.swapped[0].target
    with bl.posterior_mean(new):
        torch.testing.assert_close(new(x), ref, rtol=0, atol=1e-12)
    assert new(x).shape == ref.shape


def _cells() -> list:
    return [nn.LSTMCell(3, 5), nn.GRUCell(3, 5), nn.LSTMCell(3, 5, bias=False)]


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
@pytest.mark.parametrize("cell", _cells(), ids=lambda c: type(c).__name__)
def test_recurrent_cell_conversion_reproduces_outputs(cell: nn.Module, estimator: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3)
    new = to_bayesian(nn.ModuleList([cell]), estimator)[0]
    assert type(new).__name__ == type(cell).__name__ + _suffix(estimator)

    def run(c: nn.Module) -> torch.Tensor:
        state = None
        for x_t in x:
            state = c(x_t, state)
        return state[0] if isinstance(state, tuple) else state

    with torch.no_grad(), bl.posterior_mean(new):
        torch.testing.assert_close(run(new), run(cell), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
def test_lstm_conversion_reproduces_outputs(estimator: str) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 7, 3)
    ref, _ = lstm(x)
    net = to_bayesian(nn.Sequential(lstm), estimator)
    assert type(net[0]).__name__ == "LSTM" + _suffix(estimator)
    with torch.no_grad(), bl.posterior_mean(net):
        torch.testing.assert_close(net[0](x)[0], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
def test_attention_and_embedding_conversion(estimator: str) -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 8, padding_idx=0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True).eval()
    tokens = torch.randint(0, 10, (2, 5))
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.no_grad():
        h = emb(tokens)
        ref = attn(h, h, h, attn_mask=mask, need_weights=False)[0]
    net = nn.ModuleDict({"emb": emb, "attn": attn})
    net, report = to_bayesian(net, estimator, pretrained_scale=1e-3, return_report=True)
    # Embedding has no Flipout counterpart: it falls back to reparameterization.
    assert [(s.target, s.estimator) for s in report] == [
        ("EmbeddingReparameterization", "reparameterization"),
        ("MultiheadAttention" + _suffix(estimator), estimator),
    ]
    out_proj = net["attn"].out_proj  # a nested Bayesian layer also gets MOPED scales
    torch.testing.assert_close(
        F.softplus(out_proj.weight_rho), 1e-3 * attn.out_proj.weight.abs(), rtol=1e-4, atol=0
    )
    assert not net["attn"].training
    with torch.no_grad(), bl.posterior_mean(net):
        h2 = net["emb"](tokens)
        torch.testing.assert_close(h2, h)
        out = net["attn"](h2, h2, h2, attn_mask=mask, need_weights=False)[0]
        torch.testing.assert_close(out, ref)


def test_state_dict_round_trips_with_weights_only() -> None:
    net = to_bayesian(_Net(), "flipout", pretrained_scale=1e-2, include="encoder")
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)
    other = to_bayesian(_Net(), "flipout", include="encoder")
    other.load_state_dict(state)
    x = torch.randn(4, 4)
    with bl.posterior_mean(net), bl.posterior_mean(other):
        assert torch.equal(net(x), other(x))
    assert math.isclose(sum(bl.losses(net)).item(), sum(bl.losses(other)).item())


@pytest.mark.parametrize(
    "device",
    [
        "meta",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
        ),
    ],
)
def test_follows_the_device(device: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(36, 2)).to(device)
    net = to_bayesian(net, "flipout", pretrained_scale=1e-3)
    assert all(p.device.type == device for p in net.parameters())
    assert net(torch.zeros(2, 3, 5, 5, device=device)).shape == (2, 2)


def test_report_type() -> None:
    _, report = to_bayesian(_mlp(), return_report=True)
    assert isinstance(report, ConversionReport) and len(report) == 2


# ------------------------------------------------------- unsupported layers, estimators
class _WithGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)
        self.head = nn.Sequential(nn.LayerNorm(4), nn.ReLU())


def test_unsupported_layers_are_reported_with_their_paths_and_nothing_converted_warns() -> None:
    net = _WithGRU()
    with pytest.warns(UserWarning, match=r"to_bayesian converted no layer.*rnn \(GRU: no Bayes"):
        out, report = to_bayesian(net, return_report=True)
    assert out is net and isinstance(net.rnn, nn.GRU)
    assert [(u.name, u.type) for u in report.unsupported] == [
        ("rnn", "GRU"),
        ("head.0", "LayerNorm"),
    ]
    text = str(report)
    assert text.splitlines()[0] == "0 layer(s) swapped, 0 skipped, 2 unsupported left as they are"
    assert "rnn: GRU left as it is (no Bayesian counterpart)" in text


def test_unsupported_layers_listed_beside_converted_ones_without_a_warning() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.GRUCell(4, 4), nn.BatchNorm1d(4))
    net, report = to_bayesian(net, return_report=True)  # filterwarnings=error: no warning
    assert [s.name for s in report.swapped] == ["0", "1"]
    assert [(u.name, u.type) for u in report.unsupported] == [("2", "BatchNorm1d")]
    assert isinstance(net[1], layers.GRUCellReparameterization)


def test_subclass_with_its_own_forward_is_reported_unsupported() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    net = nn.Sequential(Scaled(3, 3), nn.Linear(3, 2))
    _, report = to_bayesian(net, return_report=True)
    assert [(u.name, u.type) for u in report.unsupported] == [("0", "Scaled")]
    assert "own forward" in report.unsupported[0].reason


def test_converting_a_bayesian_model_again_does_not_warn() -> None:
    net = to_bayesian(_mlp())
    again, report = to_bayesian(net, return_report=True)  # filterwarnings=error
    assert again is net and len(report) == 0


def test_estimator_names_are_one_canonical_tuple() -> None:
    assert convert.ESTIMATORS == (
        "reparameterization",
        "flipout",
        "local_reparameterization",
        "variational_dropout",
    )
    assert bl.convert.ESTIMATORS is convert.ESTIMATORS
    for name in convert.ESTIMATORS:
        assert convert.canonical_estimator(name) == name


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Reparameterization", "reparameterization"),
        ("Flipout", "flipout"),
        ("LocalReparameterization", "local_reparameterization"),
        ("local", "local_reparameterization"),
    ],
)
def test_old_estimator_spellings_work_with_a_deprecation_warning(
    spelling: str, canonical: str
) -> None:
    with pytest.warns(DeprecationWarning, match=rf"'{spelling}'.*'{canonical}'"):
        net, report = to_bayesian(_mlp(), spelling, return_report=True)
    assert {s.estimator for s in report} == {canonical}
    assert all(type(net[i]).__name__.startswith("Linear") for i in (0, 2))


@pytest.mark.parametrize("spelling", ["flip_out", "lrt", "", 3])
def test_unknown_estimator_names_the_canonical_ones(spelling: object) -> None:
    error = TypeError if not isinstance(spelling, str) else ValueError
    with pytest.raises(error, match=r"to_bayesian expected `estimator`.*'flipout'"):
        to_bayesian(_mlp(), spelling)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- repr
def test_repr_reflects_the_pretrained_scale_set_by_conversion() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.MultiheadAttention(4, 2), nn.Conv1d(2, 2, 1))
    net = to_bayesian(net, "flipout", pretrained_scale=0.05, include=["0", "1"])
    text = repr(net)
    # every converted normal posterior (attention's out_proj included) says where its
    # scale came from, and none still shows the constructor's default scale_init
    assert text.count("pretrained_scale=0.05") == 3, text
    assert "scale_init=0.01" not in text
    layer = net[0]
    assert "pretrained_scale=0.05" in repr(layer.weight_initializer)
    torch.testing.assert_close(
        layer.weight.distribution.stddev, (0.05 * layer.weight_loc.abs()).clamp_min(1e-12)
    )
    # the converted model still round-trips and copies
    clone = copy.deepcopy(net)
    assert repr(clone) == text
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = to_bayesian(
        nn.Sequential(nn.Linear(3, 4), nn.MultiheadAttention(4, 2), nn.Conv1d(2, 2, 1)),
        "flipout",
        pretrained_scale=0.05,
        include=["0", "1"],
    )
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh[0].weight_rho, layer.weight_rho)


def test_repr_without_pretrained_scale_keeps_the_initializer() -> None:
    net = to_bayesian(_mlp())
    assert "TrainableNormal(loc_std=None, scale_init=0.01)" in repr(net[0])
    assert "pretrained_scale" not in repr(net)


def test_a_parametrized_layer_is_refused_naming_its_parametrizations() -> None:
    """A layer under a parametrization (spectral or weight norm) would lose it in its
    Bayesian counterpart, silently (an SNGP network's distance awareness, say): the
    conversion names the layer and the parametrization and changes nothing; ``exclude``
    keeps the layer as it is."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.utils.parametrizations.spectral_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2)
    )
    with pytest.raises(ValueError, match=r"'0' \(ParametrizedLinear\) holds .*_SpectralNorm"):
        bl.to_bayesian(net, "flipout")
    assert isinstance(net[2], nn.Linear) and not isinstance(net[2], bl.layers.BayesianLayer)
    net = bl.to_bayesian(net, "flipout", exclude="0")
    assert nn.utils.parametrize.is_parametrized(net[0])
    assert isinstance(net[2], bl.layers.LinearFlipout)
