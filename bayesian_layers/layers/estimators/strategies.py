"""The estimators as strategy objects (:class:`Estimator` and its three subclasses, one
instance each) and their lookup by name. Part of :mod:`bayesian_layers.layers.estimators`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .draw import WeightDraw, mean_projection, whole_weight_projection
from .op import WeightOp, local_reparameterization_moments, predictive_moments
from .shared_input import (
    batch_joint_samples,
    marginal_samples,
    output_noise_samples,
    use_batch_joint,
    whole_draw_samples,
)

if TYPE_CHECKING:
    from ...initializers import TrainableInitializer
    from ..base import BayesianLayer

__all__ = [
    "Estimator",
    "Reparameterization",
    "Flipout",
    "LocalReparameterization",
    "REPARAMETERIZATION",
    "FLIPOUT",
    "LOCAL_REPARAMETERIZATION",
    "ESTIMATORS",
    "get_estimator",
]


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

    def accepts(self, role: str, initializer: TrainableInitializer) -> bool:
        """Whether a posterior family can serve ``role`` (``"weight"`` or ``"bias"``)
        under this estimator: any family unless the role is in :attr:`needs_normal`."""
        if role not in self.needs_normal:
            return True
        return initializer.is_normal or initializer.is_deterministic

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
            if not self.accepts(role, init):
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
                layer.forget_draw(weight, bias)  # no whole draw (a random bias draws anew)
                return self.per_example(layer, x, op, weight, bias, loc, scale)
        return whole_weight_projection(layer, x, op, weight, bias)

    def draw(self, layer: BayesianLayer, weight: str, bias: str | None) -> WeightDraw:
        """One draw of ``weight`` and ``bias`` for a family that applies it several times
        (attention's queries, keys and values; an LSTM's steps), dispatched as
        :meth:`project`: posterior means in ``"mean"`` mode, else one whole draw per
        function sample (Flipout overrides it with ``(μ, σ ∘ ε)`` when per-example noise
        is allowed). All noise comes from ``layer.sample_param`` and ``layer.noise``.
        """
        b = None if bias is None else layer.sample_param(bias)  # points in "mean" mode
        return WeightDraw(layer.sample_param(weight), None, b)

    def shared_input(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        k: int,
    ) -> Tensor | None:
        """K samples at one input ``x`` (``(B, ...)``) shared by all of them, as
        ``(K * B, ...)`` sample-major, in a form cheaper than K copies of ``x`` with the
        law of :meth:`project` on those copies; ``None`` where there is none (the caller
        folds ``x``). Only in ``"sample"`` mode with no tracer and a random weight; used
        by :func:`bayesian_layers.predict` for the first stochastic layer of a model."""
        return None

    def shared_input_applies(
        self, layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str
    ) -> bool:
        """Whether :meth:`shared_input` draws at ``x`` (not ``None``); it draws nothing."""
        return False

    @staticmethod
    def _normal_draw(layer: BayesianLayer, weight: str) -> bool:
        """``"sample"`` mode, no tracer, and a random normal ``weight`` posterior."""
        if not layer.per_example_noise():
            return False
        init = layer.parameter_spec(weight).initializer
        return bool(init.is_normal) and not init.is_deterministic

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

    def shared_input(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        k: int,
    ) -> Tensor | None:
        """A dense op on a 2-D input: where only each example's law is asked for
        (``bl.predict(..., joint=False)``), output-space noise
        (:func:`~bayesian_layers.layers.estimators.shared_input.marginal_samples`: normal
        and Kronecker posteriors); otherwise, at a small batch, the exact joint law over the
        batch from a ``B x B`` factor per output unit
        (:func:`~bayesian_layers.layers.estimators.shared_input.batch_joint_samples`);
        otherwise the K whole draws applied to ``x`` in one matmul
        (:func:`~bayesian_layers.layers.estimators.shared_input.whole_draw_samples`: the
        draws of the folded call, without folding ``x``)."""
        if not self.shared_input_applies(layer, x, op, weight):
            return None
        layer.forget_draw(weight, bias)  # whole_draw_samples draws them anew
        if layer.marginal_predictive:
            y = marginal_samples(layer, x, op, weight, bias, k)
            if y is not None:
                return y
        if use_batch_joint(layer, x, weight, k):
            y = batch_joint_samples(layer, x, weight, bias, k)
            if y is not None:
                return y
        return whole_draw_samples(layer, x, weight, bias, k)

    def shared_input_applies(
        self, layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str
    ) -> bool:
        """A dense op on a 2-D input in ``"sample"`` mode, no tracer active."""
        return op.exact_output_noise and x.dim() == 2 and layer.per_example_noise()


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
        if layer.in_predictive and _output_noise_pays(layer, x, op, k):
            return output_noise_samples(layer, x, op, weight, bias, loc, scale, k, shared=False)
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

    def shared_input(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        k: int,
    ) -> Tensor | None:
        """A dense op on a 2-D input of fewer rows than features: output-space noise
        with the moments computed once (per example the law of Flipout's sample)."""
        if not self.shared_input_applies(layer, x, op, weight):
            return None
        return _shared_output_noise(layer, x, op, weight, bias, k)

    def shared_input_applies(
        self, layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str
    ) -> bool:
        """A random normal weight, and output noise pays (:func:`_output_noise_pays`)."""
        return self._normal_draw(layer, weight) and _output_noise_pays(layer, x, op, 1)

    def draw(self, layer: BayesianLayer, weight: str, bias: str | None) -> WeightDraw:
        """Flipout's reusable draw: the posterior mean ``μ`` and one shared perturbation
        ``Δ = σ ∘ ε`` (a leading K in vectorised mode), applied with signs per example
        (:func:`~bayesian_layers.layers.functional.attention.flipout_project`); whole
        weights where per-example noise is not allowed or the weight is deterministic."""
        if layer.sampling != "mean" and layer.per_example_noise():
            loc, scale = layer.posterior_loc_scale(weight)
            if scale is not None:
                layer.forget_draw(weight)  # no whole draw
                b = None if bias is None else layer.sample_param(bias)
                k = layer.num_function_samples
                shape = loc.shape if k == 1 else torch.Size((k, *loc.shape))
                return WeightDraw(loc, scale * layer.noise(weight, shape, loc), b)
        return super().draw(layer, weight, bias)


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
        k = layer.check_samples(x)  # K samples need no care: each element has its own noise
        bias_loc, bias_scale = (None, None) if bias is None else layer.posterior_loc_scale(bias)
        if k == 1:  # the per-call store can hit only here (a folded input is new each call)
            mean, std = predictive_moments(layer, weight, op, x, loc, scale, bias_loc, bias_scale)
        else:
            mean, std = local_reparameterization_moments(op, x, loc, scale, bias_loc, bias_scale)
        # noise in the parameter dtype (float32 under autocast), cast after the op
        noise = layer.noise(f"{weight}_output", mean.shape, loc)
        return torch.addcmul(mean, std, noise.to(mean.dtype))

    def shared_input(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str,
        bias: str | None,
        k: int,
    ) -> Tensor | None:
        """The output moments computed once, then the same noise as :meth:`per_example`
        on K copies of ``x`` (for a fixed seed, the same samples)."""
        if not self.shared_input_applies(layer, x, op, weight):
            return None
        return _shared_output_noise(layer, x, op, weight, bias, k)

    def shared_input_applies(
        self, layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str
    ) -> bool:
        """A random normal weight in ``"sample"`` mode, no tracer active."""
        return self._normal_draw(layer, weight)


def _output_noise_pays(layer: BayesianLayer, x: Tensor, op: WeightOp, k: int) -> bool:
    """Flipout in the predictive: output-space noise has the per-example law of its
    sample for a dense op on a 2-D input, and draws fewer numbers than K perturbations
    while an input holds fewer rows per sample than features. On a sequence ``(N, T,
    in)`` it gives each position's output its exact law (Flipout's sample promises each
    element's), with ``N T out`` numbers against Flipout's ``N T (in + out)`` signs and K
    perturbations: it always pays there."""
    if not op.exact_output_noise or layer.has_noise_hooks or x.dim() < 2:
        return False
    return x.dim() > 2 or x.shape[0] // k < x.shape[1]


#: The reparameterization estimator (one weight draw per call), shared by every layer.
REPARAMETERIZATION = Reparameterization()
#: The Flipout estimator (pseudo-independent sign flips per example), shared by every layer.
FLIPOUT = Flipout()
#: The local reparameterization estimator (a draw of the pre-activations), shared by every
#: layer.
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


def _shared_output_noise(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str, bias: str | None, k: int
) -> Tensor:
    """K samples of output-space noise at one input ``x`` shared by all of them, for an
    estimator whose :meth:`~Estimator.shared_input_applies` held (a random normal weight):
    the moments once (Flipout's and local reparameterization's shared-input form)."""
    loc, scale = layer.posterior_loc_scale(weight)
    assert scale is not None  # shared_input_applies: a random normal weight
    layer.forget_draw(weight, bias)  # no whole draw (a random bias draws anew)
    return output_noise_samples(layer, x, op, weight, bias, loc, scale, k, shared=True)
