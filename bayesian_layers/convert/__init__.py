"""Turn a deterministic network into a Bayesian one: swap its layers in place.

:func:`to_bayesian` replaces every torch layer that has a registered Bayesian
counterpart (``nn.Linear``, ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d``,
``nn.LSTM``, ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.MultiheadAttention``,
``nn.Embedding``, ``nn.Bilinear``, ...; DESIGN.md §3) by that counterpart, whose posterior means
start at the layer's weights and biases. With ``pretrained_scale=s`` the posterior
standard deviations start at ``s·|w|`` (MOPED, Krishnan et al. 2020), so the
trained network's function is the posterior mean and samples stay close to it.

The mapping is the converter registry, :mod:`bayesian_layers.layers.registry`:
each family registers its classes next to their definitions with
``@converts(nn.Linear, "flipout")``, and every registered class builds itself
from its torch layer with ``from_torch(module, **kwargs)``. A registered torch
layer with no Bayesian class for the estimator asked (nor for reparameterization)
is skipped and reported, unless ``include`` asks for it, which raises. Modules
with parameters of their own and no counterpart (``nn.GRU``, ``nn.LayerNorm``,
...) are left as they are and listed in the report's ``unsupported``; a call that
converts nothing warns. Estimator names have one spelling, :data:`ESTIMATORS`.

Files: ``_swap.py`` (:func:`to_bayesian`, :func:`canonical_estimator`),
``_select.py`` (the module scan and the ``include``/``exclude`` globs),
``_report.py`` (the report records), ``_pretrained.py`` (:class:`PretrainedNormal`).
"""

from ._pretrained import MIN_SCALE, PretrainedNormal
from ._report import ConversionReport, SkippedLayer, SwappedLayer, UnsupportedLayer
from ._swap import ESTIMATORS, canonical_estimator, to_bayesian

__all__ = [
    "to_bayesian",
    "canonical_estimator",
    "ConversionReport",
    "SwappedLayer",
    "SkippedLayer",
    "UnsupportedLayer",
    "PretrainedNormal",
    "ESTIMATORS",
    "MIN_SCALE",
]
