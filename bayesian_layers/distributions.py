"""Distributions that ``torch.distributions`` lacks: a point mass."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["Deterministic"]


class Deterministic(Distribution):
    """A point mass at ``loc``: the distribution of a point estimate.

    ``rsample`` returns ``loc`` (so gradients reach it), ``log_prob`` is 0 at
    ``loc`` and ``-inf`` elsewhere, the variance is 0.

    Args:
        loc: the location of the mass; its shape is the batch shape.

    Example:
        >>> d = Deterministic(torch.tensor([1.0, 2.0]))
        >>> d.rsample((2,))
        tensor([[1., 2.],
                [1., 2.]])
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, validate_args: bool | None = None) -> None:
        self.loc = (
            torch.as_tensor(loc, dtype=torch.get_default_dtype())
            if not isinstance(loc, Tensor)
            else loc
        )
        super().__init__(batch_shape=self.loc.shape, validate_args=validate_args)

    def expand(  # type: ignore[override]
        self, batch_shape: torch.Size | tuple[int, ...], _instance: Deterministic | None = None
    ) -> Deterministic:
        new = self._get_checked_instance(Deterministic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        super(Deterministic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:  # type: ignore[override]
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.loc.expand(shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        zero = torch.zeros((), dtype=self.loc.dtype, device=self.loc.device)
        return torch.where(value == self.loc, zero, torch.full_like(zero, -float("inf")))

    def entropy(self) -> Tensor:
        return torch.zeros_like(self.loc)
