"""Parts of a model that several post-hoc and predictive tools treat alike: layers with
running statistics, and the prior hyperparameters of the Bayesian layers' regularizers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .layers.base import BayesianLayer

__all__ = ["normalization_in_eval", "prior_parameter_ids"]


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
