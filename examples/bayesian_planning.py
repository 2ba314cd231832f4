"""Section 3.2 / Appendix B of the paper: a Bayesian dynamics model for planning.

A model-based agent on a gymnasium control task with state observations
(``Pendulum-v1`` by default; ``--env InvertedPendulum-v5`` or ``HalfCheetah-v5``
with the ``mujoco`` extra, ``pip install -e ".[mujoco]"``; the model learns no
termination, so on InvertedPendulum, whose reward is a constant +1 until the
pole falls, the planner has nothing to optimise: run it only to see the pieces work).
A dynamics model predicts the state change and the reward
of a transition; its dense layers are ``nn.Linear`` (deterministic) or a
Bayesian drop-in (``--estimator reparameterization`` / ``flipout``), one flag
and nothing else. The agent plans by the cross-entropy method (CEM) over the
learned model, every candidate action sequence scored in one batched rollout,
executes the first action and replans (model-predictive control). It collects
its own data: one random seed episode, then planner episodes, with the model
retrained between episodes on all data so far by the ELBO

    loss = nll_mean + sum(bl.losses(model)) / num_transitions

(the deterministic model has no losses, so its loss is the NLL alone).

How the planner uses the weight posterior (``--planning``):

* ``sample`` (default): every model call draws a fresh function, as the layers
  do by default; the candidates of one call share it (Reparameterization).
* ``trajectory``: trajectory sampling: every candidate action sequence gets its
  own function sample, frozen for the whole horizon, all drawn in one
  vectorised call (``bl.frozen_sample`` + ``bl.vectorized_samples``). A
  candidate scores well only if it does well under a plausible model, so
  epistemic uncertainty shapes which plans win. ``--function-samples K`` draws
  only K functions per CEM iteration (blocks of candidates share one), for speed.
* ``mean``: posterior means, no sampling.

Output: a table of episode returns (median and 5-95 percentiles over seeds x
episodes, deterministic vs Bayesian), ``planning_training.png`` (returns and
weight KL over training) and ``planning_open_loop.png`` (50-step open-loop
predictions on the final, never-trained-on episode with 5-95 bands over 32
function samples). The reward is learned, not given.

Measured (defaults, 5 seeds x 10 episodes, one core, ~35 min): median return
over the last 5 episodes -124.1 for both models (5-95: deterministic
[-246.4, -1.4], Bayesian [-248.8, -1.2]); the Bayesian agent is worse early
(5th percentile over all episodes -921 vs -255: sampled functions from a
still-wide posterior mislead the first plans) and its weight KL falls from
18939 to 13471 nats. ``--planning trajectory --function-samples 30`` avoided
the early failures (5th percentile -389) with the same last-half median (-124.5).

    python examples/bayesian_planning.py                 # 5 seeds x 10 episodes, both models
    python examples/bayesian_planning.py --planning trajectory --estimator flipout
    python examples/bayesian_planning.py --quick         # a tiny run of every part
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from _planning import (
    LAYERS,
    PLANNING_MODES,
    Buffer,
    DynamicsModel,
    Planner,
    one_step_error,
    open_loop,
    train_model,
    weight_kl,
)
from _planning_plots import plot_open_loop, plot_training

STATE_LABELS = {"Pendulum-v1": ["cos θ", "sin θ", "θ'"]}


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def run_episode(env: gym.Env, seed: int, policy) -> tuple[float, Buffer, np.ndarray, np.ndarray]:
    """One episode; ``policy(state) -> action`` or None for uniform random actions.

    Returns the return, the transitions, and the visited states ``(T + 1, S)`` and
    actions ``(T, A)``.
    """
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    states, actions, rewards = [obs], [], []
    done = False
    while not done:
        if policy is None:
            action = env.action_space.sample()
        else:
            action = policy(_tensor(obs)).numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        states.append(obs)
        actions.append(np.asarray(action, dtype=np.float32))
        rewards.append(float(reward))
        done = terminated or truncated
    s, a = np.stack(states).astype(np.float32), np.stack(actions)
    buffer = Buffer()
    buffer.add(_tensor(s[:-1]), _tensor(a), _tensor(s[1:]), _tensor(np.asarray(rewards)))
    return float(sum(rewards)), buffer, s, a


def run_agent(kind: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one agent; returns per-episode returns, KL, held-out error and the final episode."""
    torch.manual_seed(seed)
    env = gym.make(args.env, max_episode_steps=args.max_steps)
    low, high = _tensor(env.action_space.low), _tensor(env.action_space.high)
    state_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    layer = LAYERS["deterministic" if kind == "deterministic" else args.estimator]
    model = DynamicsModel(state_dim, action_dim, args.hidden, layer=layer)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    planner = Planner(
        model, low, high, horizon=args.horizon, candidates=args.candidates,
        iterations=args.iterations, elites=args.elites, planning=args.planning,
        num_functions=args.function_samples,
    )  # fmt: skip
    held_out = run_episode(env, 10_000 + seed, None)[1].tensors()  # random-policy transitions
    data = Buffer()
    data.parts += run_episode(env, 1000 * seed, None)[1].parts  # the random seed episode
    returns, kls, errors = [], [weight_kl(model)], []
    for episode in range(args.episodes):
        train_model(model, data.tensors(), optimizer, args.train_steps)
        kls.append(weight_kl(model))
        errors.append(one_step_error(model, held_out))
        planner.reset()
        ret, new, states, actions = run_episode(env, 1000 * seed + episode + 1, planner.act)
        data.parts += new.parts
        returns.append(ret)
        print(
            f"  {kind} seed {seed} episode {episode + 1}: return {ret:8.1f}, "
            f"KL {kls[-1]:9.1f}, held-out one-step MSE {errors[-1]:.5f}",
            flush=True,
        )
    return {
        "returns": returns,
        "kl": kls,
        "errors": errors,
        "model": model,
        "final_episode": (states, actions),  # collected after the last training
    }


def summarize(returns: np.ndarray) -> tuple[float, float, float]:
    """Median and 5th/95th percentiles of every entry."""
    p5, med, p95 = np.percentile(returns, [5, 50, 95])
    return float(med), float(p5), float(p95)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--estimator", choices=["reparameterization", "flipout"],
                        default="reparameterization")  # fmt: skip
    parser.add_argument("--deterministic", action="store_true", help="only nn.Linear")
    parser.add_argument("--bayesian", action="store_true", help="only the Bayesian model")
    parser.add_argument("--planning", choices=PLANNING_MODES, default="sample")
    parser.add_argument("--function-samples", type=int, default=None,
                        help="trajectory mode: functions per CEM iteration "
                        "(a divisor of --candidates; default one per candidate)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=10, help="planner episodes per seed")
    parser.add_argument("--max-steps", type=int, default=None, help="episode length cap")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-steps", type=int, default=300, help="per retraining")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--elites", type=int, default=30)
    parser.add_argument("--open-loop", type=int, default=50, help="open-loop steps to plot")
    parser.add_argument("--open-loop-samples", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a tiny run of every part, for tests")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small batches: thread hand-off would dominate
    if args.quick:
        args.seeds, args.episodes, args.max_steps, args.train_steps = 2, 2, 25, 30
        args.horizon, args.candidates, args.iterations, args.elites = 5, 20, 2, 4
        args.hidden, args.open_loop, args.open_loop_samples = 16, 20, 8
    kinds = ["deterministic", "bayesian"]
    if args.deterministic != args.bayesian:
        kinds = ["deterministic" if args.deterministic else "bayesian"]
    print(
        f"{args.env}: {args.seeds} seeds x {args.episodes} planner episodes; CEM horizon "
        f"{args.horizon}, {args.candidates} candidates, {args.iterations} iterations, "
        f"{args.elites} elites; Bayesian layers {args.estimator}, planning {args.planning!r}"
    )
    runs, results, models, episodes = {}, {}, {}, {}
    for kind in kinds:
        start = time.perf_counter()
        per_seed = [run_agent(kind, seed, args) for seed in range(args.seeds)]
        runs[kind] = {k: np.array([r[k] for r in per_seed]) for k in ("returns", "kl", "errors")}
        models[kind], episodes[kind] = per_seed[0]["model"], per_seed[0]["final_episode"]
        print(f"  {kind}: {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\nepisode returns over {args.seeds} seeds (median [5th, 95th percentile]):")
    print("| model | all episodes | final episode | last half | KL start -> end (nats) |")
    print("|---|---|---|---|---|")
    for kind, run in runs.items():
        ret = run["returns"]
        cells = []
        for name, values in (
            ("all", ret),
            ("final", ret[:, -1]),
            ("last_half", ret[:, ret.shape[1] // 2 :]),
        ):
            med, p5, p95 = summarize(values)
            results |= {f"{kind}_{name}_median": med, f"{kind}_{name}_p5": p5,
                        f"{kind}_{name}_p95": p95}  # fmt: skip
            cells.append(f"{med:.1f} [{p5:.1f}, {p95:.1f}]")
        kl = np.median(run["kl"], axis=0)
        results |= {f"{kind}_kl_start": float(kl[0]), f"{kind}_kl_end": float(kl[-1])}
        err = np.median(run["errors"], axis=0)
        results |= {f"{kind}_error_first": float(err[0]), f"{kind}_error_last": float(err[-1])}
        print(f"| {kind} | {' | '.join(cells)} | {kl[0]:.1f} -> {kl[-1]:.1f} |")
    for kind, run in runs.items():
        err = np.median(run["errors"], axis=0)
        print(f"{kind}: held-out one-step MSE (median over seeds) per retraining: "
              + " ".join(f"{e:.4f}" for e in err))  # fmt: skip
    if len(runs) == 2:
        _, lo, hi = summarize(runs["deterministic"]["returns"][:, -1])
        final = results["bayesian_final_median"]
        verdict = "within" if lo <= final <= hi else "OUTSIDE"
        print(f"Bayesian final-episode median {final:.1f} is {verdict} the deterministic "
              f"final-episode 5-95 band [{lo:.1f}, {hi:.1f}]")  # fmt: skip

    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot_training(runs, args.output_dir / "planning_training.png")
    # open loop on the first agent's final episode (seed 0), which no model trained on
    states, actions = episodes[kinds[0]]
    steps = min(args.open_loop, len(actions))
    rollouts = {
        kind: open_loop(
            model, _tensor(states[0]), _tensor(actions[:steps]), args.open_loop_samples
        ).numpy()
        for kind, model in models.items()
    }
    labels = STATE_LABELS.get(args.env, [])
    truth = states[1 : steps + 1]
    plot_open_loop(rollouts, truth, labels, args.output_dir / "planning_open_loop.png")
    for kind, pred in rollouts.items():
        err = np.abs(np.median(pred, 0) - truth).mean(-1)  # (T,)
        inside = (np.percentile(pred, 5, 0) <= truth) & (truth <= np.percentile(pred, 95, 0))
        results[f"{kind}_open_loop_error"] = float(err.mean())
        mid = min(10, steps)
        band = f"; true state inside the 5-95 band {inside.mean():.0%}" if len(pred) > 1 else ""
        print(f"{kind}: open-loop mean abs error over {steps} steps {err.mean():.3f} "
              f"(step {mid}: {err[mid - 1]:.3f}, step {steps}: {err[-1]:.3f}){band}")  # fmt: skip
    raw = {k: {n: v.tolist() for n, v in r.items()} for k, r in runs.items()}
    raw["open_loop"] = {k: v.tolist() for k, v in rollouts.items()} | {"truth": truth.tolist()}
    (args.output_dir / "planning_results.json").write_text(json.dumps(raw))
    print(f"plots written to {args.output_dir}/planning_training.png and planning_open_loop.png")
    return results


if __name__ == "__main__":
    main()
