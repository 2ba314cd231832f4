"""The demo's models and training loop: an MLP whose ``nn.Linear`` layers can be swapped for
Bayesian ones, a regressor with a learned noise scale, Adam with early stopping on the
validation predictive NLL, and the predictive summaries the table reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .. import metrics
from ..convert import canonical_estimator
from .config import DemoConfig, class_suffix

__all__ = [
    "Regressor",
    "class_predictive",
    "fit",
    "make_mlp",
    "mixture_quantile",
    "posterior_weight_scale",
    "regression_locs",
]


# ----------------------------------------------------------------------------- models
def make_mlp(
    in_features: int, hidden: tuple[int, ...], out_features: int, config: DemoConfig, bayesian: bool
) -> nn.Sequential:
    """A ReLU MLP; ``bayesian`` swaps every ``nn.Linear`` for ``layers.Linear<Estimator>``.

    Both start alike: weights (posterior means) uniform on ``±1/sqrt(fan_in)``, biases 0.
    """
    linear: Callable[[int, int], nn.Module]
    if bayesian:
        from .. import layers

        estimator = canonical_estimator(config.estimator)
        linear = getattr(layers, f"Linear{class_suffix(estimator)}")
    else:
        linear = _linear_zero_bias
    widths = (in_features, *hidden)
    mods: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        mods += [linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*mods, linear(widths[-1], out_features))


def _linear_zero_bias(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.bias)  # as the Bayesian layers' default deterministic bias
    return layer


class Regressor(nn.Module):
    """An MLP for the mean and a learned homoscedastic noise scale ``softplus(noise_rho)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.noise_rho = nn.Parameter(torch.tensor(0.5413))  # softplus -> 1.0

    @property
    def noise_scale(self) -> Tensor:
        return nn.functional.softplus(self.noise_rho) + 1e-4

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


# --------------------------------------------------------------------------- training
def _progress(it: Iterable[int], desc: str, enabled: bool) -> Iterable[int]:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: train without bars
        return it
    # disable=None: no bars when stderr is not a terminal (logs, CI, captured output).
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def class_predictive(model: nn.Module, x: Tensor, bayesian: bool, k: int) -> tuple[Tensor, Tensor]:
    """``(probs_mean (N, C), prob_samples (K, N, C))``; K = 1 for the deterministic model."""
    import bayesian_layers as bl

    with torch.no_grad():
        if not bayesian:
            probs = model(x).softmax(-1)
            return probs, probs.unsqueeze(0)
        pred = bl.predict(model, x, num_samples=k, transform=lambda z: z.softmax(-1))
        return pred.mean, pred.samples


def regression_locs(model: nn.Module, x: Tensor, bayesian: bool, k: int) -> Tensor:
    """Predictive means under K function samples, ``(K, N)``; K = 1 when deterministic."""
    import bayesian_layers as bl

    with torch.no_grad():
        if not bayesian:
            return model(x).unsqueeze(0)
        return bl.predict(model, x, num_samples=k).samples


def posterior_weight_scale(model: nn.Module) -> float:
    """Mean posterior standard deviation over every weight of the model's Bayesian layers."""
    from ..layers import BayesianLayer

    scales = [
        m.weight.distribution.stddev.detach().flatten()
        for m in model.modules()
        if isinstance(m, BayesianLayer) and hasattr(m, "weight_rho")
    ]
    return torch.cat(scales).mean().item() if scales else 0.0


def _predictive_nll(model: nn.Module, x: Tensor, y: Tensor, bayesian: bool, k: int) -> float:
    """NLL of the (Monte Carlo) predictive: what early stopping minimises."""
    if isinstance(model, Regressor):
        locs = regression_locs(model, x, bayesian, k)
        return metrics.mixture_gaussian_nll(locs, model.noise_scale.detach(), y).item()
    probs, _ = class_predictive(model, x, bayesian, k)
    return metrics.negative_log_likelihood(probs, y).item()


def _batch_nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    if isinstance(model, Regressor):
        return metrics.gaussian_nll(model(x), model.noise_scale, y)
    return nn.functional.cross_entropy(model(x), y)


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: DemoConfig,
    *,
    dataset: str,
    bayesian: bool,
    generator: torch.Generator,
    desc: str,
) -> tuple[int, float]:
    """Adam on minibatches, keeping the epoch with the best validation predictive NLL.

    The loss is the mean NLL (cross-entropy, or Gaussian with the learned noise scale);
    for the Bayesian model the negative ELBO per example,
    ``nll_mean + kl_weight * sum(bl.losses(model)) / num_train_examples``. After the
    last epoch the model holds the parameters of its best validation epoch (early
    stopping, the same protocol for both models); returns that epoch (1-based) and its
    validation NLL.
    """
    import bayesian_layers as bl

    x, y = train
    n = x.shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr_for(dataset))
    best, best_epoch, best_state = math.inf, 0, None
    bar = _progress(range(1, config.epochs_for(dataset) + 1), desc, config.progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            loss = _batch_nll(model, x[idx], y[idx])
            if bayesian:
                loss = bl.elbo_loss(loss, model, n, kl_weight=config.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        score = _predictive_nll(model, *val, bayesian, config.num_val_samples)
        if score < best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if hasattr(bar, "set_postfix"):
            postfix = {"loss": f"{loss.item():.3f}", "val_nll": f"{score:.3f}", "best": best_epoch}
            bar.set_postfix(postfix, refresh=False)
    if best_state is not None:
        model.load_state_dict(best_state)
    return best_epoch, best


def mixture_quantile(locs: Tensor, scale: Tensor, q: float, iters: int = 60) -> Tensor:
    """Quantile ``q`` of the equal mixture of ``N(locs[k], scale²)`` over k, by bisection.

    Args:
        locs: component means, ``(K, N)``.
        scale: the common noise standard deviation (a scalar tensor).
        q: the probability, in (0, 1).

    Returns:
        ``(N,)`` quantiles, to ``20 * scale / 2**iters`` (bisection on the mixture CDF).
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    lo = locs.min(0).values - 10 * scale
    hi = locs.max(0).values + 10 * scale
    for _ in range(iters):
        mid = (lo + hi) / 2
        below = normal.cdf((mid - locs) / scale).mean(0) < q  # (N,)
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2
