"""Uncertainty scores and decompositions of Monte Carlo predictive distributions.

Classification: predictive entropy = expected entropy (aleatoric) + mutual
information (epistemic, BALD). Regression: the law of total variance, total =
mean of the output variances (aleatoric) + variance of the output means
(epistemic). ``K`` Monte Carlo samples lead every sample-based input; natural
logarithms (nats). Re-exported by :mod:`bayesian_layers.metrics`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._metric_checks import (
    check_nonempty as _check_nonempty,
)
from ._metric_checks import (
    check_probs as _check_probs,
)
from ._metric_checks import (
    check_same as _check_same,
)
from ._metric_checks import (
    check_sample_probs as _check_sample_probs,
)
from ._metric_checks import (
    check_simplex as _check_simplex,
)
from ._metric_checks import (
    fail as _fail,
)

__all__ = [
    "VarianceDecomposition",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "variance_decomposition",
]


# ----------------------------------------------------------- uncertainty decomposition
def predictive_entropy(probs_mean: Tensor) -> Tensor:
    r"""Entropy of the predictive distribution, one value per example.

    .. math:: \mathbb{H}[y \mid x] = -\sum_c \bar p_c \log \bar p_c, \qquad
        \bar p = \tfrac{1}{K}\textstyle\sum_k p^{(k)}

    Total uncertainty; :math:`0 \le \mathbb{H} \le \log C`, with :math:`0 \log 0 = 0`.

    Args:
        probs_mean: predictive probabilities, shape ``(*, C)``.

    Returns:
        Entropies of shape ``(*)``.

    Example:
        >>> predictive_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor([0.6931, 0.0000])
    """
    _check_probs("predictive_entropy", probs_mean, "probs_mean")
    _check_simplex("predictive_entropy", probs_mean, "probs_mean")
    return entropy(probs_mean)


def entropy(probs: Tensor) -> Tensor:
    """``-Σ_c p_c log p_c`` over the last dim, unchecked: for callers whose ``probs`` are
    a softmax they computed (the public functions check their argument)."""
    # `+ 0.0` turns the -0.0 of a one-hot row into 0.0.
    return torch.special.entr(probs).sum(-1) + 0.0


def entropy_decomposition(prob_samples: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, aleatoric, epistemic)`` entropies ``(*)`` of ``(K, *, C)`` probabilities,
    unchecked (as :func:`entropy`): the predictive entropy, the expected entropy and their
    difference, the mutual information, clamped at 0 against rounding."""
    total, aleatoric = entropy(prob_samples.mean(0)), entropy(prob_samples).mean(0)
    return total, aleatoric, (total - aleatoric).clamp_min(0.0)


def expected_entropy(prob_samples: Tensor) -> Tensor:
    r"""Mean entropy of the per-sample predictive distributions (aleatoric part).

    .. math:: \mathbb{E}_{q(\theta)}\mathbb{H}[y \mid x, \theta]
        \approx \frac{1}{K}\sum_k \Bigl(-\sum_c p^{(k)}_c \log p^{(k)}_c\Bigr)

    Args:
        prob_samples: probabilities under K function samples, shape ``(K, *, C)``.

    Returns:
        Expected entropies of shape ``(*)``.

    Example:
        >>> expected_entropy(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        tensor([0.])
    """
    _check_sample_probs("expected_entropy", prob_samples)
    _check_simplex("expected_entropy", prob_samples, "prob_samples")
    return entropy(prob_samples).mean(0)


def mutual_information(prob_samples: Tensor) -> Tensor:
    r"""Mutual information between the label and the weights (BALD; epistemic part).

    .. math:: \mathbb{I}[y; \theta \mid x] = \mathbb{H}\Bigl[\tfrac1K\textstyle\sum_k
        p^{(k)}\Bigr] - \tfrac1K\textstyle\sum_k \mathbb{H}\bigl[p^{(k)}\bigr] \ \ge 0

    Non-negative by concavity of the entropy (Jensen), and zero when all samples
    agree; values are clamped at 0 to remove rounding error. Houlsby et al. (2011).

    Args:
        prob_samples: probabilities under K function samples, shape ``(K, *, C)``.

    Returns:
        Mutual information of shape ``(*)``, in nats.

    Example:
        >>> mutual_information(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        tensor([0.6931])
    """
    _check_sample_probs("mutual_information", prob_samples)
    _check_simplex("mutual_information", prob_samples, "prob_samples")
    return entropy_decomposition(prob_samples)[2]


class VarianceDecomposition(NamedTuple):
    """The law of total variance, from :func:`variance_decomposition`.

    Attributes:
        aleatoric: mean of the per-sample variances, shape ``(*)``.
        epistemic: variance of the per-sample means, shape ``(*)``.
        total: ``aleatoric + epistemic``, shape ``(*)``.
    """

    aleatoric: Tensor
    epistemic: Tensor
    total: Tensor


def variance_decomposition(means: Tensor, variances: Tensor) -> VarianceDecomposition:
    r"""Split the predictive variance of a regression model into aleatoric and epistemic parts.

    With :math:`\mu_k, \sigma^2_k` the mean and variance of the output
    distribution under function sample :math:`k` (e.g. ``layers.Normal`` after
    Bayesian layers), the predictive :math:`p(y \mid x) = \frac1K\sum_k
    p(y \mid x, \theta_k)` has, by the law of total variance,

    .. math:: \mathrm{Var}[y \mid x]
        = \underbrace{\frac1K\sum_k \sigma^2_k}_{\text{aleatoric}}
        + \underbrace{\frac1K\sum_k \bigl(\mu_k - \bar\mu\bigr)^2}_{\text{epistemic}},
        \qquad \bar\mu = \frac1K\sum_k \mu_k

    (divisor K: the exact variance of the K-component mixture). The epistemic
    part is 0 when every function sample predicts the same mean.

    Args:
        means: output means under K function samples, shape ``(K, *)``.
        variances: output variances (not standard deviations), the shape of ``means``.

    Returns:
        :class:`VarianceDecomposition` of tensors of shape ``(*)``.

    Example:
        >>> variance_decomposition(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))
        VarianceDecomposition(aleatoric=tensor([2.]), epistemic=tensor([1.]), total=tensor([3.]))
    """
    fn = "variance_decomposition"
    if means.dim() < 1 or not means.is_floating_point():
        raise _fail(
            fn, "means", "a floating tensor of shape (K, *)",
            f"{means.dtype} of shape {tuple(means.shape)}",
        )  # fmt: skip
    _check_same(fn, ("means", "variances"), means, variances)
    _check_nonempty(fn, "means", means)
    if (variances < 0).any():
        raise _fail(fn, "variances", "non-negative values (variances)", "a value < 0")
    aleatoric = variances.mean(0)
    epistemic = means.var(0, correction=0)
    return VarianceDecomposition(aleatoric, epistemic, aleatoric + epistemic)


# ------------------------------------------------------------------------- ranking
