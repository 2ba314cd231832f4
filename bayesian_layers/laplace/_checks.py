"""Argument checks shared by the Laplace functions (private)."""

from __future__ import annotations

LIKELIHOODS = ("classification", "regression")
HESSIANS = ("diag", "kron", "full")
SUBSETS = ("all", "last_layer", "lora")


def check_choice(function: str, argument: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``function``,
    ``argument``, what was expected and what came."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{function} expected `{argument}` in {choices}, got {value!r}")
    return value


def check_mc_samples(function: str, value: object) -> int:
    """``value`` if it is an int >= 0 (``0``: the exact GGN), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{function} expected `mc_samples` an int >= 0 (0: the exact GGN), got {value!r}"
        )
    return value


def check_positive_float(function: str, argument: str, value: object) -> float:
    """``float(value)`` if it is a finite number > 0, else a ``ValueError``."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{function} expected `{argument}` > 0, got {value!r}") from None
    if not out > 0 or out == float("inf"):
        raise ValueError(f"{function} expected `{argument}` > 0 and finite, got {value!r}")
    return out
