"""Monte Carlo predictive distributions, K function samples in one vectorised call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .random_variable import RandomVariable
from .sampling import bayesian_modules, vectorized_samples

__all__ = ["Predictive", "predict", "auto_chunk_size", "CHUNK_BYTES"]

#: Budget for the temporaries of one vectorised call (see :func:`auto_chunk_size`).
CHUNK_BYTES = 32 * 2**20


@dataclass
class Predictive:
    """K predictive samples and their moments.

    Attributes:
        samples: ``(K, *output_shape)``: the model's output under K function samples
            (after ``transform``).
        mean: ``output_shape``: mean over the samples.
        variance: ``output_shape``: variance over the samples (divisor K: the
            plug-in estimate of the predictive variance of the mean function).
    """

    samples: Tensor
    mean: Tensor
    variance: Tensor

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]


def _split(total: int, chunk: int) -> list[int]:
    chunk = max(1, min(chunk, total))
    sizes = [chunk] * (total // chunk)
    if total % chunk:
        sizes.append(total % chunk)
    return sizes


def auto_chunk_size(model: nn.Module, x: Tensor) -> int:
    """Function samples per vectorised call so one call's temporaries fit :data:`CHUNK_BYTES`.

    Per sample, a layer holds its weight draw and an activation about the size of
    the input batch, so the estimate is ``itemsize · (largest random parameter +
    4 · x.numel())`` bytes.
    """
    largest = max(
        (shape.numel() for m in bayesian_modules(model) for shape in m._random.values()),
        default=0,
    )
    per_sample = x.element_size() * (largest + 4 * x.numel())
    return max(1, CHUNK_BYTES // max(per_sample, 1))


def _output(out: object) -> Tensor:
    if isinstance(out, RandomVariable):
        return out.value
    if not isinstance(out, Tensor):
        raise TypeError(f"predict expected the model to return a Tensor, got {type(out).__name__}")
    return out


def predict(
    model: nn.Module,
    x: Tensor,
    num_samples: int = 32,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    vectorized: bool = True,
    chunk_size: int | None = None,
    grad: bool = False,
) -> Predictive:
    """Draw ``num_samples`` function samples of ``model`` at ``x``.

    Vectorised (default): one call of ``model`` on the input repeated K times
    along its first dimension, with every Bayesian layer drawing K parameter
    samples at once (:func:`bayesian_layers.vectorized_samples`); the model must
    treat the first dimension as the batch (true of ``nn.Sequential`` models of
    dense, convolutional, dropout, normalisation-in-eval and activation layers).
    ``vectorized=False`` loops K calls instead, for any model.

    Args:
        model: the model; its sampling mode applies (``"mean"`` gives K equal samples).
        x: input batch ``(B, *)``.
        num_samples: K.
        transform: applied to each output sample before the moments (e.g.
            ``lambda z: z.softmax(-1)`` for class probabilities).
        vectorized: batched calls (True) or a Python loop of K calls.
        chunk_size: function samples per batched call; ``None`` picks the largest
            count whose per-call temporaries (K weight draws, K activations) stay
            under :data:`CHUNK_BYTES`: past that, allocating and faulting in fresh
            memory costs more than vectorising saves.
        grad: keep the autograd graph (default: run under ``torch.no_grad()``).

    Returns:
        A :class:`Predictive` with ``samples`` of shape ``(K, B, *out)``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(bl.layers.LinearFlipout(3, 8), torch.nn.ReLU(),
        ...                             bl.layers.LinearFlipout(8, 2))
        >>> pred = bl.predict(model, torch.randn(5, 3), num_samples=16)
        >>> pred.samples.shape, pred.mean.shape
        (torch.Size([16, 5, 2]), torch.Size([5, 2]))
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"predict expected `num_samples` >= 1, got {num_samples!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"predict expected `chunk_size` >= 1 or None, got {chunk_size!r}")
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise TypeError(f"predict expected a batched Tensor input, got {type(x).__name__}")
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        if vectorized:
            chunk = auto_chunk_size(model, x) if chunk_size is None else chunk_size
            parts = []
            for k in _split(num_samples, chunk):
                xk = x.unsqueeze(0).expand(k, *x.shape).reshape(-1, *x.shape[1:])
                with vectorized_samples(model, k):
                    out = _output(model(xk))
                parts.append(out.reshape(k, x.shape[0], *out.shape[1:]))
            samples = parts[0] if len(parts) == 1 else torch.cat(parts)
        else:
            samples = torch.stack([_output(model(x)) for _ in range(num_samples)])
        if transform is not None:
            samples = transform(samples)
        mean = samples.mean(0)
        variance = samples.var(0, correction=0)
    return Predictive(samples, mean, variance)
