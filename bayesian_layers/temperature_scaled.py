"""The module :class:`TemperatureScaled`: a classifier whose logits are divided by a
temperature (fitted by :func:`bayesian_layers.calibrate`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributions as td
from torch import Tensor, nn

from ._checks import check_real
from ._function_space import is_function_space, mark_function_space
from .layers.outputs import distributions as od
from .random_variables.variable import RandomVariable

__all__ = ["TemperatureScaled"]

#: distribution classes rebuilt as themselves by :class:`TemperatureScaled`
_CATEGORICAL_CLASSES = (td.Categorical, td.OneHotCategorical, od.Categorical, od.OneHotCategorical)
_SUPPORTED = (
    "a Tensor of logits, a RandomVariable with a Categorical or OneHotCategorical "
    "distribution, or a Gaussian-process output over the logits (a function-space "
    "RandomVariable with a Normal distribution, e.g. an SNGPHead's)"
)


def _describe(out: object) -> str:
    if isinstance(out, Tensor):
        return f"a Tensor of dtype {out.dtype}"
    if isinstance(out, RandomVariable):
        return f"a RandomVariable with distribution {type(out.distribution).__name__}"
    return f"a {type(out).__name__}"


def _scale_output(out: object, temperature: Tensor) -> Tensor | RandomVariable:
    """``out`` with its logits divided by ``temperature`` (see :class:`TemperatureScaled`)."""
    if isinstance(out, Tensor) and out.is_floating_point():
        return out / temperature
    if isinstance(out, RandomVariable):
        dist = out.distribution
        if isinstance(dist, (td.Categorical, td.OneHotCategorical)):
            cls = type(dist) if type(dist) in _CATEGORICAL_CLASSES else (
                td.Categorical if isinstance(dist, td.Categorical) else td.OneHotCategorical
            )  # fmt: skip
            scaled = cls(logits=dist.logits / temperature, validate_args=dist._validate_args)
            return RandomVariable(scaled, sample_shape=out.sample_shape, name=out.name)
        if isinstance(dist, td.Normal) and is_function_space(out):
            normal = td.Normal(dist.loc / temperature, dist.scale / temperature,
                               validate_args=False)  # fmt: skip
            rv = RandomVariable(normal, out.value / temperature, out.sample_shape, out.name)
            return mark_function_space(rv)
    raise TypeError(
        f"TemperatureScaled expected the model to return {_SUPPORTED}; got {_describe(out)}"
    )


class TemperatureScaled(nn.Module):
    r"""A classifier whose logits are divided by a temperature :math:`T > 0`.

    ``forward`` calls ``model`` with the same arguments and divides its logits by ``T``:

    - a Tensor ``z`` (logits): ``z / T``;
    - a :class:`~bayesian_layers.RandomVariable` with a ``Categorical`` or
      ``OneHotCategorical`` distribution (``layers.Categorical``): a random variable of
      the same distribution class built from ``logits / T`` (so ``probs =
      softmax(logits / T)``), with a fresh value drawn from it and the same name;
    - a Gaussian-process output over the logits (a function-space random variable with a
      ``Normal`` distribution, such as an :class:`~bayesian_layers.layers.SNGPHead`'s): the
      distribution of ``f / T``, ``Normal(loc / T, scale / T)``, with value ``value / T``
      (it reads the scale, which costs the head its Cholesky factor in training mode).

    Anything else raises ``TypeError``. The wrapper is an ordinary module that calls
    ``model``: ``bl.predict``, ``bl.losses``, the sampling modes (``bl.posterior_mean``,
    ``bl.frozen_sample``), ``.eval()``/``.train()``, ``.to()`` and ``state_dict`` all
    reach ``model`` through it. It holds ``model`` itself, not a copy: the two share
    their parameters. ``T`` is a buffer (in ``state_dict`` as ``"temperature"``, not a
    parameter: optimisers over ``wrapper.parameters()`` leave it alone).

    Args:
        model: the classifier.
        temperature: the initial ``T``, a finite number ``> 0`` (a Python number or a
            one-element tensor).

    Shape:
        Whatever ``model`` takes and returns: ``(*, C)`` logits stay ``(*, C)``.

    Attributes:
        model: the wrapped classifier.
        temperature: the buffer ``T``, a 0-dim float64 tensor.
        nll_before: mean predictive NLL on the held-out data at ``T = 1``, set by
            :func:`calibrate` (``None`` otherwise).
        nll_after: the same at the fitted ``T`` (``None`` unless from :func:`calibrate`).
        num_samples: the ``K`` function samples per example the fit used, or ``None``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.calibration import TemperatureScaled
        >>> net = torch.nn.Linear(4, 3)
        >>> scaled = TemperatureScaled(net, temperature=2.0)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(scaled(x), net(x) / 2)
        True
        >>> sorted(scaled.state_dict())
        ['model.bias', 'model.weight', 'temperature']
    """

    temperature: Tensor

    def __init__(self, model: nn.Module, temperature: float | Tensor = 1.0) -> None:
        super().__init__()
        owner = "TemperatureScaled"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner} expected `model` to be an nn.Module, got "
                            f"{type(model).__name__}")  # fmt: skip
        if isinstance(temperature, Tensor):
            if temperature.numel() != 1:
                raise ValueError(f"{owner} expected `temperature` to be one number, got a "
                                 f"tensor of shape {tuple(temperature.shape)}")  # fmt: skip
            temperature = temperature.item()
        value = check_real(owner, "temperature", temperature, strict=True)
        self.model = model
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
        self.register_buffer("temperature", torch.tensor(value, dtype=torch.float64,
                                                         device=device))  # fmt: skip
        self.nll_before: float | None = None
        self.nll_after: float | None = None
        self.num_samples: int | None = None

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.6g}"

    def forward(self, *args: Any, **kwargs: Any) -> Tensor | RandomVariable:
        """``model(*args, **kwargs)`` with its logits divided by the temperature."""
        # a 0-dim float64 divisor keeps the logits' dtype (type promotion skips 0-dim tensors)
        return _scale_output(self.model(*args, **kwargs), self.temperature)
