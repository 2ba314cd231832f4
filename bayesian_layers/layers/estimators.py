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
or builds on the pieces :func:`mean_projection`, :func:`whole_weight_projection`,
:func:`flipout_output` and :func:`local_reparameterization_output`.

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

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import BayesianLayer

__all__ = [
    "WeightOp",
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


class WeightOp:
    """A family's deterministic op ``y = op(x, weight, bias)``, linear in ``(weight, bias)``.

    Subclasses implement ``__call__``; ``batched`` defaults to one call per function
    sample (override it with one fused call), ``add_sample_bias`` to a bias on the last
    dimension, ``sign_shapes`` to signs of the input's and the output's shape.

    Shape:
        - ``__call__``: ``x`` the family's input, ``weight`` the parameter's shape,
          ``bias`` the bias's shape or None.
        - ``batched``: ``x`` ``(K * B, ...)`` sample-major, ``weight`` ``(K, *shape)``,
          ``bias`` ``(K, *bias_shape)``, ``bias_shape`` or None.

    Example:
        >>> import torch.nn.functional as F
        >>> class Linear(WeightOp):
        ...     def __call__(self, x, weight, bias):
        ...         return F.linear(x, weight, bias)
        >>> Linear().batched(torch.ones(4, 3), torch.ones(2, 5, 3), None, 2).shape
        torch.Size([4, 5])
    """

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        """The op with K weight draws, draw ``i`` applied to block ``i`` of ``x``; a bias
        of shape ``(K, out)`` has one draw per block, a bias ``(out,)`` is shared."""
        biases = [bias] * k if bias is None or bias.dim() == 1 else list(bias)
        return torch.cat([self(xi, weight[i], biases[i]) for i, xi in enumerate(x.chunk(k))])

    def add_sample_bias(self, y: Tensor, bias: Tensor | None, k: int) -> Tensor:
        """``y`` plus a bias with one draw per function sample (bias on the last dim).

        Shape: ``y`` ``(K * B, ..., out)``; ``bias`` ``(K, out)``, ``(out,)`` or None.
        """
        if bias is None:
            return y
        if bias.dim() == 1:
            return y + bias
        yk = y.reshape(k, -1, y.shape[-1])  # (K, M, out)
        return (yk + bias.unsqueeze(1)).reshape(y.shape)

    def sign_shapes(self, x: Tensor, y_shape: torch.Size) -> tuple[torch.Size, torch.Size]:
        """Shapes of Flipout's input and output signs (they broadcast against ``x`` and
        the output): by default one sign per input and per output element."""
        return x.shape, y_shape


# ------------------------------------------------------------------ pure math
def flipout_output(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    weight_noise: Tensor,
    sign_in: Tensor,
    sign_out: Tensor,
    bias: Tensor | None,
) -> Tensor:
    """Flipout (Wen et al. 2018) for any op linear in the weight:
    ``op(x, μ, b) + op(x ∘ s_in, σ ∘ ε) ∘ s_out``.

    One shared perturbation ``σ ∘ ε`` decorrelated across examples by signs ±1; each
    output element keeps the marginal of a whole draw ``W ~ N(μ, σ²)``. Noise is
    passed in (gradcheck-able); the signs are cast to the op's output dtype.
    """
    mean = op(x, weight_loc, bias)
    perturbation = op(x * sign_in, weight_scale * weight_noise, None)
    return torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))


def local_reparameterization_moments(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``op(x, W, b)`` under ``W ~ N(μ, σ²)``,
    ``b ~ N(μ_b, σ_b²)`` elementwise: ``op(x, μ, μ_b)`` and ``sqrt(op(x², σ², σ_b²))``.

    Exact for an op linear in the weight in which each weight element meets at most one
    input element per output element (dense, convolution, bilinear).
    """
    mean = op(x, weight_loc, bias_loc)
    b_var = None if bias_scale is None else bias_scale.square()
    var = op(x.square(), weight_scale.square(), b_var)
    return mean, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def local_reparameterization_output(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    noise: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> Tensor:
    """Local reparameterization (Kingma et al. 2015): ``mean + std ∘ noise`` with the
    moments of :func:`local_reparameterization_moments`, an independent weight draw per
    output element. Noise passed in (gradcheck-able); cast to the op's output dtype.
    """
    mean, std = local_reparameterization_moments(
        op, x, weight_loc, weight_scale, bias_loc, bias_scale
    )
    return torch.addcmul(mean, std, noise.to(mean.dtype))


# ------------------------------------------------------------ template pieces
def mean_projection(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str = "weight", bias: str | None = "bias"
) -> Tensor:
    """The op on the posterior means of ``weight`` and ``bias``."""
    b = None if bias is None else layer.point(bias)
    return op(x, layer.point(weight), b)


def whole_weight_projection(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str = "weight", bias: str | None = "bias"
) -> Tensor:
    """The op on one whole draw of ``weight`` and ``bias`` per function sample (the
    sampling mode decides: fresh, frozen or traced), K draws at once when K > 1."""
    k = layer.check_samples(x)
    w = layer.sample_param(weight)
    b = None if bias is None else layer.sample_param(bias)
    return op(x, w, b) if k == 1 else op.batched(x, w, b, k)


class Estimator:
    """How a forward pass integrates over the weight posterior; see the module docstring.

    Attributes:
        name: the name in :data:`ESTIMATORS` (and in the converter registry).
        exact_function_samples: whether each predictive sample is one function draw
            (True), or only marginal-correct per example (False).
        needs_normal: the roles (``"weight"``, ``"bias"``) whose posterior must be
            normal or deterministic.
    """

    name: str = ""
    exact_function_samples: bool = True
    needs_normal: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> str:  # the module-level instance, also after unpickling
        return self.name.upper()

    def check_posteriors(
        self, layer: BayesianLayer, weight: str = "weight", bias: str | None = "bias"
    ) -> None:
        """Raise ``ValueError`` (naming the layer and the family) when a posterior this
        estimator needs normal is neither normal nor deterministic."""
        names = {"weight": weight, "bias": bias}
        for role in self.needs_normal:
            name = names[role]
            if name is None:
                continue
            try:
                init = layer.parameter_spec(name).initializer
            except ValueError:
                continue  # no such parameter (bias=False)
            if not (init.is_normal or init.is_deterministic):
                raise ValueError(
                    f"{type(layer).__name__} needs a normal (or deterministic) {name} "
                    f"posterior, got {type(init).__name__}; use the reparameterization "
                    "estimator for other families"
                )

    def project(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str = "weight",
        bias: str | None = "bias",
    ) -> Tensor:
        """``op(x, W, b)`` with ``W``, ``b`` integrated over by this estimator.

        Args:
            layer: the layer holding parameters ``weight`` and ``bias``.
            x: the checked input (K function samples folded into its first dim).
            op: the family's op.
            weight, bias: the parameters' names; ``bias=None`` for no bias.
        """
        if layer.sampling == "mean":
            return mean_projection(layer, x, op, weight, bias)
        if not self.exact_function_samples and layer.per_example_noise():
            loc, scale = layer.posterior_loc_scale(weight)
            if scale is not None:  # a random weight
                return self.per_example(layer, x, op, weight, bias, loc, scale)
        return whole_weight_projection(layer, x, op, weight, bias)

    def per_example(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        loc: Tensor,
        scale: Tensor,
    ) -> Tensor:
        """The estimator's own path (``"sample"`` mode, no tracer, a normal weight
        posterior ``N(loc, scale²)``); noise through ``layer.noise``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-example path")


class Reparameterization(Estimator):
    """One whole weight draw per call (per function sample), shared by the batch
    (Kingma & Welling 2014; Blundell et al. 2015): exact function samples, any
    posterior family."""

    name = "reparameterization"
    exact_function_samples = True


class Flipout(Estimator):
    """Flipout (Wen et al. 2018): one shared perturbation per call, decorrelated across
    examples by random signs; a random bias gets one whole draw per call. Needs a
    normal (or deterministic) weight posterior; about twice the op's cost."""

    name = "flipout"
    exact_function_samples = False
    needs_normal = ("weight",)

    def per_example(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        loc: Tensor,
        scale: Tensor,
    ) -> Tensor:
        k = layer.check_samples(x)
        b = None if bias is None else layer.sample_param(bias)
        mean = op(x, loc, b if k == 1 else None)
        in_shape, out_shape = op.sign_shapes(x, mean.shape)
        sign_in = layer.noise(f"{weight}_sign_in", in_shape, x, kind="sign")
        sign_out = layer.noise(f"{weight}_sign_out", out_shape, x, kind="sign")
        shape = loc.shape if k == 1 else torch.Size((k, *loc.shape))
        noise = layer.noise(weight, shape, loc)
        if k == 1:
            perturbation = op(x * sign_in, scale * noise, None)
        else:
            perturbation = op.batched(x * sign_in, scale * noise, None, k)
        y = torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))  # (to: autocast)
        return y if k == 1 else op.add_sample_bias(y, b, k)


class LocalReparameterization(Estimator):
    """Local reparameterization (Kingma et al. 2015): every output element drawn from
    its exact marginal, an independent weight draw per element; never draws a whole
    weight outside ``"frozen"`` mode and tracing. Needs normal (or deterministic)
    weight and bias posteriors; exact for any op linear in the weight in which a
    weight element meets one input element per output element."""

    name = "local_reparameterization"
    exact_function_samples = False
    needs_normal = ("weight", "bias")

    def per_example(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        loc: Tensor,
        scale: Tensor,
    ) -> Tensor:
        layer.check_samples(x)  # K samples need no care: every element has its own noise
        bias_loc, bias_scale = (None, None) if bias is None else layer.posterior_loc_scale(bias)
        mean, std = local_reparameterization_moments(op, x, loc, scale, bias_loc, bias_scale)
        # noise in the parameter dtype (float32 under autocast), cast after the op
        noise = layer.noise(f"{weight}_output", mean.shape, loc)
        return torch.addcmul(mean, std, noise.to(mean.dtype))


REPARAMETERIZATION = Reparameterization()
FLIPOUT = Flipout()
LOCAL_REPARAMETERIZATION = LocalReparameterization()

_BY_NAME: dict[str, Estimator] = {
    e.name: e for e in (REPARAMETERIZATION, FLIPOUT, LOCAL_REPARAMETERIZATION)
}

#: the names of the weight estimators, in the order of :func:`get_estimator`'s message.
ESTIMATORS = tuple(_BY_NAME)


def get_estimator(name: str | Estimator) -> Estimator:
    """The estimator called ``name`` (an :class:`Estimator` is returned as is).

    Raises:
        ValueError: unknown name (the message lists :data:`ESTIMATORS`).

    Example:
        >>> get_estimator("local_reparameterization").exact_function_samples
        False
    """
    if isinstance(name, Estimator):
        return name
    estimator = _BY_NAME.get(name) if isinstance(name, str) else None
    if estimator is None:
        raise ValueError(f"get_estimator expected a name in {ESTIMATORS}, got {name!r}")
    return estimator
