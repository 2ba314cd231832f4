"""What :func:`~bayesian_layers.convert.to_bayesian` did: the report's records."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["ConversionReport", "SwappedLayer", "SkippedLayer", "UnsupportedLayer"]


@dataclass(frozen=True)
class SwappedLayer:
    """One replaced layer: qualified ``name`` (``""`` for the module passed in), torch
    ``source`` type, Bayesian ``target`` type and the ``estimator`` it uses (the
    requested one or its fallback)."""

    name: str
    source: str
    target: str
    estimator: str


@dataclass(frozen=True)
class SkippedLayer:
    """A convertible-looking layer left as it was, and why (``"excluded"``, ``"already
    Bayesian"``, or no Bayesian class registered for it)."""

    name: str
    type: str
    reason: str


@dataclass(frozen=True)
class UnsupportedLayer:
    """A module with parameters of its own that no Bayesian layer replaces (``nn.GRU``,
    ``nn.LayerNorm``, a subclass of ``nn.Linear`` with its own forward, ...): it is left
    as it is, a point estimate."""

    name: str
    type: str
    reason: str


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`~bayesian_layers.convert.to_bayesian` did: ``swapped`` and ``skipped``
    layers, and the ``unsupported`` modules it left as they are, each in module order.

    ``len(report)`` and iteration go over the swapped layers; ``str(report)`` is a table.

    Example:
        >>> swapped = SwappedLayer("0", "Linear", "LinearFlipout", "flipout")
        >>> report = ConversionReport((swapped,), ())
        >>> print(report)
        1 layer(s) swapped, 0 skipped
          0: Linear -> LinearFlipout (flipout)
    """

    swapped: tuple[SwappedLayer, ...]
    skipped: tuple[SkippedLayer, ...]
    unsupported: tuple[UnsupportedLayer, ...] = ()

    def __len__(self) -> int:
        return len(self.swapped)

    def __iter__(self) -> Iterator[SwappedLayer]:
        return iter(self.swapped)

    def __str__(self) -> str:
        head = f"{len(self.swapped)} layer(s) swapped, {len(self.skipped)} skipped"
        if self.unsupported:
            head += f", {len(self.unsupported)} unsupported left as they are"
        lines = [head]
        lines += [
            f"  {s.name or '<root>'}: {s.source} -> {s.target} ({s.estimator})"
            for s in self.swapped
        ]
        lines += [f"  {s.name or '<root>'}: {s.type} kept ({s.reason})" for s in self.skipped]
        lines += [
            f"  {u.name or '<root>'}: {u.type} left as it is ({u.reason})" for u in self.unsupported
        ]
        return "\n".join(lines)


def _listing(items: Sequence[UnsupportedLayer | SkippedLayer], limit: int = 8) -> str:
    shown = [f"{i.name or '<root>'} ({i.type}: {i.reason})" for i in items[:limit]]
    more = [f"... ({len(items) - limit} more)"] if len(items) > limit else []
    return ", ".join(shown + more)


def warn_nothing_converted(report: ConversionReport, supported: str) -> None:
    """Warn that a call converted nothing, listing what it left and why."""
    parts = []
    if report.unsupported:
        parts.append(f"left as they are: {_listing(report.unsupported)}")
    if report.skipped:
        parts.append(f"skipped: {_listing(report.skipped)}")
    warnings.warn(
        f"to_bayesian converted no layer; {'; '.join(parts) or 'the module has no layers'}. "
        f"Supported types: {supported}",
        UserWarning,
        stacklevel=3,
    )
