"""Deep ensembles: bayesian_layers.ensemble.Ensemble against its members run one by one.

References are independent: ``n`` plain modules built first and deep-copied into the
ensemble; every check compares the ensemble with those modules run on their own. The
looped path must match them exactly; the vmapped path to float64 rounding (batched
matrix products may sum in another order: differences ~1e-16, tolerance 1e-12).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bayesian_layers as bl
from bayesian_layers.ensemble import Ensemble

N = 3
TOL = {"rtol": 1e-12, "atol": 1e-12}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 4) -> (B, 3)
        return self.head(self.lstm(x)[0][:, -1])


INPUTS = {
    "mlp": (mlp, (5, 4)),
    "cnn": (cnn, (6, 1, 8, 8)),
    "lstm": (LSTMClassifier, (5, 7, 4)),
}


def references(make, n=N, seed=0):
    """n float64 modules with distinct initialisations, and a factory handing out copies."""
    torch.manual_seed(seed)
    refs = [make().double() for _ in range(n)]
    copies = iter([copy.deepcopy(r) for r in refs])
    return refs, lambda: next(copies)


def check(got, want, exact):
    if exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(INPUTS))
def test_member_outputs_and_buffers_equal_the_members_run_alone(name, train, vectorize):
    make, shape = INPUTS[name]
    refs, factory = references(make)
    ens = Ensemble(factory, N, vectorize=vectorize).train(train)
    for r in refs:
        r.train(train)
    x = torch.randn(*shape, dtype=torch.float64)
    for _ in range(2):  # the second call sees the running statistics the first updated
        out = ens(x)
        assert out.shape == (N, shape[0], 3)
        exact = ens.vectorized is False
        for i, r in enumerate(refs):
            check(out[i], r(x), exact)
    if name == "lstm":
        assert ens.vectorized is False  # aten::lstm has no batching rule: looped
    else:
        assert ens.vectorized is vectorize
    for i, r in enumerate(refs):
        for key, buf in r.named_buffers():  # BatchNorm running statistics, per member
            check(ens.members.get_buffer(key.replace(".", "__"))[i], buf, exact)
        member = ens.member(i)
        assert type(member) is type(r) and member.training == train
        for (k1, a), (k2, b) in zip(
            member.state_dict().items(), r.state_dict().items(), strict=True
        ):
            assert k1 == k2
            check(a, b, exact)


def test_failed_vmap_attempt_leaves_running_statistics_untouched():
    """A BatchNorm before an LSTM: the vmapped try updates the statistics, then fails."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(7)
            self.inner = LSTMClassifier()

        def forward(self, x):
            return self.inner(self.norm(x))

    refs, factory = references(Model)
    ens = Ensemble(factory, N)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    out = ens(x)
    assert ens.vectorized is False
    for i, r in enumerate(refs):
        assert torch.equal(out[i], r(x))
        assert torch.equal(ens.members.norm__running_mean[i], r.norm.running_mean)
        assert ens.members.norm__num_batches_tracked[i] == 1


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_adam_on_the_ensemble_equals_independent_adam_on_each_member(name):
    """loss = sum of the members' losses: each member gets its own gradient."""
    make, shape = INPUTS[name]
    refs, factory = references(make)
    ens = Ensemble(factory, N)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    ref_opts = [torch.optim.Adam(r.parameters(), lr=1e-2) for r in refs]
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(*shape, dtype=torch.float64)
        y = torch.randint(0, 3, (shape[0],))
        opt.zero_grad()
        sum(F.cross_entropy(o, y) for o in ens(x)).backward()
        opt.step()
        for r, o in zip(refs, ref_opts, strict=True):
            o.zero_grad()
            F.cross_entropy(r(x), y).backward()
            o.step()
    for i, r in enumerate(refs):
        for key, p in r.named_parameters():
            torch.testing.assert_close(ens.members.get_parameter(key.replace(".", "__"))[i], p)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_predict_samples_are_the_members_outputs(name):
    make, shape = INPUTS[name]
    refs, factory = references(make)
    ens = Ensemble(factory, N)  # training mode: predict must not touch the statistics
    x = torch.randn(*shape, dtype=torch.float64)
    before = {k: b.clone() for k, b in ens.state_dict().items()}
    with torch.no_grad():
        ens.eval()
        want = ens(x)  # (n, B, 3)
        ens.train()
        # the folded batch holds k B rows: products may round differently than at B rows
        pred = bl.predict(ens, x, num_samples=N)
        torch.testing.assert_close(pred.samples, want, **TOL)
        # K = 4n in chunks of 2n: within a chunk of k, sample j is member j * n // k
        pred = bl.predict(ens, x, num_samples=4 * N, chunk_size=2 * N)
        members = [j * N // (2 * N) for j in range(2 * N)] * 2
        torch.testing.assert_close(pred.samples, want[members], **TOL)
        torch.testing.assert_close(pred.mean, want.mean(0), **TOL)
    assert ens.training and all(m.training for m in ens.member(0).modules())
    for k, b in ens.state_dict().items():
        assert torch.equal(b, before[k]), k
    with pytest.raises(ValueError, match="multiple of 3"):
        bl.predict(ens, x, num_samples=4)


def test_state_dict_round_trip_through_a_weights_only_load():
    torch.manual_seed(0)
    ens = Ensemble(lambda: cnn().double(), N)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    ens(x)  # update the running statistics
    ens.eval()
    keys = ens.state_dict().keys()
    assert {"members.0__weight", "members.1__running_mean"} <= set(keys)
    assert ens.members.get_buffer("1__running_mean").shape == (N, 4)
    buffer = io.BytesIO()
    torch.save(ens.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = Ensemble(lambda: cnn().double(), N).eval()
    assert not torch.equal(fresh(x), ens(x))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(x), ens(x))


def test_dtype_and_mode_follow_the_ensemble():
    torch.manual_seed(0)
    ens = Ensemble(cnn, 2).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert ens(x).dtype == torch.float64 and ens.member(1).training
    ens.eval()
    assert not ens.member(0).training
    torch.testing.assert_close(ens(x[:1])[:, 0], ens(x)[:, 0], **TOL)  # eval: rows apart
    assert len(ens) == 2 and "n=2" in repr(ens)


def test_dropout_members_draw_independent_masks():
    torch.manual_seed(0)
    ens = Ensemble(lambda: nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5)), 2)
    # identical weights in both members: any difference comes from the masks
    with torch.no_grad():
        ens.members.get_parameter("0__weight")[1] = ens.members.get_parameter("0__weight")[0]
        ens.members.get_parameter("0__bias")[1] = ens.members.get_parameter("0__bias")[0]
    out = ens(torch.randn(3, 4))
    assert ens.vectorized and not torch.equal(out[0] == 0, out[1] == 0)


def bayesian_mlp() -> nn.Module:
    return nn.Sequential(bl.layers.LinearReparameterization(3, 2))


def test_bayesian_members_losses_are_every_members_kl():
    torch.manual_seed(0)
    ens = Ensemble(bayesian_mlp, N)
    terms = bl.losses(ens)
    assert len(terms) == N
    for i in range(N):
        (want,) = bl.losses(ens.member(i))
        torch.testing.assert_close(terms[i], want)
    assert len({t.item() for t in terms}) == N  # distinct members
    grads = torch.autograd.grad(sum(terms), ens.members.get_parameter("0__weight_loc"))
    assert grads[0].abs().sum(dim=(1, 2)).gt(0).all()  # reaches every member
    assert bl.losses(Ensemble(mlp, 2)) == []


def test_bayesian_members_draw_their_own_function_samples_in_predict():
    """Member i's K/n samples of a linear layer: mean F.linear(x, loc, b), variance
    F.linear(x², scale²) per output. n * B * 2 = 24 simultaneous mean checks, each at
    |z| < 5 (family-wise false alarm ~1e-5); the variance within 20% (S = 2000
    draws: the sample variance's relative standard error is sqrt(2 / S) = 3%)."""
    torch.manual_seed(0)
    ens = Ensemble(lambda: bayesian_mlp().double(), N)
    assert ens.vectorized is False
    x = torch.randn(4, 3, dtype=torch.float64)
    S = 2000
    samples = bl.predict(ens, x, num_samples=N * S, chunk_size=N * S).samples
    assert samples.shape == (N * S, 4, 2)
    for i in range(N):
        layer = ens.member(i)[0]
        loc, scale = layer.weight_loc, F.softplus(layer.weight_rho)
        mean = F.linear(x, loc, layer.bias)
        var = F.linear(x.square(), scale.square())
        block = samples[i * S : (i + 1) * S]  # (S, B, 2)
        z = (block.mean(0) - mean) / (var / S).sqrt()
        assert z.abs().max() < 5
        torch.testing.assert_close(block.var(0), var, rtol=0.2, atol=0)
    out = ens(x)  # a fresh draw per member per call
    assert out.shape == (N, 4, 2) and not torch.equal(out, ens(x))


def test_members_may_share_a_pretrained_backbone() -> None:
    """``make_model`` may reuse one (pretrained) backbone with a fresh head per call: each
    member starts from the backbone's values, and the members differ by their heads."""
    torch.manual_seed(0)
    backbone = nn.Linear(4, 8)
    ens = Ensemble(lambda: nn.Sequential(backbone, nn.ReLU(), nn.Linear(8, 2)), 3)
    for i in range(3):
        assert torch.equal(ens.member(i)[0].weight, backbone.weight)
    out = ens(torch.randn(5, 4))
    assert out.shape == (3, 5, 2) and not torch.equal(out[0], out[1])


def test_bad_inputs_name_the_ensemble_and_the_argument():
    with pytest.raises(ValueError, match=r"Ensemble expected `n` an int >= 1, got 0"):
        Ensemble(mlp, 0)
    with pytest.raises(ValueError, match="`n`"):
        Ensemble(mlp, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`n`"):
        Ensemble(mlp, True)
    with pytest.raises(TypeError, match="`make_model` a callable"):
        Ensemble(mlp(), 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`make_model` to return an nn.Module, got Tensor"):
        Ensemble(lambda: torch.zeros(2), 2)  # type: ignore[arg-type,return-value]
    sizes = iter([4, 5])
    with pytest.raises(ValueError, match=r"one structure.*call 1 gave"):
        Ensemble(lambda: nn.Linear(next(sizes), 2), 2)
    with pytest.raises(TypeError, match="`vectorize` a bool"):
        Ensemble(mlp, 2, vectorize="yes")  # type: ignore[arg-type]
    one = mlp()  # the same module at every call: n identical members
    with pytest.raises(ValueError, match=r"a fresh module at every call; call 1 returned .* 0"):
        Ensemble(lambda: one, 2)
    head = nn.Linear(4, 2)  # fresh modules sharing one parameter
    with pytest.raises(ValueError, match=r"a fresh module at every call; call 1"):
        Ensemble(lambda: nn.Sequential(nn.Tanh(), head), 2)
    ens = Ensemble(mlp, 2)
    with pytest.raises(IndexError, match=r"Ensemble.member expected `i`.*got 2"):
        ens.member(2)
    assert torch.equal(ens.member(-1)[0].weight, ens.members.get_parameter("0__weight")[1])
    with pytest.raises(RuntimeError):
        ens(torch.randn(5, 7))  # the member's own shape error, from the loop
    assert ens.vectorized is None  # a user error does not switch to the loop for good
    tuple_out = Ensemble(lambda: nn.LSTM(2, 3), 2, vectorize=False)
    with pytest.raises(TypeError, match="Ensemble expected its members to return a Tensor"):
        tuple_out(torch.randn(4, 2))
    assert math.isfinite(ens(torch.randn(5, 4)).sum().item())
