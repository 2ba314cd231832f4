"""KL warm-up: a weight for the KL term of the ELBO that grows over the first steps."""

from __future__ import annotations

import math
from numbers import Real

__all__ = ["kl_warmup"]

_SCHEDULES = ("linear", "cosine")


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"kl_warmup expected `{name}` to be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"kl_warmup expected `{name}` to be finite, got {value!r}")
    return out


def kl_warmup(
    step: float,
    warmup_steps: float,
    *,
    start: float = 0.0,
    end: float = 1.0,
    schedule: str = "linear",
) -> float:
    r"""The KL weight at ``step`` of a warm-up from ``start`` to ``end`` over ``warmup_steps``.

    With :math:`t = \min(\text{step} / \text{warmup\_steps}, 1)`:

    * ``"linear"``: :math:`w = s + (e - s)\, t`;
    * ``"cosine"``: :math:`w = s + (e - s)\, (1 - \cos \pi t) / 2` (flat at both ends).

    The weight is ``end`` from ``warmup_steps`` on. Pass it to the ELBO as
    ``bl.elbo_loss(nll, model, loader, kl_weight=bl.kl_warmup(step, 500))``: early
    steps fit the likelihood before the KL pulls the posterior to the prior (Bowman
    et al., 2016; Sønderby et al., 2016). A warm-up trains a tempered posterior until
    ``warmup_steps``; only the weight ``end = 1`` gives the ELBO after it.

    Args:
        step: the optimiser step (or a fraction of epochs), >= 0.
        warmup_steps: the length of the warm-up, > 0, in the unit of ``step``.
        start: the weight at step 0, finite and >= 0.
        end: the weight from ``warmup_steps`` on, finite and >= 0.
        schedule: ``"linear"`` or ``"cosine"``.

    Returns:
        The weight, a Python float between ``start`` and ``end``.

    Example:
        >>> from bayesian_layers.kl_schedule import kl_warmup
        >>> [kl_warmup(s, 4) for s in (0, 1, 2, 4, 10)]
        [0.0, 0.25, 0.5, 1.0, 1.0]
        >>> round(kl_warmup(1, 4, schedule="cosine"), 4)
        0.1464
    """
    if not isinstance(schedule, str) or schedule not in _SCHEDULES:
        raise ValueError(
            f"kl_warmup expected `schedule` to be one of {list(_SCHEDULES)}, got {schedule!r}"
        )
    at, length = _real("step", step), _real("warmup_steps", warmup_steps)
    if at < 0:
        raise ValueError(f"kl_warmup expected `step` >= 0, got {step!r}")
    if length <= 0:
        raise ValueError(f"kl_warmup expected `warmup_steps` > 0, got {warmup_steps!r}")
    first, last = _real("start", start), _real("end", end)
    for name, value in (("start", first), ("end", last)):
        if value < 0:
            raise ValueError(f"kl_warmup expected `{name}` >= 0 (a KL weight), got {value!r}")
    if at >= length:
        return last  # exactly ``end``, not ``start + (end - start) * 1`` rounded
    t = at / length
    if schedule == "cosine":
        t = (1.0 - math.cos(math.pi * t)) / 2.0
    return first + (last - first) * t
