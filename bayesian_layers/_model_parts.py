"""Parts of a model that several post-hoc and predictive tools treat alike: layers with
running statistics, and the prior hyperparameters of the Bayesian layers' regularizers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from .layers.base import BayesianLayer

__all__ = ["normalization_in_eval", "batch_statistics_layers", "prior_parameter_ids"]


@contextmanager
def normalization_in_eval(model: nn.Module) -> Iterator[None]:
    """Batch-norm-type layers (running statistics) of ``model`` in eval mode meanwhile: a
    folded ``K × B`` batch (or stacked ensemble members) must neither update their
    statistics nor be normalised as one batch. Layers already in eval mode are left alone.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> with normalization_in_eval(net):
        ...     net[1].training
        False
        >>> net[1].training
        True
    """
    norms = [m for m in model.modules() if isinstance(m, _NormBase) and m.training]
    for m in norms:
        m.train(False)
    try:
        yield
    finally:
        for m in norms:
            m.train(True)


def batch_statistics_layers(model: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    """The batch-norm-type layers of ``model`` (or among the modules ``model``, a list of a
    model's modules already walked) that normalise with the statistics of the
    batch they see even in eval mode (no running statistics: ``track_running_stats=False``),
    so a folded ``K × B`` batch would mix the K function samples. Instance norm, which
    normalises each example alone, is not one of them.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False), nn.BatchNorm1d(2))
        >>> batch_statistics_layers(net) == [net[0]]
        True
    """
    return [
        m
        for m in (model.modules() if isinstance(model, nn.Module) else model)
        if isinstance(m, _NormBase)
        and not isinstance(m, _InstanceNorm)
        and m.running_mean is None
        and m.running_var is None
    ]


def prior_parameter_ids(model: nn.Module) -> set[int]:
    """``id`` of every trainable prior hyperparameter (a learned prior scale, say) of the
    Bayesian layers' regularizers in ``model``: what an optimiser of the posterior (IVON,
    SWAG) must leave out.

    Example:
        >>> import bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(
        ...     3, 2, weight_regularizer=bl.regularizers.LearnedScaleNormalKLDivergence())
        >>> len(prior_parameter_ids(layer)) == len(list(layer.weight_regularizer.parameters()))
        True
    """
    ids: set[int] = set()
    for layer in model.modules():
        if isinstance(layer, BayesianLayer):
            for name in dict(layer.named_random_parameters(include_deterministic=True)):
                reg = layer._modules.get(f"{name}_regularizer")
                if reg is not None:
                    ids.update(id(p) for p in reg.parameters())
    return ids
