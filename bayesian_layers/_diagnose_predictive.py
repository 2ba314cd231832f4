"""The predictive half of :func:`bayesian_layers.diagnose`: calibration on held-out data.

Classification (integer labels): accuracy against mean confidence, ECE and NLL of the
Monte Carlo predictive, flagged under- or overconfident past a tolerance and three
standard errors. Regression (float targets): RMSE, and for a normal output the NLL and
the coverage of the central 90% interval of a moment-matched normal predictive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import metrics
from .predictive import predict

#: Least |accuracy - confidence| worth a warning (also needs 3 standard errors).
CONFIDENCE_TOLERANCE = 0.01
#: Least |coverage - 0.9| of the 90% interval worth a warning (also needs 3 s.e.).
COVERAGE_TOLERANCE = 0.05
_Z90 = 1.6448536269514722  # the standard normal's 95% quantile


def _batches(loader: Iterable[Any], device: torch.device | None) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(loader, (Tensor, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"diagnose expected `loader` to be an iterable of (x, y) batches (a DataLoader), "
            f"got {type(loader).__name__}"
        )
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = f"a {type(batch).__name__}" + (
                f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
            )
            raise TypeError(f"diagnose expected `loader` to yield (x, y) pairs, got {got}")
        x, y = batch
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(
                f"diagnose expected `loader` to yield (x, y) tensors, got "
                f"({type(x).__name__}, {type(y).__name__})"
            )
        if x.dim() == 0 or x.shape[0] != (y.shape[0] if y.dim() else -1):
            raise ValueError(
                f"diagnose expected `loader` batches with x of shape (B, ...) and y of shape "
                f"(B, ...), got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        yield (x, y) if device is None else (x.to(device), y.to(device))


def _calibration(model: nn.Module, loader: Iterable[Any], k: int, bins: int) -> dict[str, Any]:
    param = next(model.parameters(), None)
    probs, labels, locs, variances, means, targets = [], [], [], [], [], []
    for x, y in _batches(loader, None if param is None else param.device):
        pred = predict(model, x, k)
        if y.is_floating_point():
            if pred.mean.numel() != y.numel():
                raise ValueError(
                    f"diagnose expected `loader` targets with one value per model output, "
                    f"got targets {tuple(y.shape)} for outputs {tuple(pred.mean.shape)}"
                )
            targets.append(y.reshape(-1))
            if pred.output_mean is not None and pred.output_variance is not None:
                m, v = pred.output_mean, pred.output_variance
                loc = m.mean(0)
                locs.append(loc.reshape(y.shape))
                variances.append((v.mean(0) + (m - loc).square().mean(0)).reshape(y.shape))
            else:
                means.append(pred.mean.reshape(y.shape))
            continue
        if y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"diagnose expected integer or float labels, got {y.dtype}")
        if pred.output_probs is not None:
            p = pred.output_probs.mean(0)
        elif pred.samples.is_floating_point() and pred.output_mean is None:
            p = pred.samples.float().softmax(-1).mean(0)
        else:
            raise TypeError(
                "diagnose expected a classifier (logits or a Categorical output) for the "
                f"integer labels of `loader`, got outputs of dtype {pred.samples.dtype}"
            )
        if p.shape[:-1] != y.shape or bool((y < 0).any()) or bool((y >= p.shape[-1]).any()):
            raise ValueError(
                f"diagnose expected `loader` labels of shape {tuple(p.shape[:-1])} in "
                f"[0, {p.shape[-1]}), got shape {tuple(y.shape)}, range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        probs.append(p.reshape(-1, p.shape[-1]).float())
        labels.append(y.reshape(-1))
    if not probs and not targets:
        raise ValueError("diagnose got an empty `loader`: no (x, y) batch came")
    if probs and targets:
        raise ValueError("diagnose expected `loader` labels all integer or all float, got both")
    if probs:
        return _classification(torch.cat(probs), torch.cat(labels), k, bins)
    return _regression(torch.cat(targets), locs, variances, means, k)


def _classification(p: Tensor, y: Tensor, k: int, bins: int) -> dict[str, Any]:
    n = y.numel()
    conf = p.max(-1).values
    correct = (p.argmax(-1) == y).float()
    diff = correct - conf
    se = float(diff.std() / math.sqrt(n)) if n > 1 else math.inf
    out: dict[str, Any] = {
        "task": "classification",
        "num_examples": n,
        "num_samples": k,
        "accuracy": float(correct.mean()),
        "confidence": float(conf.mean()),
        "ece": float(metrics.expected_calibration_error(p, y, bins)),
        "nll": float(metrics.negative_log_likelihood(p, y)),
        "gap_se": se,
    }
    gap = out["accuracy"] - out["confidence"]
    if abs(gap) > max(CONFIDENCE_TOLERANCE, 3 * se):
        out["code"] = "underconfident" if gap > 0 else "overconfident"
    return out


def _regression(
    y: Tensor, locs: list[Tensor], variances: list[Tensor], means: list[Tensor], k: int
) -> dict[str, Any]:
    n = y.numel()
    out: dict[str, Any] = {"task": "regression", "num_examples": n, "num_samples": k}
    if means or not locs:
        mean = torch.cat([t.reshape(-1) for t in means]) if means else None
        if locs:
            raise ValueError("diagnose: some batches gave a normal output and others did not")
        out["rmse"] = float((mean.float() - y.reshape(-1).float()).square().mean().sqrt())  # type: ignore[union-attr]
        out["note"] = "no output distribution: calibration skipped"
        return out
    loc = torch.cat([t.reshape(-1) for t in locs]).float()
    var = torch.cat([t.reshape(-1) for t in variances]).float().clamp_min(1e-12)
    t = y.reshape(-1).float()
    out["rmse"] = float((loc - t).square().mean().sqrt())
    out["nll"] = float(0.5 * ((t - loc).square() / var + var.log() + math.log(2 * math.pi)).mean())
    out["coverage90"] = cov = float(((t - loc).abs() <= _Z90 * var.sqrt()).float().mean())
    out["note"] = "normal approximation of the predictive"
    if abs(cov - 0.9) > max(COVERAGE_TOLERANCE, 3 * math.sqrt(0.09 / n)):
        out["code"] = "intervals_too_narrow" if cov < 0.9 else "intervals_too_wide"
    return out
