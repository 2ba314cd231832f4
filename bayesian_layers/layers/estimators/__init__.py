"""The weight-estimator template: one forward pass for every layer family whose op is
linear in its weight and bias.

A layer family declares two things and gets every estimator, the sampling modes,
vectorised function samples, tracing and the noise hooks from this module:

1. its deterministic op, a :class:`WeightOp` (``F.linear``, a convolution, a
   projection) with the K-sample version of it;
2. a class attribute ``estimator = FLIPOUT`` (or ``REPARAMETERIZATION``,
   ``LOCAL_REPARAMETERIZATION``).

Its ``forward`` checks the input and returns ``self.estimator.project(self, x, op)``;
its constructor calls ``self.estimator.check_posteriors(self)`` after declaring the
parameters. A family with several projections (a recurrent cell, attention) calls
``project`` once per projection with the parameter names (``weight="in_proj_weight"``),
or takes one draw with :meth:`Estimator.draw` (a :class:`WeightDraw`) and applies it
as often as it needs (attention's queries, keys and values; an LSTM's time steps), or
builds on the pieces :func:`mean_projection`, :func:`whole_weight_projection`,
:func:`flipout_output` and :func:`local_reparameterization_output`.

The template's files: :mod:`.op` (:class:`WeightOp` and the estimators' pure math),
:mod:`.draw` (the op on means and on whole draws, :class:`WeightDraw`),
:mod:`.strategies` (the estimators and their lookup by name).

What :meth:`Estimator.project` does, in order:

* ``layer.sampling == "mean"``: the op on the posterior means;
* a whole-weight estimator (reparameterization), a deterministic weight posterior,
  or no per-example noise allowed (``"frozen"`` mode, a tracer active:
  :meth:`~bayesian_layers.layers.base.BayesianLayer.per_example_noise` is False): one
  whole draw of weight and bias per function sample (``layer.sample_param``), so a
  frozen or traced call is one function;
* otherwise the estimator's own per-example path.

With K function samples at once (``layer.num_function_samples``), inputs carry them
folded into their first dimension, sample-major, and whole weights come with a
leading K (``op.batched``).

Noise. Every random number goes through ``layer.noise(name, shape, like, kind=...)``,
so a noise hook (tensor parallelism, a test) sees all of it: whole weights through
``sample_param`` (``kind="parameter"``, the parameter's name); Flipout's signs
``kind="sign"`` named ``"<weight>_sign_in"``, ``"<weight>_sign_out"`` and its shared
perturbation ``kind="normal"`` named ``"<weight>"``; local reparameterization's output
noise ``kind="normal"`` named ``"<weight>_output"``. Signs take the input's dtype,
weight and output noise the parameters' dtype (float32 under autocast); the pure
functions cast to the op's output dtype.

Which predictive samples are function samples. Reparameterization: each call (each
of the K samples) is one draw of the weights, an exact function sample
(``exact_function_samples = True``). Flipout and local reparameterization: each
example's output has the exact marginal of a whole draw, but two examples (and two
output positions of a convolution) see different weights: marginal-correct per
example, not one function across a batch (``exact_function_samples = False``). A
frozen or traced call of any estimator falls back to whole weights, one function.

Adding an estimator: subclass :class:`Estimator`, set ``name``,
``exact_function_samples`` and the posterior families it needs
(``needs_normal``), implement ``per_example(layer, x, op, weight, bias, loc, scale)`` with its
noise drawn through ``layer.noise`` and its math as a pure function (noise passed in,
gradcheck-able), add an instance to ``_BY_NAME``; then one class per family declares
``estimator = YOURS`` and registers with ``@converts(torch_cls, name)``.

Example:
    >>> import torch, bayesian_layers as bl
    >>> from bayesian_layers.layers.estimators import get_estimator
    >>> flipout = get_estimator("flipout")
    >>> flipout.exact_function_samples
    False
    >>> layer = bl.layers.LinearFlipout(3, 2)
    >>> layer.estimator is flipout
    True
"""

from .draw import WeightDraw, mean_projection, whole_weight_projection
from .op import (
    WeightOp,
    flipout_output,
    local_reparameterization_moments,
    local_reparameterization_output,
)
from .strategies import (
    ESTIMATORS,
    FLIPOUT,
    LOCAL_REPARAMETERIZATION,
    REPARAMETERIZATION,
    Estimator,
    Flipout,
    LocalReparameterization,
    Reparameterization,
    get_estimator,
)

__all__ = [
    "WeightOp",
    "WeightDraw",
    "Estimator",
    "Reparameterization",
    "Flipout",
    "LocalReparameterization",
    "REPARAMETERIZATION",
    "FLIPOUT",
    "LOCAL_REPARAMETERIZATION",
    "ESTIMATORS",
    "get_estimator",
    "mean_projection",
    "whole_weight_projection",
    "flipout_output",
    "local_reparameterization_moments",
    "local_reparameterization_output",
]
