"""``bl.sngp``: make a deterministic classifier an SNGP (Liu et al., 2020), in place.

SNGP keeps a deterministic network and adds distance awareness in two places: a
spectral-norm bound on every hidden layer (so the hidden map roughly preserves input
distances) and a Gaussian-process output layer (so the predictive variance grows with
the distance from the training data). :func:`sngp` does both to an existing model.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import UninitializedParameter

from ._checks import check_count, check_real
from .layers.gp.sngp_head import MEAN_FIELD_FACTOR, SNGPHead
from .layers.spectral_norm import is_spectral_normalized, spectral_normalization

__all__ = ["sngp", "NORMALIZED_TYPES"]

#: the hidden layers :func:`sngp` spectral-normalises (their weight's dim 0 is the output)
NORMALIZED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def sngp(
    model: nn.Module,
    *,
    head: str | None = None,
    norm_bound: float = 0.95,
    num_power_iterations: int = 1,
    num_features: int = 1024,
    length_scale: float = 1.0,
    prior_scale: float = 1.0,
    normalize_input: bool = False,
    mean_field_factor: float = MEAN_FIELD_FACTOR,
) -> nn.Module:
    r"""Turn a deterministic classifier into an SNGP, in place; returns the model.

    1. The output layer, the ``nn.Linear`` named by ``head`` (a dotted path such as
       ``"fc"`` or ``"classifier.2"``; ``None``: the last ``nn.Linear`` in
       ``model.named_modules()`` order), is replaced by
       :class:`~bayesian_layers.layers.SNGPHead` ``(in_features, out_features)`` on the
       same device, dtype and train/eval mode (its weights start afresh: random features
       need new ones).
    2. Every other ``nn.Linear`` and ``nn.Conv{1,2,3}d`` (:data:`NORMALIZED_TYPES`, their
       subclasses too) gets :func:`~bayesian_layers.layers.spectral_normalization` with
       the bound ``c`` (on the reshaped kernel matrix for convolutions); layers already
       spectral-normalised are left as they are. Other modules (batch norm, Bayesian
       layers, ...) are untouched.

    The model's forward now returns the head's random variable where it returned the
    logits (it acts as the logits tensor, so ``F.cross_entropy(model(x), y)`` trains
    as before). Per epoch call ``head.reset_precision()``; predict in evaluation mode
    with ``head.mean_field_logits(model(x))`` (:func:`~bayesian_layers.layers.gp.sngp_head
    .mean_field_logits`) or by sampling ``model(x).distribution``. Residual connections,
    which SNGP also needs for distance preservation, are the architecture's business.

    Args:
        model: the classifier; an ``nn.Linear`` itself is replaced and the head returned.
        head: dotted path of the output ``nn.Linear``; ``None``: the last one.
        norm_bound: ``c > 0``, the spectral-norm bound of the hidden layers.
        num_power_iterations: power iterations per training call (``>= 1``).
        num_features, length_scale, prior_scale, normalize_input, mean_field_factor:
            the :class:`~bayesian_layers.layers.SNGPHead`'s.

    Raises:
        TypeError: ``model`` is not a module, the ``head`` is not an ``nn.Linear``.
        ValueError: no ``nn.Linear`` to replace, an unknown ``head`` path, a model that
            already has an SNGP head, a lazy layer not yet initialised, a bad
            hyperparameter.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = sngp(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)),
        ...              num_features=64)
        >>> type(model[0]).__name__, type(model[2]).__name__
        ('ParametrizedLinear', 'SNGPHead')
        >>> model(torch.randn(5, 2)).shape
        torch.Size([5, 3])
    """
    owner = "sngp"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner} expected an nn.Module, got {type(model).__name__}")
    if head is not None and not isinstance(head, str):
        raise TypeError(f"{owner} expected `head` to be a dotted module path or None, got "
                        f"{head!r}")  # fmt: skip
    check_real(owner, "norm_bound", norm_bound, strict=True)
    check_count(owner, "num_power_iterations", num_power_iterations)
    check_count(owner, "num_features", num_features)
    check_real(owner, "length_scale", length_scale, strict=True)
    check_real(owner, "prior_scale", prior_scale, strict=True)
    check_real(owner, "mean_field_factor", mean_field_factor)
    modules = dict(model.named_modules())
    if any(isinstance(m, SNGPHead) for m in modules.values()):
        raise ValueError(f"{owner}: the model already has an SNGPHead (sngp was applied)")
    if head is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{owner} found no nn.Linear output layer in "
                             f"{type(model).__name__}; name it with `head=`")  # fmt: skip
        head = linears[-1]
    elif head not in modules or head == "":
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        raise ValueError(f"{owner}: {type(model).__name__} has no submodule {head!r} "
                         f"(its nn.Linear layers: {names})")  # fmt: skip
    old = modules[head]
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{owner} expected `head` {head!r} to be an nn.Linear, got "
                        f"{type(old).__name__}")  # fmt: skip
    hidden = [
        (n, m) for n, m in modules.items()
        if n != head and isinstance(m, NORMALIZED_TYPES) and not is_spectral_normalized(m)
    ]  # fmt: skip
    for name, module in [(head, old), *hidden]:  # checked before anything changes
        if isinstance(module.weight, UninitializedParameter):
            raise ValueError(f"{owner}: {name or 'the model'} is a lazy layer not yet "
                             "initialised: call the model once on an input first")  # fmt: skip
    weight = old.weight
    new = SNGPHead(
        old.in_features, old.out_features, num_features=num_features,
        length_scale=length_scale, prior_scale=prior_scale, normalize_input=normalize_input,
        bias=old.bias is not None, mean_field_factor=mean_field_factor,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    new.train(old.training)
    for _, module in hidden:
        spectral_normalization(
            module, norm_bound=norm_bound, num_power_iterations=num_power_iterations
        )
    if head == "":
        return new
    parent_name, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return model
