r"""Post-hoc temperature scaling (Guo et al., 2017) for any classifier, Bayesian or not.

A classifier's logits ``z`` are divided by one scalar temperature :math:`T > 0`, fitted
on held-out data to minimise the negative log-likelihood of the predictive. With ``K``
function samples :math:`z_{ik}` of example :math:`i` (draws of a Bayesian network's
weights, the members of a deep ensemble, draws of a Gaussian-process head's logits;
``K = 1`` for a deterministic network) the predictive is the sample average of the
softmax, and the fitted temperature minimises

.. math:: \mathrm{NLL}(T) = -\frac1N \sum_{i=1}^{N}
    \log \frac1K \sum_{k=1}^{K} \mathrm{softmax}(z_{ik} / T)_{y_i}

over the same ``K`` draws, kept fixed during the fit. For ``K = 1`` it is the classic
temperature scaling. :class:`TemperatureScaled` wraps the model and divides its logits
by the temperature; :func:`calibrate` collects the draws (:func:`collect_logits`), fits
the temperature (:func:`fit_temperature`) and returns the wrapper.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.distributions as td
from torch import Tensor, nn

from ._checks import check_count, check_real
from ._function_space import is_function_space
from .predictive import _members_per_call, predict
from .random_variables.variable import RandomVariable
from .temperature_scaled import _SUPPORTED, TemperatureScaled, _describe

__all__ = [
    "TemperatureScaled",
    "TemperatureFit",
    "calibrate",
    "collect_logits",
    "fit_temperature",
    "temperature_nll",
]

_CHUNK_ELEMENTS = 2**21  # float64 elements of one chunk of (K, n, C) logits in the fit


class TemperatureFit(NamedTuple):
    """The result of :func:`fit_temperature`.

    Attributes:
        temperature: the fitted ``T``.
        nll_before: mean predictive NLL at ``T = 1``.
        nll_after: mean predictive NLL at the fitted ``T``.
        iterations: Newton/bisection steps after the grid search.
    """

    temperature: float
    nll_before: float
    nll_after: float
    iterations: int


class _Logits(nn.Module):
    """``model``'s logits as a Tensor: the ``(B, C)`` samples :func:`collect_logits` reads.
    A Gaussian-process output over the logits gives one draw from it per row."""

    def __init__(self, model: nn.Module, owner: str) -> None:
        super().__init__()
        self.model = model
        self.owner = owner

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if isinstance(out, Tensor) and out.is_floating_point():
            return out
        if isinstance(out, RandomVariable):
            dist = out.distribution
            if isinstance(dist, (td.Categorical, td.OneHotCategorical)):
                return dist.logits
            if isinstance(dist, td.Normal) and is_function_space(out):
                return dist.rsample()
        raise TypeError(f"{self.owner} expected the model to return {_SUPPORTED}; got "
                        f"{_describe(out)}")  # fmt: skip


def _batches(owner: str, val_loader: Any) -> Iterable[Any]:
    pair = isinstance(val_loader, (tuple, list)) and len(val_loader) == 2
    if pair and all(isinstance(t, Tensor) for t in val_loader):
        return [tuple(val_loader)]
    if isinstance(val_loader, Tensor) or not isinstance(val_loader, Iterable):
        raise TypeError(f"{owner} expected `val_loader` to be an iterable of (x, y) batches "
                        "or one (x, y) pair of tensors, got "
                        f"{type(val_loader).__name__}")  # fmt: skip
    return val_loader  # type: ignore[no-any-return]


def _check_batch(owner: str, i: int, batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
            return batch[0], batch[1]
        got = "(" + ", ".join(type(t).__name__ for t in batch) + ")"
    else:
        got = type(batch).__name__
    raise TypeError(f"{owner} expected `val_loader` to yield (x, y) pairs of tensors; "
                    f"batch {i} is {got}")  # fmt: skip


def _check_labels(owner: str, labels: Tensor, num_classes: int, batch_shape: tuple) -> None:
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{owner} expected integer class labels `y`, got dtype {labels.dtype}")
    if tuple(labels.shape) != batch_shape:
        raise ValueError(f"{owner} expected labels `y` of shape {batch_shape} (the logits' "
                         f"batch shape), got {tuple(labels.shape)}")  # fmt: skip
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{owner} expected labels `y` in [0, {num_classes}), got values from "
                         f"{labels.min().item()} to {labels.max().item()}")  # fmt: skip


def _collect(
    owner: str, model: nn.Module, val_loader: Any, num_samples: int
) -> tuple[Tensor, Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner} expected `model` to be an nn.Module, got {type(model).__name__}")
    check_count(owner, "num_samples", num_samples)
    members = _members_per_call(model.modules())
    if num_samples % members:
        raise ValueError(f"{owner}: each function sample of this model is one member of its "
                         f"ensemble (size {members}); expected `num_samples` a multiple of "
                         f"{members}, got {num_samples}")  # fmt: skip
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    logits_model = _Logits(model, owner)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    parts, labels, deterministic = [], [], False
    try:
        for i, batch in enumerate(_batches(owner, val_loader)):
            x, y = _check_batch(owner, i, batch)
            x = x if device is None else x.to(device)
            z = predict(logits_model, x, members if deterministic else num_samples).samples
            if i == 0 and num_samples > 1:  # every draw the same function: keep one
                deterministic = all(torch.equal(z[0], zk) for zk in z[1:])
            z = z[:1] if deterministic else z  # (K, B, *, C)
            _check_labels(owner, y, z.shape[-1], tuple(z.shape[1:-1]))
            if not torch.isfinite(z).all():
                raise ValueError(f"{owner}: the model returned non-finite logits on batch {i}")
            parts.append(z.reshape(z.shape[0], -1, z.shape[-1]))  # (K, n, C)
            labels.append(y.reshape(-1).to(z.device))
    finally:
        for m, mode in modes.items():  # every module's own mode, the model's included
            m.training = mode
    if not parts:
        raise ValueError(f"{owner} expected `val_loader` to yield at least one batch")
    return torch.cat(parts, 1), torch.cat(labels)


def collect_logits(
    model: nn.Module, val_loader: Any, num_samples: int = 32
) -> tuple[Tensor, Tensor]:
    """The predictive logit samples of ``model`` on held-out data, as :func:`calibrate` uses.

    The model runs in evaluation mode (each module's mode is restored afterwards), with
    ``x`` moved to the device of its first parameter, under
    ``bl.predict(model, x, num_samples)``: a Bayesian layer draws ``K`` weight samples, a
    deep ensemble gives its members, a Gaussian-process output over the logits gives a
    draw per sample. If the ``K`` draws of the first batch are all equal (a deterministic
    model), ``K = 1`` for every batch. Function samples are drawn afresh per batch, which
    the per-example predictive does not mind.

    Args:
        model: a classifier returning logits (see :class:`TemperatureScaled`).
        val_loader: an iterable of ``(x, y)`` batches (a ``DataLoader``), or one
            ``(x, y)`` pair of tensors; ``y`` integer labels of the logits' batch shape.
        num_samples: ``K >= 1``, a multiple of any ensemble's size.

    Returns:
        ``(logits, labels)``: ``(K, N, C)`` (the model's dtype, detached) and ``(N,)``,
        every batch dimension flattened into ``N``.

    Example:
        >>> import torch
        >>> from bayesian_layers.calibration import collect_logits
        >>> z, y = collect_logits(torch.nn.Linear(4, 3), (torch.randn(6, 4), torch.zeros(6,
        ...                       dtype=torch.long)))
        >>> z.shape, y.shape  # a deterministic model: K = 1
        (torch.Size([1, 6, 3]), torch.Size([6]))
    """
    return _collect("collect_logits", model, val_loader, num_samples)


def _check_fit_inputs(owner: str, logits: Tensor, labels: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 3:
        got = f"shape {tuple(logits.shape)} dtype {logits.dtype}" if isinstance(
            logits, Tensor) else type(logits).__name__  # fmt: skip
        raise ValueError(f"{owner} expected floating-point `logits` of shape (K, N, C), got "
                         f"{got}")  # fmt: skip
    if not isinstance(labels, Tensor):
        raise TypeError(f"{owner} expected `labels` to be a Tensor, got {type(labels).__name__}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{owner} expected at least one sample and one example (K, N >= 1), "
                         f"got logits of shape {tuple(logits.shape)}")  # fmt: skip
    _check_labels(owner, labels, logits.shape[-1], (logits.shape[1],))
    if not torch.isfinite(logits).all():
        raise ValueError(f"{owner} expected finite `logits`, got non-finite values")


def _objective(logits: Tensor, labels: Tensor, u: float, order: int) -> tuple[float, ...]:
    r"""NLL at ``T = exp(u)`` and, for ``order = 2``, its first two derivatives in ``u``.

    With :math:`\beta = e^{-u}`, :math:`p_{ik} = \mathrm{softmax}(\beta z_{ik})`,
    :math:`a_{ik} = z_{iky} - \mathbb E_{p_{ik}}[z]`, :math:`v_{ik} = \mathrm{Var}_{p_{ik}}[z]`
    and :math:`w_{ik} \propto p_{iky}` normalised over ``k``:
    :math:`\partial_\beta L_i = \sum_k w_{ik} a_{ik}`,
    :math:`\partial^2_\beta L_i = \sum_k w_{ik}(a_{ik}^2 - v_{ik}) - (\partial_\beta L_i)^2`.
    """
    k, n, c = logits.shape
    beta = math.exp(-u)
    rows = max(1, _CHUNK_ELEMENTS // (k * c))
    f = g = h = 0.0
    for start in range(0, n, rows):
        z = logits[:, start : start + rows].to(torch.float64)  # (K, n, C)
        y = labels[start : start + rows].to(z.device, torch.long)  # gather: int64 indices
        logp = torch.log_softmax(beta * z, -1)  # (K, n, C)
        idx = y.view(1, -1, 1).expand(k, -1, 1)
        logp_y = logp.gather(-1, idx).squeeze(-1)  # (K, n)
        f -= (torch.logsumexp(logp_y, 0) - math.log(k)).sum().item()
        if order < 2:
            continue
        p = logp.exp()
        mean_z = (p * z).sum(-1)  # (K, n)
        var_z = (p * (z - mean_z.unsqueeze(-1)).square()).sum(-1)  # (K, n)
        a = z.gather(-1, idx).squeeze(-1) - mean_z  # (K, n)
        w = torch.softmax(logp_y, 0)  # (K, n)
        d1 = (w * a).sum(0)  # (n,)
        d2 = (w * (a.square() - var_z)).sum(0) - d1.square()  # (n,)
        g -= d1.sum().item()
        h -= d2.sum().item()
    if order < 2:
        return (f / n,)
    f, g, h = f / n, g / n, h / n  # derivatives in beta
    return f, -beta * g, beta * g + beta * beta * h  # in u: d/du = -beta d/dbeta


def temperature_nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    r"""The mean predictive NLL of logit samples at temperature ``T``, in float64.

    .. math:: \mathrm{NLL}(T) = -\frac1N\sum_i \log\frac1K\sum_k
        \mathrm{softmax}(z_{ik}/T)_{y_i}

    with a log-sum-exp over the samples.

    Args:
        logits: ``(K, N, C)`` logit samples :math:`z`.
        labels: ``(N,)`` integer labels :math:`y`.
        temperature: :math:`T > 0`.

    Example:
        >>> import torch
        >>> from bayesian_layers.calibration import temperature_nll
        >>> round(temperature_nll(torch.zeros(1, 2, 4), torch.tensor([0, 3]), 1.0), 4)  # log 4
        1.3863
    """
    owner = "temperature_nll"
    _check_fit_inputs(owner, logits, labels)
    t = check_real(owner, "temperature", temperature, strict=True)
    return _objective(logits, labels, math.log(t), order=1)[0]


def _fit(
    owner: str,
    logits: Tensor,
    labels: Tensor,
    bounds: tuple[float, float],
    max_iter: int,
) -> TemperatureFit:
    _check_fit_inputs(owner, logits, labels)
    check_count(owner, "max_iter", max_iter)
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise TypeError(f"{owner} expected `bounds` to be a (low, high) pair, got {bounds!r}")
    low = check_real(owner, "bounds[0]", bounds[0], strict=True)
    high = check_real(owner, "bounds[1]", bounds[1], strict=True)
    if not low < high:
        raise ValueError(f"{owner} expected `bounds` low < high, got {tuple(bounds)}")
    lo, hi = math.log(low), math.log(high)
    # 1. a grid in u = log T, steps <= 0.25: the best point brackets a minimum
    m = max(3, math.ceil((hi - lo) / 0.25) + 1)
    grid = [lo + (hi - lo) * j / (m - 1) for j in range(m)]
    values = [_objective(logits, labels, u, 1)[0] for u in grid]
    before = _objective(logits, labels, 0.0, 1)[0]
    j = min(range(m), key=values.__getitem__)
    if max(values) - min(values) <= 1e-15 * max(1.0, abs(values[j])):
        warnings.warn(f"{owner}: the NLL does not depend on the temperature (constant "
                      "logits?); T = 1", RuntimeWarning, stacklevel=3)  # fmt: skip
        return TemperatureFit(1.0, before, before, 0)
    a, b = grid[max(j - 1, 0)], grid[min(j + 1, m - 1)]
    u, iterations = grid[j], 0
    if j in (0, m - 1):  # the best grid point is a bound: is the minimum beyond it?
        _, g, _ = _objective(logits, labels, u, 2)
        if (j == 0 and g >= 0) or (j == m - 1 and g <= 0):
            why = ("every example classified right with a margin?" if j == 0
                   else "logits no better than uniform?")  # fmt: skip
            warnings.warn(f"{owner}: the NLL keeps decreasing {'below' if j == 0 else 'above'} "
                          f"the bound T = {math.exp(u):.6g} ({why}); returning the bound",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            return TemperatureFit(math.exp(u), before, values[j], 0)
    # 2. safeguarded Newton on u inside the bracket [a, b], bisection where Newton fails
    for iterations in range(1, max_iter + 1):  # noqa: B007 - read after the loop
        _, g, h = _objective(logits, labels, u, 2)
        if g == 0.0:
            break
        if g > 0:
            b = u
        else:
            a = u
        step = u - g / h if h > 0 else math.nan
        new = step if a < step < b else 0.5 * (a + b)
        done = abs(new - u) <= 1e-12 * max(1.0, abs(u)) or b - a <= 1e-12
        u = new
        if done:
            break
    else:
        warnings.warn(f"{owner}: no convergence in max_iter={max_iter} steps (bracket "
                      f"[{math.exp(a):.6g}, {math.exp(b):.6g}])", RuntimeWarning,
                      stacklevel=3)  # fmt: skip
    after = _objective(logits, labels, u, 1)[0]
    return TemperatureFit(math.exp(u), before, after, iterations)


def fit_temperature(
    logits: Tensor,
    labels: Tensor,
    *,
    bounds: tuple[float, float] = (1e-3, 1e3),
    max_iter: int = 100,
) -> TemperatureFit:
    r"""The temperature :math:`T` in ``bounds`` minimising :func:`temperature_nll`.

    In float64 on :math:`u = \log T`: the best point of a grid with steps of at most
    0.25 brackets a minimum; Newton's method on the analytic first and second
    derivatives, safeguarded by bisection on the sign of the derivative inside the
    bracket, refines it until a step is below ``1e-12``. For ``K = 1`` the NLL is convex
    in :math:`1/T`, so the minimum is the global one. Warns (``RuntimeWarning``) when
    the NLL keeps decreasing past a bound (e.g. every example classified right with a
    margin), when it does not depend on ``T``, or without convergence.

    Args:
        logits: ``(K, N, C)`` logit samples (see :func:`collect_logits`).
        labels: ``(N,)`` integer labels in ``[0, C)``.
        bounds: ``(low, high)``, the range of ``T`` searched (``0 < low < high``).
        max_iter: the most Newton/bisection steps.

    Returns:
        A :class:`TemperatureFit`. Cost: ``O(K N C)`` per evaluation, about 60 of them.

    Example:
        >>> import torch
        >>> from bayesian_layers.calibration import fit_temperature
        >>> _ = torch.manual_seed(0)
        >>> true = 2 * torch.randn(4000, 3)
        >>> y = torch.distributions.Categorical(logits=true).sample()
        >>> fit = fit_temperature(3 * true[None], y)  # logits 3x too confident
        >>> round(fit.temperature, 1), fit.nll_after < fit.nll_before
        (3.0, True)
    """
    return _fit("fit_temperature", logits, labels, bounds, max_iter)


def calibrate(
    model: nn.Module,
    val_loader: Any,
    *,
    num_samples: int = 32,
    bounds: tuple[float, float] = (1e-3, 1e3),
    max_iter: int = 100,
) -> TemperatureScaled:
    r"""Fit a temperature to ``model`` on held-out data; return the :class:`TemperatureScaled`.

    Collects the predictive logit samples once (:func:`collect_logits`: ``K =
    num_samples`` function samples per example, ``K = 1`` for a deterministic model, an
    ensemble's members as samples), then minimises the predictive NLL
    :math:`-\frac1N\sum_i\log\frac1K\sum_k\mathrm{softmax}(z_{ik}/T)_{y_i}` over ``T`` with
    those draws fixed (:func:`fit_temperature`). The model runs in evaluation mode and
    gets each module's mode back. The returned wrapper holds ``model`` itself (shared
    parameters, no copy); ``bl.predict(wrapper, x, K)`` is the calibrated predictive.

    Args:
        model: a classifier returning logits, a ``Categorical`` random variable or a
            Gaussian-process output over the logits (deterministic, Bayesian,
            ``bl.Ensemble``, SNGP).
        val_loader: held-out data: an iterable of ``(x, y)`` batches (a ``DataLoader``),
            or one ``(x, y)`` pair of tensors; never the training data.
        num_samples: ``K >= 1`` function samples per example (a multiple of any
            ensemble's size).
        bounds: the range of ``T`` searched.
        max_iter: the most Newton/bisection steps.

    Returns:
        The :class:`TemperatureScaled` wrapper, with ``nll_before``/``nll_after`` (the
        held-out NLL at ``T = 1`` and at the fit) and ``num_samples`` (the ``K`` used).

    Raises:
        TypeError: ``model`` not a module, a loader yielding something other than
            ``(x, y)`` tensor pairs, non-integer labels, an unsupported model output.
        ValueError: ``num_samples < 1``, labels out of ``[0, C)`` or of the wrong
            shape, non-finite logits, an empty loader.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.calibration import calibrate
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0]]))
        >>> x = torch.randn(4000, 2)  # true logits x, the network's 4 x: overconfident
        >>> y = torch.distributions.Categorical(logits=x).sample()
        >>> scaled = calibrate(net, (x, y))
        >>> round(scaled.temperature.item()), scaled.nll_after < scaled.nll_before
        (4, True)
    """
    owner = "calibrate"
    logits, labels = _collect(owner, model, val_loader, num_samples)
    fit = _fit(owner, logits, labels, bounds, max_iter)
    wrapper = TemperatureScaled(model, fit.temperature)
    wrapper.nll_before, wrapper.nll_after = fit.nll_before, fit.nll_after
    wrapper.num_samples = logits.shape[0]
    return wrapper
