"""Argument checks shared by the metric modules: clear ValueErrors, never NaN."""

from __future__ import annotations

import torch
from torch import Tensor


# --------------------------------------------------------------------------- checks
def fail(fn: str, arg: str, expected: str, got: object) -> ValueError:
    return ValueError(f"{fn} expected {arg} {expected}, got {got}")


def check_probs(fn: str, probs: Tensor, arg: str = "probs") -> None:
    if probs.dim() < 1 or not probs.is_floating_point():
        raise fail(
            fn,
            arg,
            "a floating tensor of shape (*, C)",
            f"{probs.dtype} of shape {tuple(probs.shape)}",
        )


def check_labels(fn: str, probs: Tensor, labels: Tensor) -> None:
    check_probs(fn, probs)
    if labels.is_floating_point() or labels.is_complex():
        raise fail(fn, "labels", "an integer tensor", f"dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(probs.shape[:-1]):
        raise fail(
            fn,
            "labels",
            f"of shape {tuple(probs.shape[:-1])} (probs.shape[:-1])",
            f"shape {tuple(labels.shape)}",
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= probs.shape[-1]):
        raise fail(
            fn,
            "labels",
            f"in [0, {probs.shape[-1] - 1}]",
            f"values in [{int(labels.min())}, {int(labels.max())}]",
        )


def check_simplex(fn: str, probs: Tensor, arg: str = "probs") -> None:
    """Rows of probabilities: entries in ``[0, 1]`` summing to one, up to ``max(1e-3, 8 eps)``
    (``eps`` of the dtype: a low-precision softmax passes). Logits, scores that were
    never normalised, or NaN raise instead of giving a meaningless number."""
    if probs.numel() == 0:
        return
    p = probs.detach()
    tol = max(1e-3, 8 * torch.finfo(p.dtype).eps)
    sums = p.sum(-1, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
    lo, hi, off = torch.stack([p.min().to(sums), p.max().to(sums), (sums - 1).abs().max()]).tolist()
    if not (lo >= -tol and hi <= 1 + tol and off <= tol):  # NaN too; one host sync
        raise fail(
            fn,
            arg,
            "probabilities: entries in [0, 1] and rows (the last dim) summing to 1 (logits? "
            "apply softmax first)",
            f"entries in [{lo:.4g}, {hi:.4g}] and row sums in "
            f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]",
        )


def check_same(fn: str, names: tuple[str, ...], *tensors: Tensor) -> None:
    shape = tuple(tensors[0].shape)
    for name, t in zip(names[1:], tensors[1:], strict=True):
        if tuple(t.shape) != shape:
            raise fail(fn, name, f"of shape {shape} (the shape of {names[0]})", f"{tuple(t.shape)}")


def check_nonempty(fn: str, arg: str, t: Tensor) -> None:
    if t.numel() == 0:
        raise fail(fn, arg, "at least one element", "an empty tensor")


# -------------------------------------------------------------------- classification


def check_scale(fn: str, scale: Tensor | float, like: Tensor) -> Tensor:
    # integer means and targets (counts) must not truncate the scale (1.5 -> 1, 0.5 -> 0)
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    scale = torch.as_tensor(scale, dtype=dtype, device=like.device)
    try:
        fits = torch.broadcast_shapes(scale.shape, like.shape) == like.shape
    except RuntimeError:
        fits = False
    if not fits:  # a scale that would enlarge the result (e.g. (N, 1) for (N,)) is refused
        raise fail(
            fn, "scale", f"broadcastable to {tuple(like.shape)}", f"shape {tuple(scale.shape)}"
        )
    if (scale <= 0).any():
        raise fail(fn, "scale", "positive values (a standard deviation)", "a value <= 0")
    return scale


def check_sample_probs(fn: str, prob_samples: Tensor) -> None:
    if prob_samples.dim() < 2 or not prob_samples.is_floating_point():
        raise fail(
            fn,
            "prob_samples",
            "a floating tensor of shape (K, *, C)",
            f"{prob_samples.dtype} of shape {tuple(prob_samples.shape)}",
        )
    if prob_samples.shape[0] == 0:  # the mean over no samples is NaN
        raise fail(fn, "prob_samples", "at least one sample (K >= 1)", "K = 0")
