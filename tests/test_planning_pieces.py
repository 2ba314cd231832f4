"""The pieces of examples/bayesian_planning.py: CEM, planner, dynamics model, training."""

from __future__ import annotations

import _planning as P  # examples/ is on pytest's pythonpath (pyproject.toml)
import numpy as np
import pytest
import torch
from torch import nn

import bayesian_layers as bl

gym = pytest.importorskip("gymnasium")


def _quadratic(target: torch.Tensor, curvature: torch.Tensor):
    """``f(x) = -sum(c * (x - target)²)``: maximum 0 at ``target``."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return -(curvature * (x - target).square()).flatten(1).sum(1)

    return f


def test_cem_reaches_the_optimum_of_a_quadratic():
    """A (5, 2) problem, ill-conditioned (curvatures 0.5..8): CEM lands within 0.02 of the
    known optimum and its objective improves from the start value by > 99.9%."""
    torch.manual_seed(0)
    target = torch.linspace(-1.5, 1.5, 10).view(5, 2)
    curvature = torch.logspace(-1, 3, 10, base=2).view(5, 2)
    f = _quadratic(target, curvature)
    start = torch.zeros(5, 2)
    x = P.cem(f, start, torch.ones(5, 2), iterations=25, candidates=400, elites=40,
              low=-2.0, high=2.0)  # fmt: skip
    assert (x - target).abs().max() < 0.02
    assert f(x[None]) > 1e-3 * f(start[None])  # both negative: ratio of the gaps < 1e-3


def test_cem_respects_the_box():
    """With the optimum at 3 outside [-2, 2], the constrained optimum is the bound 2."""
    torch.manual_seed(1)
    f = _quadratic(torch.tensor([3.0, -0.5]), torch.ones(2))
    x = P.cem(f, torch.zeros(2), torch.ones(2), iterations=15, candidates=200, elites=20,
              low=-2.0, high=2.0)  # fmt: skip
    assert x[0] <= 2.0 and x[0] > 1.98
    assert abs(x[1] + 0.5) < 0.02


def test_cem_rejects_bad_elites():
    with pytest.raises(ValueError, match="elites"):
        P.cem(lambda x: x.sum(1), torch.zeros(1), torch.ones(1), iterations=1,
              candidates=10, elites=11, low=-1.0, high=1.0)  # fmt: skip


class _Integrator(nn.Module):
    """Known dynamics ``s' = s + a`` with reward ``-s'²``: from s, the best action is -s."""

    def forward(self, state, action):
        nxt = state + action
        return nxt, -nxt.square().sum(-1)


@pytest.mark.parametrize("planning", P.PLANNING_MODES)
def test_planner_finds_the_best_action_of_a_known_model(planning):
    torch.manual_seed(2)
    planner = P.Planner(
        _Integrator(), torch.tensor([-2.0]), torch.tensor([2.0]), horizon=3,
        candidates=200, iterations=8, elites=20, planning=planning,
    )  # fmt: skip
    action = planner.act(torch.tensor([1.2]))
    assert abs(action.item() + 1.2) < 0.05
    assert planner.mean.shape == (3, 1)  # the warm start for the next step


def test_planner_rejects_unknown_mode():
    with pytest.raises(ValueError, match="planning"):
        P.Planner(_Integrator(), torch.zeros(1), torch.ones(1), horizon=2, candidates=4,
                  iterations=1, elites=2, planning="optimistic")  # fmt: skip


def _model(kind: str, hidden: int = 16) -> P.DynamicsModel:
    return P.DynamicsModel(3, 1, hidden, layer=P.LAYERS[kind])


def test_imagined_returns_modes():
    """Deterministic: every mode gives the same returns. Bayesian: ``mean`` is the posterior
    mean function; ``trajectory`` gives identical candidates different functions, and with
    every posterior scale at (numerically) zero all modes agree."""
    torch.manual_seed(3)
    state, actions = torch.randn(3), torch.rand(6, 4, 1).repeat(1, 1, 1)
    det = _model("deterministic")
    ref = P.imagined_returns(det, state, actions, "sample")
    for mode in P.PLANNING_MODES:
        torch.testing.assert_close(P.imagined_returns(det, state, actions, mode), ref)

    bayes = _model("reparameterization")
    same = actions[:1].expand(6, -1, -1)  # six identical candidates
    spread = P.imagined_returns(bayes, state, same, "trajectory")
    assert spread.std() > 0  # one function per candidate
    mean_mode = P.imagined_returns(bayes, state, same, "mean")
    assert mean_mode.std() == 0
    with torch.no_grad():
        for layer in bl.bayesian_modules(bayes):
            layer.weight_rho.fill_(-60.0)  # softplus(-60) ~ 1e-26: no weight noise
    for mode in P.PLANNING_MODES:
        torch.testing.assert_close(P.imagined_returns(bayes, state, same, mode), mean_mode)


def test_trajectory_sampling_shares_functions_by_block():
    """``num_functions=2`` over 6 identical candidates: candidates 0-2 share one function,
    3-5 the other (sample-major blocks); a non-divisor is refused."""
    torch.manual_seed(6)
    bayes = _model("flipout")
    same = torch.rand(1, 4, 1).expand(6, -1, -1)
    out = P.imagined_returns(bayes, torch.randn(3), same, "trajectory", num_functions=2)
    torch.testing.assert_close(out[:3], out[:1].expand(3))
    torch.testing.assert_close(out[3:], out[3:4].expand(3))
    assert out[0] != out[3]
    with pytest.raises(ValueError, match="num_functions"):
        P.imagined_returns(bayes, torch.randn(3), same, "trajectory", num_functions=4)


def test_open_loop_shapes():
    torch.manual_seed(4)
    actions = torch.rand(7, 1)
    bayes = P.open_loop(_model("flipout"), torch.randn(3), actions, num_samples=5)
    assert bayes.shape == (5, 7, 3) and bayes.std(0).min() > 0
    det = P.open_loop(_model("deterministic"), torch.randn(3), actions, num_samples=5)
    assert det.shape == (1, 7, 3)


def _pendulum_transitions(seed: int, steps: int):
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    s, a, n, r = [], [], [], []
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, rew, term, trunc, _ = env.step(act)
        s.append(obs), a.append(act), n.append(nxt), r.append(rew)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    f = lambda v: torch.tensor(np.array(v), dtype=torch.float32)  # noqa: E731
    return f(s), f(a), f(n), f(r)


@pytest.mark.parametrize("kind", ["deterministic", "reparameterization", "flipout"])
def test_one_step_error_falls_during_training(kind):
    """Held-out one-step MSE falls at every checkpoint and ends below a quarter of the
    "nothing changes" baseline; for the Bayesian models the weight KL moves as well."""
    torch.manual_seed(5)
    train, held_out = _pendulum_transitions(0, 600), _pendulum_transitions(1, 200)
    baseline = float((held_out[2] - held_out[0]).square().mean())  # predict s' = s
    model = _model(kind, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.fit_normalizer(
        torch.cat(train[:2], -1), torch.cat([train[2] - train[0], train[3][:, None]], -1)
    )
    errors, kls = [P.one_step_error(model, held_out)], [P.weight_kl(model)]
    for _ in range(3):
        P.train_model(model, train, opt, steps=100)
        errors.append(P.one_step_error(model, held_out))
        kls.append(P.weight_kl(model))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < baseline / 4, (errors, baseline)
    if kind == "deterministic":
        assert kls == [0.0] * 4
    else:
        assert abs(kls[-1] - kls[0]) > 0.01 * kls[0], kls  # the posterior moved


def test_buffer_concatenates():
    buf = P.Buffer()
    buf.add(torch.zeros(2, 3), torch.zeros(2, 1), torch.ones(2, 3), torch.ones(2))
    buf.add(torch.zeros(1, 3), torch.zeros(1, 1), torch.ones(1, 3), torch.ones(1))
    assert len(buf) == 3
    assert [t.shape[0] for t in buf.tensors()] == [3, 3, 3, 3]
