"""Private helpers of the point-process family (no stability promise): the box check
and the quadrature grids."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_box", "leggauss", "tensor_grid"]


def check_box(owner: str, domain: object) -> tuple[tuple[float, float], ...]:
    """``domain`` as 1 to 3 finite ``(low, high)`` pairs with ``low < high``; else an error
    naming ``owner``."""
    try:
        pairs = tuple((float(lo), float(hi)) for lo, hi in domain)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner} expected `domain` to be a sequence of (low, high) pairs, got {domain!r}"
        ) from None
    if not 1 <= len(pairs) <= 3:
        raise ValueError(f"{owner} expected a domain of 1 to 3 dimensions, got {len(pairs)}")
    for d, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"{owner} expected finite low < high in every domain dimension, got "
                f"({lo}, {hi}) in dimension {d}"
            )
    return pairs


@functools.lru_cache(maxsize=16)
def leggauss(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Gauss–Legendre nodes and weights on ``[-1, 1]`` (immutable; cached per ``n``).

    Plain floats, not arrays: ``torch.compile`` reads them as constants.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(nodes.tolist()), tuple(weights.tolist())


def tensor_grid(axes: Sequence[Tensor]) -> Tensor:
    """The tensor-product grid ``[prod(len(a)), D]`` of ``D`` one-dimensional node sets."""
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
