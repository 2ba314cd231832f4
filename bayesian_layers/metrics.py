"""Metrics for predictive distributions: likelihood, calibration, uncertainty, ranking.

Pure ``torch`` (no scipy or scikit-learn). Every function takes tensors and returns
a tensor: a 0-dim scalar for a dataset-level metric, one value per example for the
uncertainty scores (``predictive_entropy``, ``expected_entropy``,
``mutual_information``). Natural logarithms throughout (nats).

Shape conventions: ``N`` examples, ``C`` classes, ``K`` Monte Carlo samples.
The uncertainty decompositions split total predictive uncertainty into an
aleatoric part (noise the model's output distribution describes) and an
epistemic part (disagreement between function samples): entropies for
classification (:func:`predictive_entropy` = :func:`expected_entropy` +
:func:`mutual_information`), variances for regression
(:func:`variance_decomposition`).
Classification metrics take probabilities of shape ``(*, C)`` (rows sum to one) and
integer labels of shape ``(*)``; the sample-based uncertainty scores take
``(K, *, C)``. Wrong shapes raise ``ValueError`` naming the function, the argument,
what was expected and what came; so do rows that are not probabilities (entries outside
``[0, 1]`` or sums away from one, beyond ``max(1e-3, 8 eps)``: logits, say) given to
:func:`negative_log_likelihood`, :func:`brier_score`, :func:`reliability_bins` and
:func:`expected_calibration_error`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._metric_checks import (
    check_labels as _check_labels,
)
from ._metric_checks import (
    check_nonempty as _check_nonempty,
)
from ._metric_checks import (
    check_same as _check_same,
)
from ._metric_checks import (
    check_scale as _check_scale,
)
from ._metric_checks import (
    check_simplex as _check_simplex,
)
from ._metric_checks import (
    fail as _fail,
)
from ._ranking import RocCurve, aupr, auroc, roc_curve
from .uncertainty import (
    VarianceDecomposition,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    variance_decomposition,
)

__all__ = [
    "ReliabilityBins",
    "RocCurve",
    "VarianceDecomposition",
    "accuracy",
    "aupr",
    "auroc",
    "brier_score",
    "expected_calibration_error",
    "expected_entropy",
    "gaussian_nll",
    "interval_coverage",
    "mixture_gaussian_nll",
    "mutual_information",
    "negative_log_likelihood",
    "predictive_entropy",
    "reliability_bins",
    "rmse",
    "roc_curve",
    "variance_decomposition",
]


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    r"""Fraction of examples whose most probable class is the label.

    .. math:: \mathrm{acc} = \frac{1}{N}\sum_n \mathbb{1}[\arg\max_c p_{nc} = y_n]

    Args:
        probs: probabilities (or logits: only the argmax matters), shape ``(*, C)``.
        labels: integer labels, shape ``(*)``.

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """
    _check_labels("accuracy", probs, labels)
    _check_nonempty("accuracy", "labels", labels)
    return (probs.argmax(-1) == labels).to(probs.dtype).mean()


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float | None = None) -> Tensor:
    r"""Mean negative log predictive probability of the labels (log loss, in nats).

    .. math:: \mathrm{NLL} = -\frac{1}{N}\sum_n \log \max(p_{n y_n}, \epsilon)

    For a Bayesian model pass the *predictive* probabilities
    :math:`p = \frac{1}{K}\sum_k p^{(k)}` (average probabilities, not logits).

    Args:
        probs: predictive probabilities, shape ``(*, C)``.
        labels: integer labels, shape ``(*)``.
        eps: floor on the probability of the label, so a confident mistake costs
            :math:`-\log\epsilon` instead of infinity; default the machine epsilon
            of ``probs.dtype`` (as scikit-learn's ``log_loss``).

    Example:
        >>> negative_log_likelihood(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
        tensor(0.4904)
    """
    _check_labels("negative_log_likelihood", probs, labels)
    _check_nonempty("negative_log_likelihood", "labels", labels)
    _check_simplex("negative_log_likelihood", probs)
    eps = torch.finfo(probs.dtype).eps if eps is None else eps
    p_label = probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # any integer dtype
    return -p_label.clamp_min(eps).log().mean()


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    r"""Multi-class Brier score: mean squared distance to the one-hot label.

    .. math:: \mathrm{BS} = \frac{1}{N}\sum_n \sum_c (p_{nc} - \mathbb{1}[y_n = c])^2
        \in [0, 2]

    This is Brier's (1950) original definition. For two classes it is twice the
    binary score :math:`\frac1N\sum_n (p_{n1} - y_n)^2`.

    Args:
        probs: probabilities, shape ``(*, C)``.
        labels: integer labels, shape ``(*)``.

    Example:
        >>> brier_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1]))
        tensor(0.2500)
    """
    _check_labels("brier_score", probs, labels)
    _check_nonempty("brier_score", "labels", labels)
    _check_simplex("brier_score", probs)
    one_hot = torch.nn.functional.one_hot(labels.long(), probs.shape[-1]).to(probs.dtype)
    return (probs - one_hot).square().sum(-1).mean()


class ReliabilityBins(NamedTuple):
    """What a reliability diagram draws, from :func:`reliability_bins`.

    Attributes:
        edges: bin edges, shape ``(num_bins + 1,)``, from 0 to 1.
        confidence: mean top-class probability in each bin, ``(num_bins,)``
            (NaN where the bin is empty).
        accuracy: fraction correct in each bin, ``(num_bins,)`` (NaN where empty).
        counts: number of examples in each bin, ``(num_bins,)``, integer.
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    counts: Tensor


def reliability_bins(probs: Tensor, labels: Tensor, num_bins: int = 15) -> ReliabilityBins:
    r"""Bin examples by confidence :math:`\max_c p_{nc}` into equal-width bins.

    Bin :math:`b` (1-based) holds the confidences in :math:`((b-1)/B, b/B]`; a
    confidence of exactly 0 goes to the first bin (Guo et al., 2017).

    Args:
        probs: probabilities, shape ``(*, C)``.
        labels: integer labels, shape ``(*)``.
        num_bins: number of equal-width bins :math:`B` on :math:`[0, 1]`.

    Returns:
        :class:`ReliabilityBins` with per-bin mean confidence, accuracy and count.

    Example:
        >>> bins = reliability_bins(torch.tensor([[0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 0]), 2)
        >>> bins.counts.tolist(), bins.accuracy.tolist()
        ([0, 2], [nan, 0.5])
    """
    bins = _bins(probs, labels, num_bins)
    return ReliabilityBins(
        bins.edges, bins.confidence.to(probs.dtype), bins.accuracy.to(probs.dtype), bins.counts
    )


def _bins(probs: Tensor, labels: Tensor, num_bins: int) -> ReliabilityBins:
    """:func:`reliability_bins` with the per-bin means in float64 (float32 where the device
    has no float64): float16 sums of thousands of confidences would saturate."""
    _check_labels("reliability_bins", probs, labels)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise _fail("reliability_bins", "num_bins", "a positive int", repr(num_bins))
    _check_simplex("reliability_bins", probs)
    acc = torch.float32 if probs.device.type == "mps" else torch.float64  # accumulation
    confidence, prediction = probs.detach().reshape(-1, probs.shape[-1]).max(-1)
    correct = (prediction == labels.reshape(-1)).to(acc)
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=probs.dtype, device=probs.device)
    # boundaries[i-1] < conf <= boundaries[i]  ->  bin i, i.e. right-closed bins.
    index = torch.bucketize(confidence, edges[1:-1].contiguous(), right=False)  # (N,)
    counts = torch.bincount(index, minlength=num_bins)
    conf_sum = torch.zeros(num_bins, dtype=acc, device=probs.device)
    acc_sum = torch.zeros_like(conf_sum)
    conf_sum.index_add_(0, index, confidence.to(acc))
    acc_sum.index_add_(0, index, correct)
    denom = counts.to(acc)
    empty = counts == 0
    nan = torch.full_like(conf_sum, math.nan)
    conf_mean = torch.where(empty, nan, conf_sum / denom.clamp_min(1))
    acc_mean = torch.where(empty, nan, acc_sum / denom.clamp_min(1))
    return ReliabilityBins(edges, conf_mean, acc_mean, counts)


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> Tensor:
    r"""Expected calibration error of the top-class confidence (Naeini et al., 2015).

    .. math:: \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{N}\,
        \bigl|\mathrm{acc}(b) - \mathrm{conf}(b)\bigr|

    with the equal-width, right-closed bins of :func:`reliability_bins` (empty bins
    contribute nothing). ``0`` is perfectly calibrated; the bins of a reliability
    diagram come from :func:`reliability_bins`.

    Args:
        probs: probabilities, shape ``(*, C)``.
        labels: integer labels, shape ``(*)``.
        num_bins: number of bins :math:`B`.

    Example:
        >>> expected_calibration_error(torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
        ...                            torch.tensor([0, 0]), num_bins=2)
        tensor(0.2500)
    """
    _check_nonempty("expected_calibration_error", "labels", labels)
    bins = _bins(probs, labels, num_bins)  # float64 means: no float16 overflow or saturation
    weight = bins.counts.to(bins.confidence.dtype) / bins.counts.sum()
    gap = (bins.accuracy - bins.confidence).abs().nan_to_num(0.0)
    return (weight * gap).sum().to(probs.dtype)


# ----------------------------------------------------------------------- regression
def rmse(prediction: Tensor, target: Tensor) -> Tensor:
    r"""Root mean squared error.

    .. math:: \mathrm{RMSE} = \sqrt{\tfrac1N \textstyle\sum_n (\hat y_n - y_n)^2}

    Args:
        prediction: point predictions, any shape.
        target: targets of the same shape.

    Example:
        >>> rmse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
        tensor(1.4142)
    """
    _check_same("rmse", ("prediction", "target"), prediction, target)
    _check_nonempty("rmse", "target", target)
    error = prediction - target
    if not error.is_floating_point():  # integer predictions and targets (counts)
        error = error.to(torch.get_default_dtype())
    return error.square().mean().sqrt()


def gaussian_nll(loc: Tensor, scale: Tensor | float, target: Tensor) -> Tensor:
    r"""Mean negative log density of the targets under :math:`\mathcal N(\mu, \sigma^2)`.

    .. math:: \mathrm{NLL} = \frac1N\sum_n \Bigl[\tfrac12\log(2\pi\sigma_n^2)
        + \frac{(y_n - \mu_n)^2}{2\sigma_n^2}\Bigr]

    Args:
        loc: predictive means :math:`\mu`, any shape.
        scale: predictive standard deviations :math:`\sigma > 0` (not variances),
            broadcastable to ``loc`` (a float for a homoscedastic model).
        target: targets, the shape of ``loc``.

    Example:
        >>> gaussian_nll(torch.tensor([0.0]), 1.0, torch.tensor([0.0]))
        tensor(0.9189)
    """
    _check_same("gaussian_nll", ("loc", "target"), loc, target)
    _check_nonempty("gaussian_nll", "target", target)
    scale = _check_scale("gaussian_nll", scale, loc)
    z = (target - loc) / scale
    return (0.5 * z.square() + scale.log() + 0.5 * math.log(2 * math.pi)).mean()


def mixture_gaussian_nll(locs: Tensor, scale: Tensor | float, target: Tensor) -> Tensor:
    r"""Mean negative log density under an equal-weight mixture of K Gaussians.

    The Monte Carlo predictive of a Bayesian regression model with K function
    samples :math:`\mu^{(k)}` and observation noise :math:`\sigma`:

    .. math:: \mathrm{NLL} = -\frac1N\sum_n \log \frac1K\sum_{k=1}^K
        \mathcal N\bigl(y_n \mid \mu^{(k)}_n, \sigma_n^2\bigr)

    computed with ``logsumexp`` over k. With K = 1 it equals :func:`gaussian_nll`.

    Args:
        locs: means of the K components, shape ``(K, *)``.
        scale: noise standard deviation, broadcastable to ``locs`` (a float, or a
            tensor of shape ``(*)`` or ``(K, *)``).
        target: targets, shape ``(*)``.

    Example:
        >>> mixture_gaussian_nll(torch.tensor([[-1.0], [1.0]]), 1.0, torch.tensor([-1.0]))
        tensor(1.4852)
    """
    if locs.dim() < 1 or tuple(locs.shape[1:]) != tuple(target.shape):
        raise _fail(
            "mixture_gaussian_nll",
            "locs",
            f"of shape (K, *target.shape) = (K, {', '.join(map(str, target.shape))})",
            f"shape {tuple(locs.shape)}",
        )
    _check_nonempty("mixture_gaussian_nll", "locs", locs)
    scale = _check_scale("mixture_gaussian_nll", scale, locs)
    z = (target - locs) / scale  # (K, *)
    log_prob = -0.5 * z.square() - scale.log() - 0.5 * math.log(2 * math.pi)
    log_mix = torch.logsumexp(log_prob, dim=0) - math.log(locs.shape[0])  # (*)
    return -log_mix.mean()


def interval_coverage(lower: Tensor, upper: Tensor, target: Tensor) -> Tensor:
    r"""Fraction of targets inside their predictive interval (closed at both ends).

    .. math:: \mathrm{cov} = \frac1N \sum_n \mathbb{1}[l_n \le y_n \le u_n]

    A calibrated central 90% interval covers about 0.9 of held-out targets.

    Args:
        lower: lower interval ends, any shape.
        upper: upper interval ends, the shape of ``lower``, with ``lower <= upper``.
        target: targets, the shape of ``lower``.

    Example:
        >>> interval_coverage(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]),
        ...                   torch.tensor([0.5, 2.0]))
        tensor(0.5000)
    """
    _check_same("interval_coverage", ("lower", "upper", "target"), lower, upper, target)
    _check_nonempty("interval_coverage", "target", target)
    if (lower > upper).any():
        raise _fail("interval_coverage", "lower", "<= upper everywhere", "lower > upper")
    inside = (lower <= target) & (target <= upper)
    dtype = target.dtype if target.is_floating_point() else torch.get_default_dtype()
    return inside.to(dtype).mean()
