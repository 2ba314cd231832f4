"""``diagnose``: is a Bayesian model's posterior trained, informative and calibrated?

:func:`diagnose` reads every Bayesian layer of a model through its public seam
(posteriors, priors, KL terms) and, given validation data, the predictive; it returns
a :class:`Diagnosis`: per-layer statistics, calibration figures, and warnings for the
setups that most often go wrong silently.

Codes (``Diagnosis.codes``; ``Diagnosis.flags`` maps each to the layers it concerns),
with the thresholds and why:

``collapsed_to_prior``
    At least :data:`COLLAPSE_FRACTION` (half) of a layer's posterior elements have a KL
    to their own prior element below :data:`ELEMENT_KL_AT_PRIOR` (0.1 nats). Against
    ``N(0, s²)`` a KL under 0.1 means ``σ`` within about 30% of ``s`` and ``|μ| < 0.45 s``,
    so ``|μ|/σ < 0.6``: the data taught that weight nothing. When the prior is not a
    normal the layer's ``KL / parameter < 0.1`` and median SNR ``< 0.5`` stand in. On
    scikit-learn's digits (MLP 64-64-10 of ``LinearFlipout``, defaults, Adam 1e-2,
    batch 64, 40 epochs) the first layer has 12% of its weights at the prior with the
    KL divided by ``N = 1437`` and 81% with the KL divided by the batch size (64).
``scales_at_init``
    At least :data:`STUCK_FRACTION` (90%) of a layer's posterior scales are within
    :data:`STUCK_RTOL` (1%) of the initializer's ``scale_init``: the scales were not
    trained (no optimiser step on ``*_rho``, or far too short a training). One Adam
    step of ``lr`` moves every ``rho`` by ``lr`` and so ``σ`` by about ``lr`` relative
    (small ``σ``); after two epochs of Adam at 1e-3 on digits no scale is within 1%.
``prior_too_narrow``
    A weight's prior scale (mean over its elements, read generically from the
    regularizer's ``prior_scale``) is below :data:`NARROW_FACTOR` (1/10) of its natural
    scale ``1/sqrt(fan_in)``, the scale of ``nn.Linear``'s initial weights at which a
    unit's pre-activation has unit variance. Such a prior pins the weights at zero.
``weights_shrunk``
    A weight's posterior-mean RMS and mean ``σ`` are both below 1/10 of its natural
    scale: the layer's output is nearly zero whatever the input (a too-narrow prior,
    or too much weight decay, did it).
``underconfident`` / ``overconfident``
    On classification data, accuracy minus mean top-class confidence exceeds (or falls
    below the negative of) both :data:`CONFIDENCE_TOLERANCE` (0.01) and three standard
    errors of that mean difference over the examples (so sampling noise of a small
    validation set does not trigger it). ``ECE >= |accuracy - confidence|`` always;
    this flags the one-sided miscalibration a KL that is weighted too heavily (or a
    prior too wide) causes: with the KL divided by the batch size the digits model has
    confidence 0.794 against accuracy 0.936 (12 standard errors); with ``N`` it has
    0.959 against 0.975 (2.3 standard errors, not flagged).
``intervals_too_narrow`` / ``intervals_too_wide``
    On regression data with a normal output distribution, the central 90% predictive
    interval covers a fraction of the targets that differs from 0.9 by more than
    :data:`COVERAGE_TOLERANCE` (0.05) and three binomial standard errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from ._diagnose_predictive import CONFIDENCE_TOLERANCE, COVERAGE_TOLERANCE, _calibration
from .layers.base import BayesianLayer

__all__ = [
    "diagnose",
    "Diagnosis",
    "LayerDiagnosis",
    "ELEMENT_KL_AT_PRIOR",
    "COLLAPSE_FRACTION",
    "STUCK_RTOL",
    "STUCK_FRACTION",
    "NARROW_FACTOR",
    "CONFIDENCE_TOLERANCE",
    "COVERAGE_TOLERANCE",
]

#: An element whose KL to its prior element is below this (nats) sits at the prior.
ELEMENT_KL_AT_PRIOR = 0.1
#: A layer with at least this fraction of its elements at the prior has collapsed.
COLLAPSE_FRACTION = 0.5
#: A scale within this relative distance of ``scale_init`` has not moved.
STUCK_RTOL = 1e-2
#: A layer with at least this fraction of unmoved scales was not trained.
STUCK_FRACTION = 0.9
#: A prior scale, or a posterior (mean RMS and σ), below this times ``1/sqrt(fan_in)``.
NARROW_FACTOR = 0.1

_MESSAGES = {
    "collapsed_to_prior": "posterior = prior for most weights: the likelihood was drowned "
    "(divide the KL by the training-set size N, not the batch size)",
    "scales_at_init": "posterior scales still at their initial value (untrained, or far "
    "too short a training)",
    "prior_too_narrow": "prior scale < 1/10 of 1/sqrt(fan_in): it pins the weights at zero",
    "weights_shrunk": "posterior means and scales < 1/10 of 1/sqrt(fan_in): the layer "
    "outputs almost nothing",
    "underconfident": "the KL may weigh too much (check N) or the prior is too wide",
    "overconfident": "posterior too narrow: train longer with the KL, or calibrate",
    "intervals_too_narrow": "the predictive underestimates the noise",
    "intervals_too_wide": "the predictive overestimates the noise",
}


@dataclass
class LayerDiagnosis:
    """Statistics of one Bayesian layer's random parameters, pooled over them.

    Attributes:
        name: the module path in the model (``"encoder.0"``; ``""`` for the model).
        kind: the layer's class name.
        num_params: number of elements with a posterior.
        kl: the layer's regularizer terms summed (``sum(layer.losses)``), or ``None``.
        kl_per_param: ``kl / num_params``.
        snr_mean, snr_median: of ``|μ|/σ`` over the elements (``None`` when the
            posterior has no mean or standard deviation).
        scale_mean: mean posterior ``σ``.
        prior_scale: the weight regularizer's ``prior_scale`` (its mean), or ``None``.
        natural_scale: ``1/sqrt(fan_in)`` of the (first) weight with 2+ dimensions.
        loc_rms: root mean square of that weight's posterior mean.
        frac_at_prior: fraction of elements whose KL to the (normal) prior is below
            :data:`ELEMENT_KL_AT_PRIOR`; ``None`` for non-normal priors.
        frac_scale_at_init: fraction of scales within :data:`STUCK_RTOL` of the
            initializer's ``scale_init``; ``None`` without one.
        codes: the codes raised for this layer.
    """

    name: str
    kind: str
    num_params: int
    kl: float | None = None
    kl_per_param: float | None = None
    snr_mean: float | None = None
    snr_median: float | None = None
    scale_mean: float | None = None
    prior_scale: float | None = None
    natural_scale: float | None = None
    loc_rms: float | None = None
    frac_at_prior: float | None = None
    frac_scale_at_init: float | None = None
    codes: list[str] = field(default_factory=list)


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes:
        layers: one :class:`LayerDiagnosis` per Bayesian layer, in module order.
        calibration: ``None`` without ``loader``; else a dict with ``task``
            (``"classification"`` or ``"regression"``), ``num_examples``,
            ``num_samples`` and the figures (classification: ``accuracy``,
            ``confidence``, ``ece``, ``nll``, ``gap_se``; regression: ``rmse`` and, with
            a normal output, ``nll``, ``coverage90``; else a ``note``).
        flags: code -> the layers it concerns (``["predictive"]`` for calibration).
        warnings: one short human-readable line per code.
    """

    layers: list[LayerDiagnosis]
    calibration: dict[str, Any] | None = None
    flags: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        """The codes raised, in a fixed order (see the module docstring)."""
        return [c for c in _MESSAGES if c in self.flags]

    @property
    def ok(self) -> bool:
        """No code raised."""
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        """A plain, ``json.dumps``-able dict (non-finite floats become ``None``)."""
        out = {
            "layers": [asdict(layer) for layer in self.layers],
            "calibration": None if self.calibration is None else dict(self.calibration),
            "codes": self.codes,
            "flags": {k: list(v) for k, v in self.flags.items()},
            "warnings": list(self.warnings),
        }
        return json.loads(json.dumps(out, default=str), parse_constant=lambda _: None)

    def __str__(self) -> str:
        total = sum(layer.num_params for layer in self.layers)
        plural = "" if len(self.layers) == 1 else "s"
        lines = [
            f"Diagnosis: {len(self.layers)} Bayesian layer{plural}, {total:,} random parameters"
        ]
        rows = [
            ("layer", "type", "params", "KL/param", "SNR mean/med", "σ mean", "prior σ", "at prior")
        ]
        for d in self.layers:
            snr = f"{_fmt(d.snr_mean, 2)}/{_fmt(d.snr_median, 2)}"
            at_prior = "-" if d.frac_at_prior is None else f"{d.frac_at_prior:.0%}"
            row = (d.name or "(model)", d.kind, f"{d.num_params:,}", _fmt(d.kl_per_param, 3), snr)
            rows.append((*row, _fmt(d.scale_mean, 3), _fmt(d.prior_scale, 3), at_prior))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            lines.append("  " + "  ".join(cells).rstrip())
        lines.append(_calibration_line(self.calibration))
        if self.warnings:
            lines += [f"  ! {w}" for w in self.warnings]
        else:
            lines.append("  no problems found")
        return "\n".join(lines)


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _calibration_line(cal: dict[str, Any] | None) -> str:
    if cal is None:
        return "calibration: not checked (no loader)"
    head = f"calibration ({cal['num_examples']} examples, K={cal['num_samples']}):"
    keys: tuple[str, ...]
    if cal["task"] == "classification":
        keys = ("accuracy", "confidence", "ece", "nll")
    else:
        keys = ("rmse", "nll", "coverage90")
    figures = ", ".join(f"{k} {cal[k]:.3f}" for k in keys if cal.get(k) is not None)
    note = f" ({cal['note']})" if cal.get("note") else ""
    return f"{head} {figures}{note}"


# --------------------------------------------------------------------------- layers
def _prior_scale(reg: nn.Module | None) -> Tensor | None:
    scale = getattr(reg, "prior_scale", None) if reg is not None else None
    if not isinstance(scale, Tensor) or scale.numel() == 0 or not scale.isfinite().all():
        return None
    return scale.detach()


def _normal_prior(reg: nn.Module | None) -> Normal | None:
    prior = getattr(reg, "prior", None)
    if not callable(prior):
        return None
    try:
        p = prior()
    except Exception:  # noqa: BLE001 - a prior we cannot build is a prior we cannot read
        return None
    if not isinstance(p, Normal) or not (p.scale.isfinite().all() and (p.scale > 0).all()):
        return None
    return p


def _loc_scale(layer: BayesianLayer, name: str) -> tuple[Tensor, Tensor] | None:
    try:
        loc, scale = layer.posterior_loc_scale(name)
    except ValueError:
        try:
            q = layer.posterior(name)
            loc, scale = q.mean, q.stddev
        except (NotImplementedError, ValueError, AttributeError):
            return None
    if scale is None:
        return None
    return loc.detach(), scale.detach().expand_as(loc)


def _layer(name: str, layer: BayesianLayer, specs: list[Any]) -> LayerDiagnosis:
    d = LayerDiagnosis(name, type(layer).__name__, sum(s.shape.numel() for s in specs))
    terms = layer.kl_terms()  # first: an empirical-Bayes prior sets its scale here
    if terms:
        d.kl = float(sum(t.detach().float().sum() for t in terms.values()))
        d.kl_per_param = d.kl / max(d.num_params, 1)
    snrs, scales, at_prior, at_init = [], [], [], []
    prior_only_normal = True
    for spec in specs:
        ls = _loc_scale(layer, spec.name)
        reg = spec.regularizer
        prior_scale = _prior_scale(reg)
        if spec is specs[0] and prior_scale is not None:
            d.prior_scale = float(prior_scale.float().mean())
        if ls is None:
            prior_only_normal = False
            continue
        loc, scale = ls[0].float(), ls[1].float()
        snrs.append((loc.abs() / scale).flatten())
        scales.append(scale.flatten())
        p = _normal_prior(reg)
        if p is None:
            prior_only_normal = False
        else:
            q_p = Normal(p.loc.float(), p.scale.float(), validate_args=False)
            ekl = kl_divergence(Normal(loc, scale, validate_args=False), q_p)
            at_prior.append((ekl.expand_as(loc) < ELEMENT_KL_AT_PRIOR).flatten())
        scale_init = getattr(spec.initializer, "scale_init", None)
        if isinstance(scale_init, (int, float)) and scale_init > 0:
            at_init.append(((scale / scale_init - 1).abs() < STUCK_RTOL).flatten())
        if d.natural_scale is None and len(spec.shape) >= 2:
            fan_in = math.prod(spec.shape[1:])
            d.natural_scale = 1.0 / math.sqrt(max(fan_in, 1))
            d.loc_rms = float(loc.square().mean().sqrt())
            d.prior_scale = None if prior_scale is None else float(prior_scale.float().mean())
            if d.loc_rms < NARROW_FACTOR * d.natural_scale and float(scale.mean()) < (
                NARROW_FACTOR * d.natural_scale
            ):
                d.codes.append("weights_shrunk")
    if snrs:
        snr = torch.cat(snrs)
        d.snr_mean, d.snr_median = float(snr.mean()), float(snr.median())
        d.scale_mean = float(torch.cat(scales).mean())
    if at_prior and prior_only_normal:
        d.frac_at_prior = float(torch.cat(at_prior).float().mean())
        collapsed = d.frac_at_prior >= COLLAPSE_FRACTION
    else:
        collapsed = (
            d.kl_per_param is not None
            and d.snr_median is not None
            and d.kl_per_param < ELEMENT_KL_AT_PRIOR
            and d.snr_median < 0.5
        )
    if at_init:
        d.frac_scale_at_init = float(torch.cat(at_init).float().mean())
        if d.frac_scale_at_init >= STUCK_FRACTION:
            d.codes.append("scales_at_init")
    narrow = (
        d.prior_scale is not None
        and d.natural_scale is not None
        and d.prior_scale < NARROW_FACTOR * d.natural_scale
    )
    if narrow:
        d.codes.append("prior_too_narrow")
    if collapsed and not narrow:  # a too-narrow prior is the cause: say that only
        d.codes.append("collapsed_to_prior")
    d.codes.sort(key=list(_MESSAGES).index)
    return d


# ----------------------------------------------------------------------------- API
def diagnose(
    model: nn.Module,
    loader: Iterable[Any] | None = None,
    *,
    num_samples: int = 32,
    num_bins: int = 15,
) -> Diagnosis:
    """Check a Bayesian model's posteriors, priors and, given data, its calibration.

    Per Bayesian layer (every :class:`~bayesian_layers.layers.BayesianLayer` with random
    parameters, named by its module path): the number of random elements, the KL term
    (``sum(layer.losses)``) and KL per element, the signal-to-noise ratio ``|μ|/σ``
    (mean and median), the mean posterior ``σ``, the prior scale (the weight
    regularizer's ``prior_scale``, when it has one), the fraction of elements at the
    prior and of scales at their initial value. With ``loader``, the predictive of
    :func:`bayesian_layers.predict` (``num_samples`` function samples, softmax
    probabilities averaged over them): accuracy, mean top-class confidence, ECE and
    NLL for integer labels; RMSE and, for a normal output layer, the NLL and the
    coverage of the central 90% interval of a normal with the predictive's mean and
    variance for float targets. The model's train/eval mode is used as it is. The
    warnings and their thresholds are listed in the module docstring.

    Args:
        model: an ``nn.Module`` containing Bayesian layers.
        loader: optional validation data: an iterable of ``(x, y)`` batches (a
            ``DataLoader``), ``x`` of shape ``(B, ...)``, ``y`` of shape ``(B,)``
            integer class labels or float regression targets.
        num_samples: K, function samples per batch for the predictive.
        num_bins: ECE bins.

    Returns:
        A :class:`Diagnosis`; ``print`` it for a short report, ``.to_dict()`` for JSON.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``loader`` is not an iterable of
            ``(x, y)`` tensor pairs; labels that fit neither task.
        ValueError: no Bayesian layer with random parameters in ``model``; an empty
            ``loader``; labels out of range or of the wrong shape; bad ``num_samples``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.diagnostics import diagnose
        >>> model = torch.nn.Sequential(bl.layers.LinearFlipout(4, 8), torch.nn.ReLU(),
        ...                             bl.layers.LinearFlipout(8, 3))
        >>> report = diagnose(model)  # untrained: the scales sit at their initial value
        >>> [layer.name for layer in report.layers], report.codes
        (['0', '2'], ['scales_at_init'])
        >>> report.layers[0].num_params, report.layers[0].prior_scale
        (32, 1.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose expected `model` to be an nn.Module, got {type(model).__name__}")
    for arg, value in (("num_samples", num_samples), ("num_bins", num_bins)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"diagnose expected `{arg}` to be an int >= 1, got {value!r}")
    found = []
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer):
            specs = [spec for _, spec in module.named_random_parameters()]
            if specs:
                found.append((name, module, specs))
    if not found:
        raise ValueError(
            f"diagnose found no Bayesian layer with random parameters in "
            f"{type(model).__name__}; it diagnoses the weight posteriors of "
            "bayesian_layers.layers (a model built from them or converted with "
            "bl.to_bayesian; deterministic modules and Gaussian-process layers have none)"
        )
    with torch.no_grad():
        layers = [_layer(name, module, specs) for name, module, specs in found]
        calibration = None if loader is None else _calibration(model, loader, num_samples, num_bins)
    flags: dict[str, list[str]] = {}
    for d in layers:
        for code in d.codes:
            flags.setdefault(code, []).append(d.name or "(model)")
    if calibration is not None and "code" in calibration:
        flags[calibration["code"]] = ["predictive"]
    warnings = []
    for code in _MESSAGES:
        if code not in flags:
            continue
        if code in ("underconfident", "overconfident") and calibration is not None:
            where = (
                f"confidence {calibration['confidence']:.3f} vs accuracy "
                f"{calibration['accuracy']:.3f}, ECE {calibration['ece']:.3f}"
            )
        elif code.startswith("intervals") and calibration is not None:
            where = f"90% interval covers {calibration['coverage90']:.3f}"
        else:
            where = "layers " + ", ".join(flags[code])
        warnings.append(f"{code} ({where}): {_MESSAGES[code]}")
    return Diagnosis(layers, calibration, flags, warnings)
