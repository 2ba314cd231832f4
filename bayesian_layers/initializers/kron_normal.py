"""A matrix normal posterior with Kronecker-factored precision: :class:`KroneckerNormal`.

The precision of ``vec(W)`` (``W`` viewed as ``(O, I)``, row-major) is
``G ⊗ A + τ I`` with eigendecompositions ``G = Q_G diag(λ_G) Q_Gᵀ`` and
``A = Q_A diag(λ_A) Q_Aᵀ``, so the covariance is
``(Q_G ⊗ Q_A) diag(1 / (λ_G λ_Aᵀ + τ)) (Q_G ⊗ Q_A)ᵀ`` and a draw is
``W = M + Q_G (ε / sqrt(λ_G λ_Aᵀ + τ)) Q_Aᵀ`` with ``ε ~ N(0, I)`` of ``W``'s shape:
``O(O² I + O I²)`` per draw, never the ``(OI)²`` covariance. The factors are buffers,
so ``state_dict`` and ``torch.load(weights_only=True)`` keep them. Written by
:func:`bayesian_layers.laplace.fit` (``hessian="kron"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, constraints, register_kl

from .base import TrainableInitializer

__all__ = ["KroneckerNormal", "KroneckerNormalDistribution"]

_NO_SAMPLES = torch.Size()


class KroneckerNormalDistribution(Distribution):
    """``N(loc, (G ⊗ A + τ I)⁻¹)`` over a tensor ``loc`` viewed as ``(O, I)``.

    Args:
        loc: the mean, any shape whose first dim is ``O`` (the rest flattens to ``I``).
        eigvals_g, eigvecs_g: ``(O,)``, ``(O, O)``; eigvals_a, eigvecs_a: ``(I,)``, ``(I, I)``.
        prior_precision: ``τ > 0``, a scalar tensor.

    Example:
        >>> q = KroneckerNormalDistribution(torch.zeros(2, 3), torch.ones(2), torch.eye(2),
        ...                                 torch.ones(3), torch.eye(3), torch.tensor(1.0))
        >>> q.variance  # 1 / (1·1 + 1)
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        eigvals_g: Tensor,
        eigvecs_g: Tensor,
        eigvals_a: Tensor,
        eigvecs_a: Tensor,
        prior_precision: Tensor,
    ) -> None:
        self.loc = loc
        self.eigvals_g, self.eigvecs_g = eigvals_g, eigvecs_g
        self.eigvals_a, self.eigvecs_a = eigvals_a, eigvecs_a
        self.prior_precision = prior_precision
        super().__init__(torch.Size(), loc.shape, validate_args=False)

    def _eig_precision(self) -> Tensor:
        """``(O, I)``: ``λ_G λ_Aᵀ + τ``, the precision's eigenvalues."""
        return torch.outer(self.eigvals_g, self.eigvals_a) + self.prior_precision

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        # Var(W_oi) = Σ_jk Q_G[o,j]² Q_A[i,k]² / (λ_Gj λ_Ak + τ)
        v = self.eigvecs_g.square() @ self._eig_precision().reciprocal() @ self.eigvecs_a.square().T
        return v.reshape(self.loc.shape)

    def rsample(
        self, sample_shape: torch.Size | list[int] | tuple[int, ...] = _NO_SAMPLES
    ) -> Tensor:
        eps = torch.randn(
            torch.Size(sample_shape) + self.loc.shape, dtype=self.loc.dtype, device=self.loc.device
        )
        return kron_draw(self.loc, eps, self)

    def log_prob(self, value: Tensor) -> Tensor:
        o = self.eigvals_g.shape[0]
        delta = (value - self.loc).reshape(*value.shape[: value.dim() - self.loc.dim()], o, -1)
        z = self.eigvecs_g.T @ delta @ self.eigvecs_a  # (..., O, I) in the eigenbasis
        lam = self._eig_precision()
        d = lam.numel()
        quad = (z.square() * lam).sum((-2, -1))
        return 0.5 * (lam.log().sum() - d * math.log(2 * math.pi) - quad)

    def entropy(self) -> Tensor:
        lam = self._eig_precision()
        return 0.5 * (lam.numel() * (1 + math.log(2 * math.pi)) - lam.log().sum())


def kron_draw(loc: Tensor, eps: Tensor, q: KroneckerNormalDistribution) -> Tensor:
    """``loc + Q_G (ε / sqrt(λ_G λ_Aᵀ + τ)) Q_Aᵀ`` for standard noise ``eps`` of shape
    ``(*lead, *loc.shape)``; pure (noise passed in)."""
    o = q.eigvals_g.shape[0]
    lead = eps.shape[: eps.dim() - loc.dim()]
    e = eps.reshape(*lead, o, -1) * q._eig_precision().rsqrt()  # (*lead, O, I)
    w = q.eigvecs_g @ e @ q.eigvecs_a.T
    return loc + w.reshape(eps.shape)


@register_kl(KroneckerNormalDistribution, Normal)
def _kl_kron_normal(q: KroneckerNormalDistribution, p: Normal) -> Tensor:
    # 0.5 [Σ Var/s² + Σ (m - μ)²/s² - d + Σ log s² - log det Σ]
    var_p = p.scale.square().expand(q.loc.shape)
    d = q.loc.numel()
    return 0.5 * (
        (q.variance / var_p).sum()
        + ((q.loc - p.loc).square() / var_p).sum()
        - d
        + var_p.log().sum()
        + q._eig_precision().log().sum()
    )


class KroneckerNormal(TrainableInitializer):
    """A Laplace posterior with Kronecker-factored precision ``G ⊗ A + τ I`` around the
    trainable mean ``{prefix}_loc``.

    The family keeps the layer's ``loc`` and ``rho`` (so it can replace a
    :class:`TrainableNormal` with ``layer.set_initializer``); ``rho`` holds
    ``softplus⁻¹`` of the marginal standard deviations, for reading only. Needs the
    reparameterization estimator (draws are whole weights, not mean-field).

    Args:
        out_dim: ``O``, the first dim of the parameter.
        in_dim: ``I``, the product of the other dims (1 for a bias).
        device, dtype: of the buffers.

    Buffers: ``eigvals_g (O,)``, ``eigvecs_g (O, O)``, ``eigvals_a (I,)``,
    ``eigvecs_a (I, I)``, ``prior_precision ()``; a fresh one is the prior ``N(M, I)``.

    Example:
        >>> import bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 2)
        >>> q = KroneckerNormal(2, 3)
        >>> q.set_factors(torch.ones(2), torch.eye(2), torch.ones(3), torch.eye(3), 3.0)
        >>> layer.set_initializer("weight", q)
        >>> layer.posterior("weight").variance[0, 0].item()  # 1 / (1·1 + 3)
        0.25
    """

    suffixes = ("loc", "rho")
    eigvals_g: Tensor
    eigvecs_g: Tensor
    eigvals_a: Tensor
    eigvecs_a: Tensor
    prior_precision: Tensor

    def __init__(
        self,
        out_dim: int,
        in_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for arg, v in (("out_dim", out_dim), ("in_dim", in_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"KroneckerNormal expected `{arg}` a positive int, got {v!r}")
        super().__init__(None)
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("eigvals_g", torch.zeros(out_dim, **kw))  # type: ignore[arg-type]
        self.register_buffer("eigvecs_g", torch.eye(out_dim, **kw))  # type: ignore[arg-type]
        self.register_buffer("eigvals_a", torch.zeros(in_dim, **kw))  # type: ignore[arg-type]
        self.register_buffer("eigvecs_a", torch.eye(in_dim, **kw))  # type: ignore[arg-type]
        self.register_buffer("prior_precision", torch.ones((), **kw))  # type: ignore[arg-type]

    def set_factors(
        self,
        eigvals_g: Tensor,
        eigvecs_g: Tensor,
        eigvals_a: Tensor,
        eigvecs_a: Tensor,
        prior_precision: float | Tensor,
    ) -> None:
        """Copy in the eigendecompositions of ``G`` and ``A`` and the prior precision ``τ``.

        Raises:
            ValueError: shapes that differ from the buffers', or ``τ <= 0``.
        """
        new = {
            "eigvals_g": eigvals_g,
            "eigvecs_g": eigvecs_g,
            "eigvals_a": eigvals_a,
            "eigvecs_a": eigvecs_a,
        }
        for name, value in new.items():
            buf = getattr(self, name)
            if value.shape != buf.shape:
                raise ValueError(
                    f"KroneckerNormal.set_factors expected `{name}` of shape "
                    f"{tuple(buf.shape)}, got {tuple(value.shape)}"
                )
        tau = torch.as_tensor(prior_precision, dtype=self.prior_precision.dtype)
        if tau.numel() != 1 or not bool(tau > 0):
            raise ValueError(
                f"KroneckerNormal.set_factors expected a scalar `prior_precision` > 0, got {tau}"
            )
        with torch.no_grad():
            for name, value in new.items():
                getattr(self, name).copy_(value)
            self.prior_precision.copy_(tau.reshape(()))

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        nn.init.zeros_(params["loc"])
        params["rho"].fill_(0.5413248546129181)  # softplus⁻¹(1): the prior N(M, I)

    def distribution(
        self, owner: nn.Module | None = None, prefix: str = ""
    ) -> KroneckerNormalDistribution:
        loc = self.params(self._own(owner), prefix)["loc"]
        return KroneckerNormalDistribution(
            loc,
            self.eigvals_g,
            self.eigvecs_g,
            self.eigvals_a,
            self.eigvecs_a,
            self.prior_precision,
        )

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        q = self.distribution(owner, prefix)
        if noise is None:
            return q.loc
        return kron_draw(q.loc, noise, q)

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)["loc"]

    def extra_repr(self) -> str:
        return f"out_dim={self.eigvals_g.shape[0]}, in_dim={self.eigvals_a.shape[0]}"
