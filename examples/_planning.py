"""Pieces of the model-based agent in ``examples/bayesian_planning.py``.

A dynamics model, its ELBO training, the cross-entropy method (CEM), a planner
that runs CEM over the learned model, and open-loop rollouts. Kept apart from the
experiment script so the tests can check each piece on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

#: hidden-layer classes: ``"deterministic"`` is ``nn.Linear``, the others Bayesian
LAYERS: dict[str, type[nn.Module]] = {
    "deterministic": nn.Linear,
    "reparameterization": layers.LinearReparameterization,
    "flipout": layers.LinearFlipout,
}
#: how the planner treats the weight posterior (no effect on a deterministic model)
PLANNING_MODES = ("sample", "mean", "trajectory")


def is_bayesian(model: nn.Module) -> bool:
    return next(bl.bayesian_modules(model), None) is not None


def weight_kl(model: nn.Module) -> float:
    """``sum(bl.losses(model))`` in nats (0 for a deterministic model)."""
    terms = bl.losses(model)
    return float(sum(t.item() for t in terms)) if terms else 0.0


class DynamicsModel(nn.Module):
    """``(state, action) -> (next state, reward)``: an MLP on standardised data.

    The network predicts the standardised state change and reward; a learned
    per-output log-scale makes the likelihood a diagonal normal. Every dense
    layer is ``layer`` (``nn.Linear`` or a Bayesian drop-in), nothing else
    depends on the choice.

    Args:
        state_dim: size of a state observation.
        action_dim: size of an action.
        hidden: width of the two hidden layers.
        layer: the dense layer class, ``LAYERS[...]``.

    Shape:
        - state: ``(B, state_dim)``, action: ``(B, action_dim)``.
        - output: next state ``(B, state_dim)`` and reward ``(B,)``.

    Example:
        >>> import torch
        >>> model = DynamicsModel(3, 1, hidden=8, layer=LAYERS["flipout"])
        >>> s, r = model(torch.randn(5, 3), torch.randn(5, 1))
        >>> s.shape, r.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(
        self, state_dim: int, action_dim: int, hidden: int = 64, *, layer: type[nn.Module]
    ) -> None:
        super().__init__()
        d_in, d_out = state_dim + action_dim, state_dim + 1
        self.state_dim = state_dim
        self.net = nn.Sequential(
            layer(d_in, hidden), nn.SiLU(), layer(hidden, hidden), nn.SiLU(), layer(hidden, d_out)
        )
        self.log_scale = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("in_loc", torch.zeros(d_in))
        self.register_buffer("in_scale", torch.ones(d_in))
        self.register_buffer("out_loc", torch.zeros(d_out))
        self.register_buffer("out_scale", torch.ones(d_out))

    def fit_normalizer(self, inputs: Tensor, targets: Tensor) -> None:
        """Standardise with the data's means and standard deviations."""
        self.in_loc.copy_(inputs.mean(0))
        self.in_scale.copy_(inputs.std(0).clamp_min(1e-6))
        self.out_loc.copy_(targets.mean(0))
        self.out_scale.copy_(targets.std(0).clamp_min(1e-6))

    def raw(self, state: Tensor, action: Tensor) -> Tensor:
        """The standardised prediction of ``(state change, reward)``: ``(B, state_dim + 1)``."""
        x = torch.cat([state, action], -1)  # (B, d_in)
        return self.net((x - self.in_loc) / self.in_scale)

    def forward(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        out = self.raw(state, action) * self.out_scale + self.out_loc  # (B, state_dim + 1)
        return state + out[..., :-1], out[..., -1]

    def nll(self, state: Tensor, action: Tensor, next_state: Tensor, reward: Tensor) -> Tensor:
        """Mean negative log-likelihood per transition of the standardised targets."""
        target = torch.cat([next_state - state, reward[..., None]], -1)
        z = (target - self.out_loc) / self.out_scale
        dist = torch.distributions.Normal(self.raw(state, action), self.log_scale.exp())
        return -dist.log_prob(z).sum(-1).mean()


class Buffer:
    """Transitions ``(state, action, next_state, reward)`` as growing float tensors."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def add(self, state: Tensor, action: Tensor, next_state: Tensor, reward: Tensor) -> None:
        self.parts.append((state, action, next_state, reward))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s, a, n, r = zip(*self.parts, strict=True)
        return torch.cat(s), torch.cat(a), torch.cat(n), torch.cat(r)

    def __len__(self) -> int:
        return sum(p[0].shape[0] for p in self.parts)


def train_model(
    model: DynamicsModel,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int = 256,
) -> float:
    """``steps`` minibatch steps on the ELBO ``nll + sum(bl.losses(model)) / N``; last loss."""
    s, a, n, r = data
    model.fit_normalizer(torch.cat([s, a], -1), torch.cat([n - s, r[:, None]], -1))
    num = s.shape[0]
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(num, (min(batch_size, num),))
        nll = model.nll(s[idx], a[idx], n[idx], r[idx])
        loss = bl.elbo_loss(nll, model, num)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def one_step_error(model: DynamicsModel, data: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
    """Mean squared error of the next-state prediction (posterior mean if Bayesian)."""
    s, a, n, _ = data
    with bl.posterior_mean(model):
        pred, _ = model(s, a)
    return float((pred - n).square().mean())


def cem(
    objective: Callable[[Tensor], Tensor],
    mean: Tensor,
    std: Tensor,
    *,
    iterations: int,
    candidates: int,
    elites: int,
    low: Tensor | float,
    high: Tensor | float,
) -> Tensor:
    """Cross-entropy method: maximise ``objective`` over a box; the final mean.

    Each iteration samples ``candidates`` points from ``N(mean, std²)`` clipped
    to ``[low, high]``, scores them all in one call and refits mean and std to
    the ``elites`` best.

    Args:
        objective: maps ``(candidates, *shape)`` points to ``(candidates,)`` scores.
        mean, std: the initial search distribution, shape ``shape``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> f = lambda x: -(x - 0.5).square().flatten(1).sum(1)
        >>> x = cem(f, torch.zeros(2), torch.ones(2), iterations=10, candidates=100,
        ...         elites=10, low=-2.0, high=2.0)
        >>> bool((x - 0.5).abs().max() < 0.05)
        True
    """
    if not 0 < elites <= candidates:
        raise ValueError(f"cem expected 0 < elites <= candidates, got {elites}, {candidates}")
    for _ in range(iterations):
        noise = torch.randn((candidates, *mean.shape), dtype=mean.dtype)
        x = torch.clamp(mean + std * noise, low, high)  # (N, *shape)
        scores = objective(x)  # (N,)
        elite = x[scores.topk(elites).indices]  # (E, *shape)
        mean, std = elite.mean(0), elite.std(0, unbiased=False)
    return mean


@torch.no_grad()
def imagined_returns(
    model: DynamicsModel,
    state: Tensor,
    actions: Tensor,
    planning: str = "sample",
    num_functions: int | None = None,
) -> Tensor:
    """Sum of predicted rewards of each action sequence from ``state``.

    ``planning`` says how a Bayesian model's weights enter: ``"sample"`` draws a
    fresh function at every model call (the layers' default), ``"mean"`` uses the
    posterior means, ``"trajectory"`` gives every candidate its own function
    sample, frozen for the whole horizon (trajectory sampling, as in PETS), drawn
    in one vectorised call. ``num_functions`` (a divisor of ``N``; default ``N``)
    draws fewer functions for speed: consecutive blocks of ``N / num_functions``
    candidates share one.

    Shape:
        state: ``(state_dim,)``; actions: ``(N, H, action_dim)``; output ``(N,)``.
    """
    n, horizon, _ = actions.shape
    k = n if num_functions is None else num_functions
    if k < 1 or n % k:
        raise ValueError(f"imagined_returns expected num_functions dividing {n}, got {k}")
    s = state.expand(n, -1)  # (N, S): sample-major, (K, N / K) candidates per function
    total = torch.zeros(n)
    with ExitStack() as stack:
        if planning == "mean":
            stack.enter_context(bl.posterior_mean(model))
        elif planning == "trajectory" and is_bayesian(model):
            stack.enter_context(bl.frozen_sample(model))  # fixed over the horizon
            stack.enter_context(bl.vectorized_samples(model, k))
        for t in range(horizon):
            s, r = model(s, actions[:, t])
            total += r
    return total


class Planner:
    """Model-predictive control: CEM over action sequences, the first action executed.

    The search mean is warm-started from the previous step's plan shifted by one.

    Args:
        model: the learned dynamics.
        low, high: action bounds, shape ``(action_dim,)``.
        horizon, candidates, iterations, elites: CEM settings.
        planning: one of :data:`PLANNING_MODES` (see :func:`imagined_returns`).
        num_functions: function samples per CEM iteration in ``"trajectory"``
            mode; None (default) gives every candidate its own.
    """

    def __init__(
        self,
        model: DynamicsModel,
        low: Tensor,
        high: Tensor,
        *,
        horizon: int,
        candidates: int,
        iterations: int,
        elites: int,
        planning: str = "sample",
        num_functions: int | None = None,
    ) -> None:
        if planning not in PLANNING_MODES:
            raise ValueError(f"Planner expected `planning` in {PLANNING_MODES}, got {planning!r}")
        self.model, self.low, self.high, self.planning = model, low, high, planning
        self.num_functions = num_functions
        self.horizon, self.candidates = horizon, candidates
        self.iterations, self.elites = iterations, elites
        self.reset()

    def reset(self) -> None:
        self.mean = ((self.low + self.high) / 2).expand(self.horizon, -1).clone()  # (H, A)

    def act(self, state: Tensor) -> Tensor:
        std = ((self.high - self.low) / 4).expand(self.horizon, -1)  # (H, A)
        self.mean = cem(
            lambda x: imagined_returns(self.model, state, x, self.planning, self.num_functions),
            self.mean,
            std,
            iterations=self.iterations,
            candidates=self.candidates,
            elites=self.elites,
            low=self.low,
            high=self.high,
        )
        action = self.mean[0].clone()
        self.mean = torch.cat([self.mean[1:], self.mean[-1:]])  # shift for the next step
        return action


@torch.no_grad()
def open_loop(model: DynamicsModel, state: Tensor, actions: Tensor, num_samples: int) -> Tensor:
    """Predicted states from ``state`` under ``actions``, never looking at the env.

    A Bayesian model runs ``num_samples`` function samples at once, each frozen
    for the whole rollout; a deterministic model gives one rollout.

    Shape:
        state: ``(S,)``; actions: ``(T, A)``; output ``(K, T, S)`` with ``K`` the
        number of function samples.
    """
    k = num_samples if is_bayesian(model) else 1
    s = state.expand(k, -1)  # (K, S)
    out = []
    with bl.frozen_sample(model), bl.vectorized_samples(model, k):
        for a in actions:
            s, _ = model(s, a.expand(k, -1))
            out.append(s)
    return torch.stack(out, 1)  # (K, T, S)
