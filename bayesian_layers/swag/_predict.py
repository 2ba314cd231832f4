"""Predicting with a SWAG posterior: BatchNorm statistics per draw (:func:`update_bn`),
one low-rank noise for the whole network (:func:`joint_low_rank`) and the per-sample
predictive (:func:`predict`). Private module; public through :mod:`bayesian_layers.swag`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..initializers.swag_normal import LOW_RANK_SUFFIX, SWAGNormal
from ..layers.base import BayesianLayer
from ..predictive import Predictive
from ..predictive import predict as bl_predict
from ..sampling import frozen_sample, resample

__all__ = ["SharedLowRankNoise", "joint_low_rank", "predict", "update_bn"]


def _batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def update_bn(model: nn.Module, loader: Iterable[Any]) -> None:
    """Recompute the running statistics of every BatchNorm layer of ``model`` with one
    pass over ``loader`` (``torch.optim.swa_utils.update_bn``: statistics reset, then
    the exact average over all batches; ``model`` in train mode meanwhile, its mode
    restored after; no gradients).

    SWAG's weights are not those the statistics were tracked at, so they are refreshed
    after writing the posterior (at ``θ_SWA``) and for every posterior draw. Each batch
    runs the model in its current sampling mode: call it inside
    :func:`bayesian_layers.frozen_sample` (one draw: what :func:`predict` does) or
    :func:`bayesian_layers.posterior_mean` (``θ_SWA``), or every batch sees another draw.

    Cost: one forward pass over ``loader``. A model without BatchNorm is left untouched
    (``loader`` is not read).

    Args:
        model: any module.
        loader: an iterable of batches: a tensor, or a list/tuple whose first element is
            the input.

    Raises:
        ValueError: ``loader`` yields no batch (the statistics are then left as they were).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 4),
        ...                             torch.nn.BatchNorm1d(4))
        >>> with bl.posterior_mean(model):
        ...     bl.swag.update_bn(model, [torch.randn(16, 3) for _ in range(2)])
        >>> int(model[1].num_batches_tracked)
        2
    """
    if not _batch_norms(model):
        return
    it = iter(loader)
    first = next(it, None)
    if first is None:
        raise ValueError(
            "bl.swag.update_bn expected a non-empty `loader` (BatchNorm statistics need at "
            "least one batch), got no batches"
        )
    torch.optim.swa_utils.update_bn(itertools.chain([first], it), model)


class SharedLowRankNoise:
    """A noise hook: every SWAG parameter of one forward pass gets the same ``z₂``; a
    parameter asking a second time starts the next function sample."""

    def __init__(self) -> None:
        self.value: Tensor | None = None
        self.users: set[tuple[int, str]] = set()

    def __call__(
        self,
        layer: BayesianLayer,
        name: str,
        kind: str,
        shape: torch.Size,
        make: Callable[[torch.Size], Tensor],
    ) -> Tensor | None:
        if not name.endswith(LOW_RANK_SUFFIX):
            return None
        key = (id(layer), name)
        if self.value is None or key in self.users or self.value.shape != shape:
            self.value, self.users = make(shape), set()
        self.users.add(key)
        return self.value


@contextmanager
def joint_low_rank(model: nn.Module) -> Iterator[nn.Module]:
    """Context: all :class:`SWAGNormal` parameters of ``model`` share one low-rank noise
    ``z₂ ~ N(0, I_K)`` per function sample, so draws follow the network-wide SWAG
    posterior ``N(θ_SWA, ½ (Σ_diag + D Dᵀ / (K - 1)))`` with its correlations across
    layers (outside it each tensor draws its own ``z₂``).

    A function sample is a pass in which each parameter draws once: a parameter drawing
    again starts the next sample (a layer called twice in one forward pass therefore
    splits it). Works in every sampling mode: ``"sample"``, ``"frozen"`` (the kept
    ``z₂`` is shared) and vectorised (``z₂`` of shape ``(K_samples, K)``, row ``k`` shared
    by function sample ``k``), so ``bl.predict`` inside it draws from SWAG. All SWAG
    parameters must share a dtype and device.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2))
        >>> _ = bl.swag.prepare(model, rank=2)
        >>> with bl.swag.joint_low_rank(model):
        ...     bl.predict(model, torch.randn(4, 3), num_samples=8).samples.shape
        torch.Size([8, 4, 2])
    """
    hook = SharedLowRankNoise()
    handles = []
    try:
        for layer in model.modules():
            if isinstance(layer, BayesianLayer) and any(
                isinstance(s.initializer, SWAGNormal) for _, s in layer.named_random_parameters()
            ):
                handles.append(layer.register_noise_hook(hook))
        yield model
    finally:
        for h in handles:
            h.remove()


def _bn_state(model: nn.Module) -> list[tuple[_BatchNorm, dict[str, Any]]]:
    return [(m, {k: v.clone() for k, v in m.state_dict().items()}) for m in _batch_norms(model)]


def _cat(preds: list[Predictive]) -> Predictive:
    samples = torch.cat([p.samples for p in preds])
    floats = samples if samples.is_floating_point() else samples.to(torch.get_default_dtype())
    mean = floats.mean(0)
    fields: dict[str, Any] = {}
    for f in ("output_mean", "output_variance", "output_probs"):
        values = [getattr(p, f) for p in preds]
        fields[f] = None if any(v is None for v in values) else torch.cat(values)
    return Predictive(
        samples, mean, (floats - mean).square().mean(0), **fields,
        function_space=all(p.function_space for p in preds),
    )  # fmt: skip


def predict(
    model: nn.Module,
    x: Tensor,
    num_samples: int = 32,
    bn_loader: Iterable[Any] | None = None,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Predictive:
    """SWAG's predictive: ``num_samples`` function samples of ``model`` at ``x``, each a
    draw of the whole network (one ``z₂`` shared by all layers, :func:`joint_low_rank`)
    whose BatchNorm statistics are first recomputed over ``bn_loader``
    (:func:`update_bn`), as in the paper.

    Each sample: a frozen draw (:func:`bayesian_layers.frozen_sample`), a pass over
    ``bn_loader`` in train mode, then ``model(x)`` with BatchNorm in eval mode (through
    :func:`bayesian_layers.predict`). BatchNorm statistics are restored afterwards.
    Cost: ``num_samples × (len(bn_loader) + 1)`` forward passes, not vectorised; without
    ``bn_loader`` (no BatchNorm, or statistics kept at ``θ_SWA``) prefer
    ``bl.predict`` inside :func:`joint_low_rank`, which vectorises the samples.

    Args:
        model: a model with a SWAG posterior (:func:`collect`).
        x: input batch ``(B, *)``.
        num_samples: K ``≥ 1``.
        bn_loader: training batches for the BatchNorm statistics, or ``None``.
        transform: applied to each output sample (e.g. ``lambda z: z.softmax(-1)``).

    Returns:
        A :class:`~bayesian_layers.Predictive` with ``samples`` of shape ``(K, B, *out)``.

    Raises:
        ValueError: ``num_samples < 1``, or an empty ``bn_loader``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 4),
        ...                             torch.nn.BatchNorm1d(4))
        >>> _ = bl.swag.prepare(model, rank=2)
        >>> data = [(torch.randn(16, 3), None)]
        >>> bl.swag.predict(model, torch.randn(5, 3), 3, bn_loader=data).samples.shape
        torch.Size([3, 5, 4])
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"bl.swag.predict expected `num_samples` an int >= 1, got {num_samples!r}")
    saved = _bn_state(model)
    preds = []
    try:
        with joint_low_rank(model), frozen_sample(model):
            for k in range(num_samples):
                if k:
                    resample(model)
                if bn_loader is not None:
                    update_bn(model, bn_loader)
                preds.append(bl_predict(model, x, 1, transform=transform, vectorized=False))
    finally:
        for m, state in saved:
            m.load_state_dict(state)
    return _cat(preds)
