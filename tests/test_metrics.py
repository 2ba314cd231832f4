"""Tests for ``bayesian_layers.metrics`` against independent references.

References: scikit-learn (``roc_auc_score``, ``log_loss``, ``brier_score_loss``,
``accuracy_score``), ``scipy.stats.norm.logpdf`` / ``scipy.special.logsumexp``, and
hand-enumerated cases for the calibration error. All random inputs use fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp
from sklearn import metrics as skm

from bayesian_layers import metrics as M


def _random_probs(n: int, c: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype).mul(2).softmax(-1)


def _random_labels(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, c, (n,), generator=g)


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize("c", [2, 3, 10])
def test_nll_matches_sklearn_log_loss(c: int) -> None:
    probs, labels = _random_probs(200, c, seed=c), _random_labels(200, c, seed=c)
    ref = skm.log_loss(labels.numpy(), probs.numpy(), labels=list(range(c)))
    assert M.negative_log_likelihood(probs, labels).item() == pytest.approx(ref, rel=1e-12)


def test_nll_floors_zero_probability() -> None:
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    nll = M.negative_log_likelihood(probs, torch.tensor([1]))
    assert nll.item() == pytest.approx(-math.log(torch.finfo(torch.float64).eps))
    assert M.negative_log_likelihood(probs, torch.tensor([1]), eps=1e-3).item() == pytest.approx(
        -math.log(1e-3)
    )


@pytest.mark.parametrize("c", [3, 10])
def test_brier_matches_sklearn_multiclass(c: int) -> None:
    probs, labels = _random_probs(300, c, seed=10 + c), _random_labels(300, c, seed=10 + c)
    ref = skm.brier_score_loss(labels.numpy(), probs.numpy(), labels=list(range(c)))
    assert M.brier_score(probs, labels).item() == pytest.approx(ref, rel=1e-12)


def test_brier_binary_is_twice_sklearn_binary() -> None:
    probs, labels = _random_probs(300, 2, seed=3), _random_labels(300, 2, seed=3)
    ref = skm.brier_score_loss(labels.numpy(), probs[:, 1].numpy())
    assert M.brier_score(probs, labels).item() == pytest.approx(2 * ref, rel=1e-12)


def test_accuracy_matches_sklearn() -> None:
    probs, labels = _random_probs(500, 5, seed=4), _random_labels(500, 5, seed=4)
    ref = skm.accuracy_score(labels.numpy(), probs.argmax(-1).numpy())
    assert M.accuracy(probs, labels).item() == pytest.approx(ref)


def test_classification_metrics_accept_batch_dims() -> None:
    probs, labels = _random_probs(24, 4, seed=5), _random_labels(24, 4, seed=5)
    for fn in (M.accuracy, M.negative_log_likelihood, M.brier_score):
        flat = fn(probs, labels)
        torch.testing.assert_close(fn(probs.reshape(2, 12, 4), labels.reshape(2, 12)), flat)


# ------------------------------------------------------------------- calibration
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_classification_metrics_accept_every_integer_label_dtype(dtype: torch.dtype) -> None:
    """Labels of any integer dtype give the int64 labels' values (one_hot and gather
    take int64 only)."""
    probs = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    for fn in (M.accuracy, M.negative_log_likelihood, M.brier_score, M.expected_calibration_error):
        assert torch.equal(fn(probs, labels.to(dtype)), fn(probs, labels)), fn.__name__


@pytest.mark.parametrize(
    "fn", [M.negative_log_likelihood, M.brier_score, M.expected_calibration_error]
)
def test_rows_that_are_not_probabilities_raise(fn) -> None:
    """Logits (or unnormalised scores) are refused, not turned into a number; a float16
    softmax, whose rows sum to one only to its precision, passes."""
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    name = "reliability_bins" if fn is M.expected_calibration_error else fn.__name__
    with pytest.raises(ValueError, match=rf"{name} expected probs probabilities: entries in"):
        fn(logits, labels)
    with pytest.raises(ValueError, match=r"row sums in \[2"):
        fn(2 * logits.softmax(-1), labels)
    assert torch.isfinite(fn((4 * logits).softmax(-1).half(), labels))
    with pytest.raises(ValueError, match=r"entries in \[nan, nan\]"):
        fn(torch.full((6, 3), math.nan), labels)


@pytest.mark.parametrize(
    ("fn", "arg", "lead"),
    [
        (M.predictive_entropy, "probs_mean", ()),
        (M.expected_entropy, "prob_samples", (4,)),
        (M.mutual_information, "prob_samples", (4,)),
    ],
)
def test_entropies_of_rows_that_are_not_probabilities_raise(fn, arg: str, lead: tuple) -> None:
    """The uncertainty scores refuse logits (an entropy of -inf, or a negative one,
    before) and NaN, naming the function and the argument; a float16 softmax passes."""
    logits = torch.randn(*lead, 6, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"{fn.__name__} expected {arg} probabilities"):
        fn(logits)
    with pytest.raises(ValueError, match=r"entries in \[nan, nan\]"):
        fn(torch.full_like(logits, math.nan))
    value = fn((4 * logits).softmax(-1).half())
    assert value.shape == (6,) and torch.isfinite(value).all() and (value >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ece_of_many_low_precision_probabilities_is_accumulated_exactly(dtype) -> None:
    """70 000 examples at confidence 0.875 (exact in every dtype), 60% right: ECE 0.275.
    float16 sums of the bin saturated at 2048 (ECE 0, bin means 0.03) and its counts
    overflowed past 65 504 (an infinite weight)."""
    n = 70_000
    probs = torch.tensor([[0.875, 0.125]], dtype=dtype).expand(n, 2)
    labels = (torch.arange(n) % 5 >= 3).long()  # 3 of every 5 right
    ece = M.expected_calibration_error(probs, labels)
    assert ece.dtype == dtype
    assert ece.item() == pytest.approx(0.275, abs=1e-3)
    bins = M.reliability_bins(probs, labels)
    assert bins.confidence[-2].item() == 0.875  # exact; 0.6 to the dtype's resolution:
    assert bins.accuracy[-2].item() == pytest.approx(0.6, abs=4e-3)


def test_ece_hand_enumerated_two_bins() -> None:
    # Confidences 0.9, 0.8 (bin (0.5, 1]) and 0.6, 0.55 (same bin), plus 0.5 in (0, 0.5].
    probs = torch.tensor(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55], [0.5, 0.5]], dtype=torch.float64
    )
    labels = torch.tensor([0, 0, 0, 1, 1])
    # Predictions: 0, 1, 0, 1, 0 (argmax picks the first of a tie) -> correct: 1, 0, 1, 1, 0.
    # Bin (0.5, 1]: n=4, conf = (0.9+0.8+0.6+0.55)/4 = 0.7125, acc = 3/4 -> gap 0.0375.
    # Bin (0, 0.5]: n=1, conf = 0.5, acc = 0 -> gap 0.5.
    expected = 4 / 5 * 0.0375 + 1 / 5 * 0.5
    ece = M.expected_calibration_error(probs, labels, num_bins=2)
    assert ece.item() == pytest.approx(expected, abs=1e-12)
    bins = M.reliability_bins(probs, labels, num_bins=2)
    assert bins.counts.tolist() == [1, 4]
    torch.testing.assert_close(bins.confidence, torch.tensor([0.5, 0.7125], dtype=torch.float64))
    torch.testing.assert_close(bins.accuracy, torch.tensor([0.0, 0.75], dtype=torch.float64))
    torch.testing.assert_close(bins.edges, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_ece_bins_are_right_closed_and_empty_bins_are_nan() -> None:
    # Three classes, 10 bins. Confidence exactly 0.4 belongs to (0.3, 0.4], bin index 3;
    # confidence 1.0 to the last bin.
    probs = torch.tensor([[0.4, 0.3, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    bins = M.reliability_bins(probs, labels, num_bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert torch.isnan(bins.confidence[[0, 1, 2, 4, 5, 6, 7, 8]]).all()
    # Gaps: |0 - 0.4| for the wrong one, |1 - 1| for the right one; weights 1/2 each.
    ece = M.expected_calibration_error(probs, labels, num_bins=10)
    assert ece.item() == pytest.approx(0.2, abs=1e-12)


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    # Four examples at confidence 0.75, three of them right.
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert M.expected_calibration_error(probs, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_ece_brute_force_loop() -> None:
    probs, labels = _random_probs(400, 6, seed=7), _random_labels(400, 6, seed=7)
    conf, pred = probs.max(-1)
    num_bins, total = 15, 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        mask = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if mask.any():
            acc = (pred[mask] == labels[mask]).double().mean()
            total += mask.double().mean() * (acc - conf[mask].mean()).abs()
    ece = M.expected_calibration_error(probs, labels, num_bins)
    assert ece.item() == pytest.approx(float(total), abs=1e-12)


# ------------------------------------------------------------ uncertainty scores
def test_entropy_closed_forms() -> None:
    uniform = torch.full((3, 7), 1 / 7, dtype=torch.float64)
    torch.testing.assert_close(
        M.predictive_entropy(uniform), torch.full((3,), math.log(7.0), dtype=torch.float64)
    )
    one_hot = torch.eye(4)
    assert torch.equal(M.predictive_entropy(one_hot), torch.zeros(4))


def test_mutual_information_decomposition_and_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(16, 50, 5, generator=g, dtype=torch.float64).mul(3).softmax(-1)
    mi = M.mutual_information(samples)
    total = M.predictive_entropy(samples.mean(0))
    aleatoric = M.expected_entropy(samples)
    assert mi.shape == (50,)
    assert (mi >= 0).all()
    torch.testing.assert_close(mi, total - aleatoric)
    assert (mi <= total + 1e-12).all()
    # Reference: numpy, entropy of the mean minus the mean of the entropies.
    p = samples.numpy()
    ref = -(p.mean(0) * np.log(p.mean(0))).sum(-1) + (p * np.log(p)).sum(-1).mean(0)
    np.testing.assert_allclose(mi.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_mutual_information_is_zero_when_samples_agree() -> None:
    probs = _random_probs(30, 4, seed=8)
    samples = probs.expand(10, 30, 4)
    torch.testing.assert_close(M.mutual_information(samples), torch.zeros(30, dtype=probs.dtype))
    torch.testing.assert_close(M.expected_entropy(samples), M.predictive_entropy(probs))


def test_mutual_information_of_disagreeing_one_hots_is_log_c() -> None:
    samples = torch.eye(3).unsqueeze(1)  # (K=3, N=1, C=3): each sample certain of another class
    torch.testing.assert_close(M.mutual_information(samples), torch.tensor([math.log(3.0)]))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    k=st.integers(1, 6),
    n=st.integers(1, 5),
    c=st.integers(2, 6),
    temperature=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_mutual_information_is_nonnegative_and_bounded(
    k: int, n: int, c: int, temperature: float, seed: int
) -> None:
    """0 <= MI <= H[mean] <= log C, for any set of K categorical distributions."""
    g = torch.Generator().manual_seed(seed)
    samples = (torch.randn(k, n, c, generator=g, dtype=torch.float64) * temperature).softmax(-1)
    mi = M.mutual_information(samples)
    total = M.predictive_entropy(samples.mean(0))
    assert (mi >= 0).all()
    assert (mi <= total + 1e-12).all()
    assert (total <= math.log(c) + 1e-12).all()


# ---------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = rng.integers(0, 8, 300) + labels * rng.integers(0, 3, 300)  # many ties
    ref = skm.roc_auc_score(labels, scores)
    got = M.auroc(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels))
    assert got.item() == pytest.approx(ref, abs=1e-12)


def test_auroc_continuous_scores_and_int_labels() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 1000)
    scores = rng.normal(size=1000) + labels
    ref = skm.roc_auc_score(labels, scores)
    assert M.auroc(torch.as_tensor(scores), torch.as_tensor(labels)).item() == pytest.approx(ref)


def test_auroc_extremes() -> None:
    pos = torch.tensor([False, False, True, True])
    assert M.auroc(torch.tensor([0.0, 1.0, 2.0, 3.0]), pos).item() == 1.0
    assert M.auroc(torch.tensor([3.0, 2.0, 1.0, 0.0]), pos).item() == 0.0
    assert M.auroc(torch.ones(4), pos).item() == 0.5


# ------------------------------------------------------------------ regression
def test_gaussian_nll_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    loc, y = rng.normal(size=100), rng.normal(size=100)
    scale = rng.uniform(0.2, 3.0, size=100)
    ref = -stats.norm.logpdf(y, loc, scale).mean()
    got = M.gaussian_nll(torch.as_tensor(loc), torch.as_tensor(scale), torch.as_tensor(y))
    assert got.item() == pytest.approx(ref, rel=1e-12)
    ref_homo = -stats.norm.logpdf(y, loc, 0.7).mean()
    assert M.gaussian_nll(torch.as_tensor(loc), 0.7, torch.as_tensor(y)).item() == pytest.approx(
        ref_homo, rel=1e-12
    )


def test_mixture_gaussian_nll_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    locs, y = rng.normal(size=(8, 50)), rng.normal(size=50)
    scale = 0.4
    ref = -(logsumexp(stats.norm.logpdf(y, locs, scale), axis=0) - np.log(8)).mean()
    got = M.mixture_gaussian_nll(torch.as_tensor(locs), scale, torch.as_tensor(y))
    assert got.item() == pytest.approx(ref, rel=1e-12)


def test_mixture_gaussian_nll_stable_far_in_the_tail() -> None:
    # A naive log(mean(exp(.))) underflows to -inf here; logsumexp does not.
    locs = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([100.0], dtype=torch.float64)
    ref = -(logsumexp(stats.norm.logpdf(100.0, [0.0, 1.0], 0.1)) - np.log(2))
    got = M.mixture_gaussian_nll(locs, 0.1, y)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(ref, rel=1e-12)


def test_rmse_of_integer_predictions_and_targets() -> None:
    got = M.rmse(torch.tensor([1, 2]), torch.tensor([1, 4]))
    torch.testing.assert_close(got, torch.tensor(2.0).sqrt())


def test_gaussian_nlls_of_integer_means_and_targets_keep_the_scale() -> None:
    """Integer means and targets (counts) give the float ones' NLL: the scale 1.5 is not
    truncated to the integer dtype (which made it 1, and 0.5 a refused 0)."""
    loc, target = torch.tensor([1, 2]), torch.tensor([1, 4])
    for scale in (1.5, 0.5, torch.tensor([0.5, 2.5])):
        want = M.gaussian_nll(loc.float(), scale, target.float())
        torch.testing.assert_close(M.gaussian_nll(loc, scale, target), want)
        want = M.mixture_gaussian_nll(loc[None].float(), scale, target.float())
        torch.testing.assert_close(M.mixture_gaussian_nll(loc[None], scale, target), want)


def test_mixture_with_one_component_is_gaussian_nll() -> None:
    loc, y = torch.randn(20, generator=torch.Generator().manual_seed(2)), torch.zeros(20)
    torch.testing.assert_close(
        M.mixture_gaussian_nll(loc.unsqueeze(0), 1.3, y), M.gaussian_nll(loc, 1.3, y)
    )


def test_rmse_and_coverage_against_numpy() -> None:
    rng = np.random.default_rng(3)
    pred, y = rng.normal(size=200), rng.normal(size=200)
    np.testing.assert_allclose(
        M.rmse(torch.as_tensor(pred), torch.as_tensor(y)).item(),
        np.sqrt(np.mean((pred - y) ** 2)),
    )
    lower, upper = pred - 1.0, pred + 1.0
    ref = np.mean((lower <= y) & (y <= upper))
    t = torch.as_tensor
    assert M.interval_coverage(t(lower), t(upper), t(y)).item() == pytest.approx(ref)
    # Ends are included.
    assert M.interval_coverage(t([0.0]), t([1.0]), t([1.0])).item() == 1.0


def test_gaussian_interval_coverage_is_nominal() -> None:
    """A 90% Gaussian interval covers 0.9 of N(0,1) draws: n=20000, 4-sigma band."""
    y = torch.randn(20_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z = stats.norm.ppf(0.95)
    cov = M.interval_coverage(torch.full_like(y, -z), torch.full_like(y, z), y).item()
    assert abs(cov - 0.9) < 4 * math.sqrt(0.9 * 0.1 / 20_000)


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: M.negative_log_likelihood(torch.rand(5, 3), torch.zeros(4, dtype=torch.long)),
            r"negative_log_likelihood expected labels of shape \(5,\).*got shape \(4,\)",
        ),
        (
            lambda: M.brier_score(torch.rand(5, 3), torch.zeros(5)),
            r"brier_score expected labels an integer tensor, got dtype torch.float32",
        ),
        (
            lambda: M.accuracy(torch.rand(5, 3), torch.full((5,), 3)),
            r"accuracy expected labels in \[0, 2\], got values in \[3, 3\]",
        ),
        (
            lambda: M.expected_calibration_error(torch.rand(5, 3), torch.zeros(2, 5).long()),
            r"reliability_bins expected labels of shape \(5,\)",
        ),
        (
            lambda: M.reliability_bins(torch.rand(5, 3), torch.zeros(5).long(), num_bins=0),
            r"reliability_bins expected num_bins a positive int, got 0",
        ),
        (  # a bool is not a bin count (True was one bin)
            lambda: M.expected_calibration_error(torch.ones(2, 1), torch.zeros(2).long(), True),
            r"reliability_bins expected num_bins a positive int, got True",
        ),
        (
            lambda: M.auroc(torch.rand(5), torch.ones(4)),
            r"auroc expected is_positive of shape \(5,\).*got \(4,\)",
        ),
        (  # class indices: 2 is not "positive", it is not a detection label at all
            lambda: M.auroc(torch.rand(3), torch.tensor([0, 1, 2])),
            r"auroc expected is_positive booleans or 0/1 values, got the value 2",
        ),
        (
            lambda: M.aupr(torch.rand(3), torch.tensor([0.0, 0.5, 1.0])),
            r"aupr expected is_positive booleans or 0/1 values, got the value 0.5",
        ),
        (
            lambda: M.auroc(torch.rand(3), torch.ones(3)),
            r"auroc expected is_positive at least one positive and one negative",
        ),
        (
            lambda: M.gaussian_nll(torch.zeros(3), 1.0, torch.zeros(3, 1)),
            r"gaussian_nll expected target of shape \(3,\).*got \(3, 1\)",
        ),
        (
            lambda: M.gaussian_nll(torch.zeros(3), torch.ones(2), torch.zeros(3)),
            r"gaussian_nll expected scale broadcastable to \(3,\), got shape \(2,\)",
        ),
        (  # (3, 1) would broadcast with (3,) to (3, 3): every scale against every target
            lambda: M.gaussian_nll(torch.zeros(3), torch.ones(3, 1), torch.zeros(3)),
            r"gaussian_nll expected scale broadcastable to \(3,\), got shape \(3, 1\)",
        ),
        (
            lambda: M.mixture_gaussian_nll(torch.zeros(2, 3), torch.ones(1, 2, 3), torch.zeros(3)),
            r"mixture_gaussian_nll expected scale broadcastable to \(2, 3\), got shape "
            r"\(1, 2, 3\)",
        ),
        (
            lambda: M.gaussian_nll(torch.zeros(3), 0.0, torch.zeros(3)),
            r"gaussian_nll expected scale positive",
        ),
        (
            lambda: M.mixture_gaussian_nll(torch.zeros(4, 3), 1.0, torch.zeros(5)),
            r"mixture_gaussian_nll expected locs of shape \(K, \*target.shape\) = \(K, 5\), "
            r"got shape \(4, 3\)",
        ),
        (
            lambda: M.interval_coverage(torch.zeros(3), torch.ones(3), torch.zeros(2)),
            r"interval_coverage expected target of shape \(3,\)",
        ),
        (
            lambda: M.interval_coverage(torch.ones(3), torch.zeros(3), torch.zeros(3)),
            r"interval_coverage expected lower <= upper",
        ),
        (
            lambda: M.rmse(torch.zeros(3), torch.zeros(4)),
            r"rmse expected target of shape \(3,\).*got \(4,\)",
        ),
        (
            lambda: M.mutual_information(torch.rand(3)),
            r"mutual_information expected prob_samples a floating tensor of shape \(K, \*, C\)",
        ),
        (
            lambda: M.mutual_information(torch.empty(0, 2, 3)),
            r"mutual_information expected prob_samples at least one sample \(K >= 1\), got K = 0",
        ),
        (
            lambda: M.expected_entropy(torch.empty(0, 2, 3)),
            r"expected_entropy expected prob_samples at least one sample",
        ),
        (
            lambda: M.predictive_entropy(torch.ones(3, dtype=torch.long)),
            r"predictive_entropy expected probs_mean a floating tensor",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_function_and_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# -------------------------------------------------------- variance decomposition
def test_variance_decomposition_is_the_variance_of_the_gaussian_mixture() -> None:
    """Against the mixture's moments computed independently: E[y²] = mean_k(μ_k² + σ_k²),
    Var[y] = E[y²] - E[y]²; and against scipy quadrature of the mixture density."""
    g = torch.Generator().manual_seed(3)
    means = torch.randn(5, 4, 2, generator=g, dtype=torch.float64)
    variances = torch.rand(5, 4, 2, generator=g, dtype=torch.float64) + 0.1
    dec = M.variance_decomposition(means, variances)
    second = (means.square() + variances).mean(0)
    torch.testing.assert_close(dec.total, second - means.mean(0).square())
    torch.testing.assert_close(dec.aleatoric, variances.mean(0))
    torch.testing.assert_close(dec.epistemic, means.var(0, correction=0))
    torch.testing.assert_close(dec.total, dec.aleatoric + dec.epistemic, rtol=0, atol=0)
    # one element by numerical integration of the K-component mixture density
    mu, sd = means[:, 0, 0].numpy(), variances[:, 0, 0].sqrt().numpy()
    from scipy import integrate

    def density(y: float) -> float:
        return float(stats.norm.pdf(y, mu, sd).mean())

    m1 = integrate.quad(lambda y: y * density(y), -30, 30)[0]
    m2 = integrate.quad(lambda y: (y - m1) ** 2 * density(y), -30, 30)[0]
    assert math.isclose(float(dec.total[0, 0]), m2, rel_tol=1e-8)


def test_variance_decomposition_epistemic_zero_when_samples_agree() -> None:
    means = torch.full((7, 3), 1.5)
    variances = torch.tensor([0.5, 1.0, 2.0]).expand(7, 3)
    dec = M.variance_decomposition(means, variances)
    assert torch.equal(dec.epistemic, torch.zeros(3))
    torch.testing.assert_close(dec.aleatoric, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(dec.total, dec.aleatoric)
    # a single function sample has no epistemic part either
    one = M.variance_decomposition(torch.randn(1, 3), torch.ones(1, 3))
    assert torch.equal(one.epistemic, torch.zeros(3))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: M.variance_decomposition(torch.zeros(3, 2), torch.zeros(3, 1)),
            r"variance_decomposition expected variances of shape \(3, 2\).*got \(3, 1\)",
        ),
        (
            lambda: M.variance_decomposition(torch.zeros(3, 2), -torch.ones(3, 2)),
            r"variance_decomposition expected variances non-negative",
        ),
        (
            lambda: M.variance_decomposition(torch.zeros(3, dtype=torch.long), torch.zeros(3)),
            r"variance_decomposition expected means a floating tensor of shape \(K, \*\)",
        ),
        (
            lambda: M.variance_decomposition(torch.zeros(0, 2), torch.zeros(0, 2)),
            r"variance_decomposition expected means at least one element",
        ),
    ],
)
def test_variance_decomposition_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------ ROC curve and AUPR
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupr_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = rng.integers(0, 8, 300) + labels * rng.integers(0, 3, 300)  # many ties
    ref = skm.average_precision_score(labels, scores)
    got = M.aupr(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels))
    assert got.item() == pytest.approx(ref, abs=1e-12)


def test_aupr_continuous_scores_and_extremes() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 1000)
    scores = rng.normal(size=1000) + labels
    ref = skm.average_precision_score(labels, scores)
    assert M.aupr(torch.as_tensor(scores), torch.as_tensor(labels)).item() == pytest.approx(ref)
    pos = torch.tensor([False, False, True, True])
    assert M.aupr(torch.tensor([0.0, 1.0, 2.0, 3.0]), pos).item() == 1.0
    # all tied: one threshold, precision = fraction of positives
    assert M.aupr(torch.ones(4), pos).item() == 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_curve_matches_sklearn_and_integrates_to_auroc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200).astype(bool)
    scores = rng.integers(0, 6, 200) + labels * rng.normal(size=200)
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    got = M.roc_curve(torch.as_tensor(scores), torch.as_tensor(labels))
    np.testing.assert_allclose(got.false_positive_rate.numpy(), fpr, atol=1e-12)
    np.testing.assert_allclose(got.true_positive_rate.numpy(), tpr, atol=1e-12)
    np.testing.assert_allclose(got.thresholds.numpy()[1:], thr[1:], atol=1e-12)
    assert got.thresholds[0].item() == math.inf
    area = torch.trapezoid(got.true_positive_rate, got.false_positive_rate)
    expected = M.auroc(torch.as_tensor(scores), torch.as_tensor(labels)).item()
    assert area.item() == pytest.approx(expected)


@pytest.mark.parametrize("fn", [M.aupr, M.roc_curve, M.auroc])
def test_ranking_metrics_reject_bad_input(fn) -> None:
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name} expected is_positive at least one positive"):
        fn(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match=rf"{name} expected scores shape \(N,\)"):
        fn(torch.zeros(2, 2), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=rf"{name} expected scores no NaN"):
        fn(torch.tensor([0.1, math.nan]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=rf"{name} expected is_positive of shape \(3,\)"):
        fn(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False]))
