r"""The white-noise covariance function: independent noise per observation."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Kernel, constant_diag

__all__ = ["WhiteNoise"]


class WhiteNoise(Kernel):
    r"""Independent noise ``variance · [x = x']``.

    Equality is decided by ``match``: ``"object"`` (default; as scikit-learn's
    ``WhiteKernel`` and GPflow's ``White``) adds ``variance · I`` only to
    ``k(x)`` / ``k(x, x)`` called with the *same tensor object* and gives zeros
    between different tensors, so it models per-observation noise even when two
    inputs coincide; ``"value"`` compares rows exactly (bitwise equal values),
    the literal ``[x = x']``. :class:`GaussianProcess` relies on the first: it calls
    ``k(X, X)`` with one tensor for the covariance of a set with itself (white noise
    added) and two distinct tensors for a cross-covariance (none), so which tensor
    object a user passes never changes the model.

    Args:
        variance: positive scalar noise variance.
        match: ``"object"`` or ``"value"``.
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> k = WhiteNoise(0.5)
        >>> x = torch.zeros(2, 1)
        >>> k(x).tolist(), k(x, x.clone()).tolist()
        ([[0.5, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]])
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        *,
        match: str = "object",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if match not in ("object", "value"):
            raise ValueError(f"WhiteNoise expected match 'object' or 'value', got {match!r}")
        self.match = match
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        var = self.variance
        dtype = torch.result_type(x1, var)
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        n, m = x1.shape[-2], x2.shape[-2]
        if x1 is x2:
            eye = torch.eye(n, dtype=dtype, device=x1.device)
            return (var * eye).expand(*batch, n, m)
        if self.match == "value":
            same = (x1[..., :, None, :] == x2[..., None, :, :]).all(-1)  # (*, N, M)
            return (var * same.to(dtype)).expand(*batch, n, m)
        return (var * torch.zeros((), dtype=dtype, device=x1.device)).expand(*batch, n, m)

    def _diag(self, x: Tensor) -> Tensor:
        return constant_diag(self.variance, x)

    def extra_repr(self) -> str:
        return f"variance={self.variance.item():.4g}, match={self.match!r}"
