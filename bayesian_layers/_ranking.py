"""Ranking metrics for a binary detection task (e.g. out-of-distribution inputs as
positives, scored by an uncertainty): AUROC, the ROC curve and average precision (AUPR).

Higher scores mean "more likely positive". Scores are ``(N,)`` real tensors, labels
``(N,)`` booleans or 0/1 with at least one positive and one negative; tied scores form
one threshold, as in scikit-learn's ``roc_curve`` and ``average_precision_score``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._metric_checks import check_same as _check_same
from ._metric_checks import fail as _fail

__all__ = ["RocCurve", "aupr", "auroc", "roc_curve"]


def _check_scores(fn: str, scores: Tensor, is_positive: Tensor) -> tuple[Tensor, int, int]:
    """The labels as booleans and the numbers of positives and negatives."""
    if scores.dim() != 1:
        raise _fail(fn, "scores", "shape (N,)", f"shape {tuple(scores.shape)}")
    if scores.is_complex():
        raise _fail(fn, "scores", "a real tensor", f"dtype {scores.dtype}")
    _check_same(fn, ("scores", "is_positive"), scores, is_positive)
    if torch.isnan(scores.double()).any():
        raise _fail(fn, "scores", "no NaN values", "NaN")
    if is_positive.dtype != torch.bool and bool(((is_positive != 0) & (is_positive != 1)).any()):
        # class indices 0, 1, 2 (or probabilities) would be read as "nonzero = positive"
        bad = is_positive[(is_positive != 0) & (is_positive != 1)].flatten()[0].item()
        raise _fail(fn, "is_positive", "booleans or 0/1 values", f"the value {bad!r}")
    positive = is_positive.to(torch.bool)
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise _fail(
            fn,
            "is_positive",
            "at least one positive and one negative",
            f"{n_pos} positives and {n_neg} negatives",
        )
    return positive, n_pos, n_neg


def _cumulative_counts(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True and false positives above each distinct threshold, highest threshold first:
    ``(thresholds, tp, fp)``, each ``(T,)``, float64."""
    order = torch.argsort(scores.detach().double(), descending=True, stable=True)
    s = scores.detach().double()[order]
    pos = positive[order].double()
    tp, fp = pos.cumsum(0), (1 - pos).cumsum(0)
    last = torch.ones_like(s, dtype=torch.bool)  # the last index of each tie group
    last[:-1] = s[1:] != s[:-1]
    return s[last], tp[last], fp[last]


class RocCurve(NamedTuple):
    """The ROC curve from :func:`roc_curve`, one point per threshold (highest first).

    Attributes:
        false_positive_rate: ``(T + 1,)``, from 0 up to 1.
        true_positive_rate: ``(T + 1,)``, from 0 up to 1.
        thresholds: ``(T + 1,)``: ``+inf`` (nothing flagged), then the distinct scores in
            decreasing order; a point flags the scores ``>=`` its threshold.
    """

    false_positive_rate: Tensor
    true_positive_rate: Tensor
    thresholds: Tensor


def roc_curve(scores: Tensor, is_positive: Tensor) -> RocCurve:
    r"""False- and true-positive rates at every distinct threshold of ``scores``.

    The area under it (trapezoids) is :func:`auroc`. Every threshold is kept (no
    collinear points dropped), as scikit-learn's ``roc_curve(drop_intermediate=False)``.

    Args:
        scores: real scores, shape ``(N,)``.
        is_positive: boolean (or 0/1) labels, shape ``(N,)``.

    Returns:
        :class:`RocCurve` of float64 tensors, shape ``(T + 1,)`` for ``T`` distinct scores.

    Example:
        >>> curve = roc_curve(torch.tensor([0.1, 0.4, 0.4, 0.8]),
        ...                   torch.tensor([False, False, True, True]))
        >>> curve.true_positive_rate.tolist(), curve.false_positive_rate.tolist()
        ([0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0])
    """
    positive, n_pos, n_neg = _check_scores("roc_curve", scores, is_positive)
    thresholds, tp, fp = _cumulative_counts(scores, positive)
    zero = tp.new_zeros(1)
    return RocCurve(
        torch.cat([zero, fp / n_neg]),
        torch.cat([zero, tp / n_pos]),
        torch.cat([tp.new_full((1,), float("inf")), thresholds]),
    )


def aupr(scores: Tensor, is_positive: Tensor) -> Tensor:
    r"""Area under the precision-recall curve, as average precision.

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k

    over the distinct thresholds in decreasing order, with precision :math:`P_k` and
    recall :math:`R_k` of the scores at or above threshold :math:`k` and :math:`R_0 = 0`
    (a step function, no interpolation: scikit-learn's ``average_precision_score``).
    A random scorer gets about the fraction of positives; a perfect one gets 1.

    Args:
        scores: real scores, shape ``(N,)``.
        is_positive: boolean (or 0/1) labels, shape ``(N,)``.

    Returns:
        A float64 scalar in ``(0, 1]``.

    Example:
        >>> aupr(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        tensor(0.8333, dtype=torch.float64)
    """
    positive, n_pos, _ = _check_scores("aupr", scores, is_positive)
    _, tp, fp = _cumulative_counts(scores, positive)
    precision, recall = tp / (tp + fp), tp / n_pos
    return (torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum()


def auroc(scores: Tensor, is_positive: Tensor) -> Tensor:
    r"""Area under the ROC curve from the rank-sum (Mann-Whitney U) statistic.

    .. math:: \mathrm{AUROC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+\, n_-}
        = P(s_+ > s_-) + \tfrac12 P(s_+ = s_-)

    where :math:`R_+` is the sum of the ranks of the positive examples among all
    scores; tied scores share their average rank, so a tie counts one half.
    Higher scores should mean "more likely positive". O(N log N).

    Args:
        scores: real scores, shape ``(N,)``.
        is_positive: boolean (or 0/1) labels, shape ``(N,)``, with at least one
            positive and one negative.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([False, False, True, True]))
        tensor(0.8750, dtype=torch.float64)
    """
    positive, n_pos, n_neg = _check_scores("auroc", scores, is_positive)
    _, inverse, counts = torch.unique(scores.detach(), return_inverse=True, return_counts=True)
    end = counts.cumsum(0).double()  # 1-based rank of the last element of each tie group
    average_rank = end - (counts.double() - 1) / 2  # mean of ranks end-count+1 .. end
    rank_sum = average_rank[inverse][positive].sum()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
