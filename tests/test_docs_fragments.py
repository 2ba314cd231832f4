"""The short ```python fragments of docs/training.md, docs/uci.md and docs/images.md run
as written, each in a namespace that a small, explicit prelude prepares (the names the
page leaves to the reader: a tiny Bayesian model, ``nll_mean``, a DataLoader, ...), and
do what the page says (checked against independent computations).

The distributed fragments run in one process in a gloo world of 1 (DDP, FSDP2, a device
mesh, a distributed checkpoint). The tensor-parallel one asks for a CUDA mesh; its fence
is ```py title="... (run under torchrun; not run here)"``` and
``test_every_fence_is_run_or_marked`` keeps every other ```python block of the three
pages run by a test (this file, test_docs_training.py or test_docs_prediction.py)."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import re
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_util import free_port, join_gloo
from docs_util import DOCS, python_blocks
from test_docs_prediction import SECTION as PREDICTION_SECTION
from test_docs_training import SECTION as UNCERTAINTY_SECTION
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bayesian_layers as bl
from bayesian_layers import layers

TRAINING, UCI, IMAGES = DOCS / "training.md", DOCS / "uci.md", DOCS / "images.md"
OBJECTIVE = "The objective, once"
COMPILING = "Compiling"
DISTRIBUTED = "Distributed training"
UCI_METHODS = "The methods: a few lines of the public API each"
IMAGES_METHODS = "Methods (registry `images.METHODS`)"

#: (page, section) -> number of ```python blocks this file runs there
RUN_HERE = {
    (TRAINING, OBJECTIVE): 1,
    (TRAINING, COMPILING): 1,
    (TRAINING, DISTRIBUTED): 6,
    (UCI, UCI_METHODS): 2,
    (IMAGES, IMAGES_METHODS): 1,
}
#: sections whose blocks other test files run
RUN_ELSEWHERE = {(TRAINING, UNCERTAINTY_SECTION), (TRAINING, PREDICTION_SECTION)}
N_TRAIN = 96


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as under `make test`'s xdist workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Assignments(dict):
    """A locals mapping that keeps every value a block assigns to each name, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}

    def __setitem__(self, name: str, value: Any) -> None:
        self.history.setdefault(name, []).append(value)
        super().__setitem__(name, value)


def _run(code: str, where: str, namespace: dict[str, Any]) -> _Assignments:
    """Execute ``code`` with the prelude ``namespace`` as globals; the names it assigns
    (all values, in order) come back and are added to ``namespace``."""
    assigned = _Assignments()
    exec(compile(code, where, "exec"), namespace, assigned)
    namespace.update(assigned)
    return assigned


def _kl_standard_normal(model: nn.Module) -> torch.Tensor:
    """Closed-form KL(N(m, s²) || N(0, 1)) of every random weight/bias of the Bayesian
    layers of ``model``, summed: Σ (s² + m² - 1)/2 - log s."""
    total = torch.zeros(())
    for module in model.modules():
        if isinstance(module, layers.BayesianLayer):
            for name in ("weight", "bias"):
                loc, scale = module.posterior_loc_scale(name)
                if scale is not None:
                    total = total + ((scale**2 + loc**2 - 1) / 2 - scale.log()).sum()
    return total


def _prior() -> dict[str, Any]:
    return dict(
        weight_initializer=bl.initializers.TrainableNormal(scale_init=0.05),
        weight_regularizer=bl.regularizers.NormalKLDivergence(0.0, 1.0),
    )


def _classifier() -> nn.Sequential:
    """4 -> 8 (reparameterization) -> ReLU -> 3 (Flipout), N(0, 1) priors."""
    torch.manual_seed(0)
    return nn.Sequential(
        layers.LinearReparameterization(4, 8, **_prior()),
        nn.ReLU(),
        layers.LinearFlipout(8, 3, **_prior()),
    )


def _data(n: int = N_TRAIN) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- docs/training.md


def test_objective_is_nll_plus_kl_over_n() -> None:
    (code,) = python_blocks(TRAINING, OBJECTIVE)
    model = _classifier()
    x, y = _data()
    train_loader = DataLoader(TensorDataset(x, y), batch_size=32)
    torch.manual_seed(2)
    nll_mean = F.cross_entropy(model(x[:32]), y[:32])
    namespace = dict(
        bl=bl, model=model, nll_mean=nll_mean, num_train_examples=N_TRAIN, train_loader=train_loader
    )
    losses = _run(code, f"{TRAINING}:{OBJECTIVE}", namespace).history["loss"]
    want = nll_mean + _kl_standard_normal(model) / N_TRAIN
    assert len(losses) == 2  # the explicit line, then bl.elbo_loss with N from the loader
    for loss in losses:
        torch.testing.assert_close(loss, want)
    assert losses[1].requires_grad


class _TorchAotEager:
    """``torch`` for the Compiling block: ``torch.compile`` with the ``aot_eager``
    backend and ``fullgraph=True`` (the same Dynamo capture and AOTAutograd as inductor,
    without its code generation, a 20 s cold start here; a graph break raises)."""

    compile = staticmethod(partial(torch.compile, backend="aot_eager", fullgraph=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@pytest.mark.usefixtures("checks_off_as_dynamo_sets_them")
def test_compiled_loss_equals_eager() -> None:
    """The compiled closure (forward, NLL and KL in one graph) equals eager mode."""
    (code,) = python_blocks(TRAINING, COMPILING)
    model = _classifier()
    torch._dynamo.reset()
    namespace = dict(torch=_TorchAotEager(), F=F, bl=bl, model=model, num_train_examples=N_TRAIN)
    loss_fn = _run(code, f"{TRAINING}:{COMPILING}", namespace)["loss_fn"]
    x, y = _data(16)
    with bl.posterior_mean(model):
        compiled = loss_fn(x, y)
        eager = F.cross_entropy(model(x), y) + _kl_standard_normal(model) / N_TRAIN
    torch.testing.assert_close(compiled, eager)
    compiled.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch._dynamo.reset()


def _distributed_blocks() -> dict[str, str]:
    """The runnable blocks of "Distributed training", by a line that identifies each."""
    blocks = python_blocks(TRAINING, DISTRIBUTED)
    keys = {
        "loss": "loss = bl.distributed.elbo_loss(nll_mean, model, num_train_examples)",
        "seed": 'bl.distributed.manual_seed(0, mesh=mesh["dp"])',
        "ddp": "ddp = DDP(model)",
        "accumulation": "accumulation_steps=k",
        "fsdp": "fully_shard(net)",
        "dcp": "dcp.save(",
    }
    found = {name: [b for b in blocks if key in b] for name, key in keys.items()}
    assert all(len(v) == 1 for v in found.values()), found
    assert len(blocks) == len(keys), "a new block in 'Distributed training': run it here"
    return {name: v[0] for name, v in found.items()}


@pytest.fixture(scope="module")
def gloo_world_of_one() -> Iterator[None]:
    join_gloo(rank=0, port=free_port(), world=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def dblocks(gloo_world_of_one: None) -> dict[str, str]:
    return _distributed_blocks()


def test_distributed_loss(dblocks: dict[str, str]) -> None:
    model = _classifier()
    x, y = _data(32)
    nll_mean = F.cross_entropy(model(x), y)
    namespace = dict(bl=bl, model=model, nll_mean=nll_mean, num_train_examples=N_TRAIN)
    loss = _run(dblocks["loss"], "distributed loss", namespace)["loss"]
    torch.testing.assert_close(loss, nll_mean + _kl_standard_normal(model) / N_TRAIN)


def test_distributed_seed_from_the_dp_mesh(dblocks: dict[str, str]) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "tp"))
    _run(dblocks["seed"], "distributed seed", dict(bl=bl, mesh=mesh))
    drawn = torch.randn(5)
    torch.manual_seed(bl.distributed.manual_seed(0, rank=0))  # index 0 in the dp mesh
    torch.testing.assert_close(drawn, torch.randn(5), rtol=0, atol=0)
    bl.distributed.manual_seed(0, rank=1)
    assert not torch.equal(drawn, torch.randn(5))


def _sgd_reference(model: nn.Module, batches: list, lr: float) -> None:
    """Plain single-process steps on nll + KL / N, the KL from the closed form."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) + _kl_standard_normal(model) / N_TRAIN
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_ddp_steps_equal_one_process(dblocks: dict[str, str]) -> None:
    model = _classifier()
    reference = copy.deepcopy(model)
    x, y = _data(48)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    namespace = dict(
        bl=bl,
        F=F,
        model=model,
        loader=loader,
        num_train=N_TRAIN,
        opt=torch.optim.SGD(model.parameters(), lr=0.5),
    )
    before = _params(model)
    _run(dblocks["ddp"], "DDP", namespace)
    bl.distributed.manual_seed(0)
    _sgd_reference(reference, list(loader), lr=0.5)
    after = _params(model)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    torch.testing.assert_close(after, _params(reference))


def test_gradient_accumulation_equals_one_big_batch(dblocks: dict[str, str]) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _classifier()
    reference = copy.deepcopy(model)
    x, y = _data(48)
    k = 3
    micro_batches = list(zip(x.chunk(k), y.chunk(k), strict=True))
    namespace = dict(
        bl=bl,
        F=F,
        contextlib=contextlib,
        model=model,
        ddp=DDP(model),
        k=k,
        micro_batches=micro_batches,
        num_train=N_TRAIN,
        opt=torch.optim.SGD(model.parameters(), lr=0.5),
    )
    with bl.posterior_mean(model):  # no noise: the micro-batches' sum is the big batch's
        _run(dblocks["accumulation"], "gradient accumulation", namespace)
    with bl.posterior_mean(reference):
        _sgd_reference(reference, [(x, y)], lr=0.5)
    torch.testing.assert_close(_params(model), _params(reference))


class _Blocks(nn.Module):
    """Two Bayesian blocks (the FSDP units) and a Bayesian head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(
            [nn.Sequential(layers.LinearFlipout(4, 8, **_prior()), nn.ReLU()) for _ in range(2)]
        )
        self.blocks[1][0] = layers.LinearFlipout(8, 8, **_prior())
        self.head = layers.LinearReparameterization(8, 3, **_prior())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _fsdp_namespace() -> tuple[dict[str, Any], nn.Module]:
    model = _Blocks()
    reference = copy.deepcopy(model)
    x, y = _data(16)
    return dict(bl=bl, F=F, torch=torch, model=model, x=x, y=y, num_train=N_TRAIN), reference


def test_fsdp2_loss_equals_one_process(dblocks: dict[str, str]) -> None:
    from torch.distributed.tensor import DTensor

    namespace, reference = _fsdp_namespace()
    assigned = _run(dblocks["fsdp"], "FSDP2", namespace)
    # the blocks' units are resharded after forward (over the 1 rank)
    assert isinstance(namespace["model"].blocks[0][0].weight_loc, DTensor)
    bl.distributed.manual_seed(0)
    x, y = namespace["x"], namespace["y"]
    kl = _kl_standard_normal(reference)
    torch.testing.assert_close(assigned["kl"], kl)
    want = F.cross_entropy(reference(x), y) + kl / N_TRAIN
    torch.testing.assert_close(assigned["loss"], want)
    assigned["loss"].backward()
    assert all(p.grad is not None for p in namespace["net"].parameters())


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def test_distributed_checkpoint_restores_the_sharded_net(
    dblocks: dict[str, str], tmp_path: Path
) -> None:
    from torch.distributed.fsdp import fully_shard

    namespace, _ = _fsdp_namespace()
    net = bl.distributed.WithKL(namespace["model"])
    for block in namespace["model"].blocks:
        fully_shard(block)
    fully_shard(net)
    saved = {k: _full(v).clone() for k, v in net.state_dict().items()}
    _run(dblocks["dcp"], "dcp", dict(net=net, path=str(tmp_path / "ckpt")))
    with torch.no_grad():  # spoil the weights, then load what the block wrote
        for p in net.parameters():
            p.add_(1.0)
    state = net.state_dict()
    _run(
        "dcp.load(state, checkpoint_id=path)\nnet.load_state_dict(state)",
        "reload",
        dict(
            namespace,
            dcp=sys.modules["torch.distributed.checkpoint"],
            net=net,
            state=state,
            path=str(tmp_path / "ckpt"),
        ),
    )
    restored = {k: _full(v) for k, v in net.state_dict().items()}
    assert restored.keys() == saved.keys() and not any(k.startswith("model.") for k in saved)
    torch.testing.assert_close(restored, saved, rtol=0, atol=0)


# ---------------------------------------------------------------- docs/uci.md


def _regression(n: int, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g)
    return x, x @ torch.tensor([[1.0], [-0.5], [0.25]]) + 0.1 * torch.randn(n, 1, generator=g)


def test_uci_vi_block_builds_and_predicts_as_stated() -> None:
    code = python_blocks(UCI, UCI_METHODS)[0]
    x, y = _regression(64)
    x_test, _ = _regression(5)
    namespace = dict(bl=bl, nn=nn, layers=layers, d=3, x=x, y=y, n_train=64, x_test=x_test)
    torch.manual_seed(4)
    _run(code, f"{UCI}:{UCI_METHODS}:0", namespace)
    vi = namespace["vi"]
    assert [type(m) for m in vi] == [
        layers.LinearFlipout,
        nn.ReLU,
        layers.LinearFlipout,
        layers.Normal,
    ]
    for layer in (vi[0], vi[2]):
        init, reg = layer.weight_initializer, layer.weight_regularizer
        assert isinstance(init, bl.initializers.TrainableNormal) and init.scale_init == 1e-3
        assert isinstance(reg, bl.regularizers.NormalKLDivergence)
        assert float(reg.prior_loc) == 0.0 and float(reg.prior_scale) == 1.0
        torch.testing.assert_close(
            layer.posterior_loc_scale("weight")[1], torch.full_like(layer.weight_loc, 1e-3)
        )
    # the loss: the same draw's NLL + the closed-form KL / n_train (the same seed, and the
    # same random numbers spent on building a model of the same shape first)
    torch.manual_seed(4)
    post = dict(weight_initializer=bl.initializers.TrainableNormal(scale_init=1e-3))
    nn.Sequential(layers.LinearFlipout(3, 50, **post), layers.LinearFlipout(50, 1, **post))
    nll = -vi(x).distribution.log_prob(y).mean()
    torch.testing.assert_close(namespace["loss"], nll + _kl_standard_normal(vi) / 64)
    # the predictive: 100 function samples of the 5 test points, which differ
    pred = namespace["pred"]
    assert pred.batch_shape == (500,) and pred.event_shape == (1,)
    means = pred.mean.reshape(100, 5)
    assert (means.std(0) > 0).all()


def test_uci_laplace_and_ivon_block() -> None:
    code = python_blocks(UCI, UCI_METHODS)[1]
    x, y = _regression(64)
    x_test, _ = _regression(7)
    torch.manual_seed(5)
    map_net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1), layers.Normal())
    net = bl.to_bayesian(
        nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), "reparameterization"
    )
    sigma = 0.2
    namespace = {
        "bl": bl,
        "map_net": map_net,
        "batches": [(x[:32], y[:32]), (x[32:], y[32:])],
        "σ": sigma,
        "x_test": x_test,
        "Normal": torch.distributions.Normal,
        "sqrt": torch.sqrt,
        "net": net,
        "N": 64,
        "x": x,
        "y": y,
        "nll": lambda out, target: F.gaussian_nll_loss(out, target, torch.ones_like(out)),
    }
    _run(code, f"{UCI}:{UCI_METHODS}:1", namespace)
    # Laplace: one Gaussian per test point, the GLM variance plus the noise
    mean, cov, pred = namespace["mean"], namespace["cov"], namespace["pred"]
    assert mean.shape == (7, 1) and cov.shape == (7, 1, 1) and pred.batch_shape == (7, 1)
    assert (cov > 0).all()
    torch.testing.assert_close(pred.variance, cov[..., 0] + sigma**2)
    # IVON: the layers hold N(m, 1 / (N (h + δ))) with the optimiser's m and h
    ivon = namespace["ivon"]
    bayesian = [m for m in net.modules() if isinstance(m, layers.BayesianLayer)]
    assert bayesian
    for layer in bayesian:
        for name in ("weight", "bias"):
            loc, scale = layer.posterior_loc_scale(name)
            if scale is None:
                continue
            hess = ivon.state[getattr(layer, f"{name}_loc")]["hess"]
            assert not torch.allclose(hess, torch.full_like(hess, 10.0))  # one step moved h
            torch.testing.assert_close(scale, 1 / torch.sqrt(64 * (hess + 1 / 64)))


# ---------------------------------------------------------------- docs/images.md


def _images_module() -> Any:
    bench = DOCS.parent / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # images.py imports image_data as a sibling
    name = "images_docs_fragments"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, bench / "images.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_images_vi_flipout_entry_builds_flipout_lenet() -> None:
    (code,) = python_blocks(IMAGES, IMAGES_METHODS)
    images = _images_module()
    registry: dict[str, Any] = {}
    namespace = dict(METHODS=registry, Method=images.Method, _hand_built=images._hand_built)
    _run(code, f"{IMAGES}:{IMAGES_METHODS}", namespace)
    entry, registered = registry["vi_flipout"], images.METHODS["vi_flipout"]
    assert (entry.epochs, entry.num_samples, entry.options) == (10, 10, registered.options)
    assert entry.options == {"prior_scale": 1.0, "scale_init": 1e-2}
    torch.manual_seed(0)
    model = entry.build(prior_scale=0.5, scale_init=0.02)
    bayesian = [m for m in model.modules() if isinstance(m, layers.BayesianLayer)]
    assert [type(m).__name__ for m in bayesian] == ["Conv2dFlipout"] * 3 + ["LinearFlipout"] * 2
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    for layer in bayesian:
        init, reg = layer.weight_initializer, layer.weight_regularizer
        assert isinstance(init, bl.initializers.TrainableHeNormal) and init.scale_init == 0.02
        assert isinstance(reg, bl.regularizers.NormalKLDivergence)
        assert float(reg.prior_scale) == 0.5
        assert math.isclose(
            float(layer.posterior_loc_scale("weight")[1].detach().mean()), 0.02, rel_tol=1e-4
        )
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- every fence


def _fences(page: Path) -> list[tuple[str, str, str]]:
    """(section, language, rest of the opening line) of every fenced block of ``page``."""
    out, section, inside = [], "", False
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("```"):
            if not inside:
                lang = re.match(r"```(\w*)(.*)", line)
                out.append((section, lang.group(1), lang.group(2).strip()))
            inside = not inside
    return out


@pytest.mark.parametrize("page", [TRAINING, UCI, IMAGES], ids=lambda p: p.name)
def test_every_fence_is_run_or_marked(page: Path) -> None:
    """Every ```python block is run by a test; Python shown but not run is a ```py block
    whose title says so; a new unmarked block fails here."""
    counts: dict[str, int] = {}
    for section, lang, rest in _fences(page):
        if lang == "python":
            assert (page, section) in RUN_HERE.keys() | RUN_ELSEWHERE, (
                f"{page.name}, '{section}': a ```python block no test runs; run it in "
                'tests/test_docs_fragments.py or mark it ```py title="... (not run here)"'
            )
            counts[section] = counts.get(section, 0) + 1
        elif lang in ("py", "python3", "pycon", "py3"):
            assert lang == "py" and re.fullmatch(r'title=".*\(.*not run here\)"', rest), (
                page.name,
                section,
                lang,
                rest,
            )
    ran = {s: n for (p, s), n in RUN_HERE.items() if p == page}
    assert {s: counts.get(s, 0) for s in ran} == ran
