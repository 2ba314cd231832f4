"""Which modules of a model get adapters: name patterns (part of
:mod:`bayesian_layers.adapters`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from ._adapter import base_features

__all__ = ["matches", "find_targets", "patterns"]


def patterns(name: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``value`` as a tuple of patterns; a clear error for anything else."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"lora: {name} must be a str or a list of str, got {value!r}") from None
    if not all(isinstance(p, str) for p in out):
        raise TypeError(f"lora: {name} must be a str or a list of str, got {value!r}")
    return out


def matches(name: str, pats: Sequence[str]) -> bool:
    """Whether the qualified module ``name`` is one of ``pats``: equal to a pattern,
    ending with ``"." + pattern``, or matching it as a glob (``fnmatchcase``)."""
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in pats)


def find_targets(
    model: nn.Module, target: Sequence[str], exclude: Sequence[str]
) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs to adapt: adaptable layers whose name
    matches ``target`` and not ``exclude``, outside existing adapters.

    Raises:
        ValueError: a pattern matches no adaptable layer (its matches, if any, are
            of types LoRA does not adapt), naming the pattern.
    """
    from ._adapter import LoRALinear

    inside: set[str] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, LoRALinear):
            inside.update(f"{name}.{sub}" if name else sub for sub, _ in module.named_modules())
    found: list[tuple[str, nn.Module]] = []
    for pat in target:
        hits = [
            (n, m)
            for n, m in model.named_modules(remove_duplicate=False)
            if n and n not in inside and matches(n, (pat,)) and not matches(n, exclude)
        ]
        usable = [(n, m) for n, m in hits if base_features(m) is not None]
        if not usable:
            kinds = sorted({type(m).__name__ for _, m in hits})
            what = f"only {', '.join(kinds)}" if kinds else "no module"
            raise ValueError(
                f"lora: target {pat!r} matches {what}; expected nn.Linear or a "
                f"transformers Conv1D (module names look like "
                f"{[n for n, _ in list(model.named_modules())[1:4]]})"
            )
        found.extend(p for p in usable if p[0] not in {n for n, _ in found})
    return found
