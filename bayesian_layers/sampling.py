"""Control how the Bayesian layers of a model sample: fresh, posterior mean, frozen, K at once.

Threads: :func:`set_sampling` (like assigning ``layer.sampling``) sets the mode of
every layer for all threads. The context managers :func:`posterior_mean`,
:func:`frozen_sample` and :func:`vectorized_samples` are thread-local: they override
the mode (or K) only in the thread that entered them, and each removes only its own
override at exit, so contexts in several threads, or exiting out of order, never
leave a model in another context's mode. A :func:`frozen_sample` context is its own
function sample (kept per context, forgotten at exit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .layers._base.overrides import overriding
from .layers.base import SAMPLING_MODES, BayesianLayer

__all__ = [
    "bayesian_modules",
    "set_sampling",
    "posterior_mean",
    "frozen_sample",
    "resample",
    "vectorized_samples",
]


def bayesian_modules(model: nn.Module) -> Iterator[BayesianLayer]:
    """Every :class:`~bayesian_layers.layers.BayesianLayer` in ``model`` (itself included), once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, BayesianLayer):
            yield m


def set_sampling(model: nn.Module, mode: str) -> dict[BayesianLayer, str]:
    """Set the sampling mode of every Bayesian layer in ``model``; return the previous modes.

    Args:
        model: any module.
        mode: ``"sample"`` (fresh function sample per call, the default),
            ``"mean"`` (posterior means, no sampling) or ``"frozen"`` (one
            function sample kept across calls until :func:`resample`).
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"set_sampling expected `mode` in {SAMPLING_MODES}, got {mode!r}")
    previous = {}
    for m in bayesian_modules(model):
        previous[m] = m.sampling
        m.sampling = mode
    return previous


@contextmanager
def _mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    with overriding(list(bayesian_modules(model)), "modes", mode):
        yield model


def posterior_mean(model: nn.Module):  # noqa: ANN201 - a context manager
    """Context: run ``model`` on posterior means (no sampling).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 2)
        >>> x = torch.randn(4, 3)
        >>> with bl.posterior_mean(layer):
        ...     torch.equal(layer(x), layer(x))
        True
    """
    return _mode(model, "mean")


@contextmanager
def frozen_sample(model: nn.Module) -> Iterator[nn.Module]:
    """Context: draw one function sample on the first call and reuse it until exit.

    Gradients still flow to the posterior parameters. Call :func:`resample`
    inside the context for a new function sample.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearFlipout(3, 2)
        >>> x = torch.randn(4, 3)
        >>> with bl.frozen_sample(layer):
        ...     torch.equal(layer(x), layer(x))
        True
    """
    with _mode(model, "frozen"):
        # this context's own (empty) noise store, and the layers' other per-draw
        # caches, start afresh: the sample is drawn now and forgotten at exit
        resample(model)
        yield model


def resample(model: nn.Module) -> None:
    """Forget every frozen function sample in ``model``."""
    for m in bayesian_modules(model):
        m.resample()


@contextmanager
def vectorized_samples(model: nn.Module, num_samples: int) -> Iterator[nn.Module]:
    """Context: every Bayesian layer draws ``num_samples`` parameter samples per call.

    Inputs carry the K function samples folded into their first dimension,
    sample-major: feed ``x.repeat(K, 1, ...)``-style ``(K * B, ...)`` tensors and
    read outputs as ``out.view(K, B, ...)``. Deterministic layers act per
    example and need no change. :func:`bayesian_layers.predict` does this for you.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"vectorized_samples expected `num_samples` >= 1, got {num_samples!r}")
    with overriding(list(bayesian_modules(model)), "samples", num_samples):
        yield model
