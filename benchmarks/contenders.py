"""The contenders of benchmarks/linear_step.py: nn.Linear, our estimators and the peers.

Each builds the same MLP 784-512-512-10 and one training step with its library's own
KL mechanism; see benchmarks/README.md for each peer's settings.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_TRAIN = 60_000  # N in the ELBO: loss = nll_mean + KL / N
SIZES = (784, 512, 512, 10)
NUM_CLASSES = SIZES[-1]
ALLOCATOR_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Which of our estimators each peer contender is the counterpart of.
OURS = {
    "reparameterization": "ours: LinearReparameterization",
    "flipout": "ours: LinearFlipout",
    "local_reparameterization": "ours: LinearLocalReparameterization",
}


# --------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One model + optimizer + the closure that runs one full training step."""

    name: str
    estimator: str | None  # which of OURS it is compared with (None for nn.Linear)
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    model: nn.Module
    notes: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)  # batch -> per-repeat ms


def mlp(make_linear: Callable[[int, int], nn.Module]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        mods.append(make_linear(fan_in, fan_out))
        if i < len(SIZES) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _adam_step(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a loss closure into a full step with the same Adam (default settings) for all."""
    opt = torch.optim.Adam(model.parameters())

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        return loss

    return step


def make_plain() -> Contender:
    model = mlp(nn.Linear)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    return Contender("nn.Linear", None, _adam_step(model, loss_fn), model, "deterministic")


def make_ours(cls_name: str, estimator: str) -> Contender:
    import bayesian_layers as bl
    from bayesian_layers import layers

    cls = getattr(layers, cls_name)
    model = mlp(lambda i, o: cls(i, o))

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nll = F.cross_entropy(model(x), y)
        return nll + sum(bl.losses(model)) / NUM_TRAIN

    return Contender(
        OURS[estimator],
        estimator,
        _adam_step(model, loss_fn),
        model,
        "defaults: N(0,1) prior, closed-form KL via bl.losses(model)",
    )


class _BayesianTorchMLP(nn.Module):
    """bayesian-torch's own pattern: each layer returns (out, kl); the model sums the kls."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(cls(i, o) for i, o in zip(SIZES[:-1], SIZES[1:], strict=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl_sum = x.new_zeros(())
        for i, fc in enumerate(self.fcs):
            x, kl = fc(x)
            kl_sum = kl_sum + kl
            if i < len(self.fcs) - 1:
                x = F.relu(x)
        return x, kl_sum


def make_bayesian_torch(cls_name: str, estimator: str) -> Contender:
    from bayesian_torch.layers import LinearFlipout, LinearReparameterization

    cls = {"LinearReparameterization": LinearReparameterization, "LinearFlipout": LinearFlipout}[
        cls_name
    ]
    model = _BayesianTorchMLP(cls)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out, kl = model(x)
        return F.cross_entropy(out, y) + kl / NUM_TRAIN

    return Contender(
        f"bayesian-torch: {cls_name}",
        estimator,
        _adam_step(model, loss_fn),
        model,
        "defaults: N(0,1) prior, rho_init=-3; KL returned by forward (per-layer mean)",
    )


def make_torchbnn() -> Contender:
    import torchbnn

    prior_sigma = 0.1  # the value in torchbnn's README/demos; cost does not depend on it
    model = mlp(lambda i, o: torchbnn.BayesLinear(0.0, prior_sigma, i, o))
    kl_loss = torchbnn.BKLLoss(reduction="sum", last_layer_only=False)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + kl_loss(model) / NUM_TRAIN

    return Contender(
        "torchbnn: BayesLinear",
        "reparameterization",
        _adam_step(model, loss_fn),
        model,
        f"prior N(0,{prior_sigma}) (README value); KL via BKLLoss(reduction='sum')",
    )


def make_blitz() -> Contender:
    from blitz.modules import BayesianLinear
    from blitz.utils import variational_estimator

    @variational_estimator
    class BlitzMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(BayesianLinear)  # library defaults for prior and init

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = BlitzMLP()

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + model.nn_kl_divergence() / NUM_TRAIN

    return Contender(
        "blitz: BayesianLinear",
        "reparameterization",
        _adam_step(model, loss_fn),
        model,
        "defaults: prior pi=1, sigma1=0.1, sigma2=0.4; Monte Carlo KL via nn_kl_divergence()",
    )


# name, factory, pip distribution (None: ours/torch)
FACTORIES: list[tuple[str, Callable[[], Contender], str | None]] = [
    ("nn.Linear", make_plain, None),
    (
        OURS["reparameterization"],
        lambda: make_ours("LinearReparameterization", "reparameterization"),
        None,
    ),
    (OURS["flipout"], lambda: make_ours("LinearFlipout", "flipout"), None),
    (
        OURS["local_reparameterization"],
        lambda: make_ours("LinearLocalReparameterization", "local_reparameterization"),
        None,
    ),
    (
        "bayesian-torch: LinearReparameterization",
        lambda: make_bayesian_torch("LinearReparameterization", "reparameterization"),
        "bayesian-torch",
    ),
    (
        "bayesian-torch: LinearFlipout",
        lambda: make_bayesian_torch("LinearFlipout", "flipout"),
        "bayesian-torch",
    ),
    ("torchbnn: BayesLinear", make_torchbnn, "torchbnn"),
    ("blitz: BayesianLinear", make_blitz, "blitz-bayesian-pytorch"),
]


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def short_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    return msg.splitlines()[0][:160] if msg else type(exc).__name__
