r"""Samples of the linearised network, without a Jacobian: :func:`linearized_samples`.

Linearising the network around the posterior means ``θ*``,

.. math:: f_\mathrm{lin}(x; \theta) = f(x; \theta^*) + J(x)\,(\theta - \theta^*),
    \qquad \theta_k \sim N(\theta^*, \Sigma),

each draw ``θ_k`` of the posterior held in the layers gives one function sample
``f(x; θ*) + J(x) δ_k`` (``δ_k = θ_k - θ*``): jointly over the batch and every position,
these are exact samples of the Gaussian ``N(f(x; θ*), J Σ Jᵀ)`` whose per-example
moments :func:`~bayesian_layers.laplace.glm_predictive` forms from Jacobians (Immer et
al. 2021; Laplace Redux §4; the predictive of Laplace-LoRA, Yang et al. 2024). Each
Jacobian-vector product ``J(x) δ_k`` is one forward-mode pass (``torch.func.jvp`` of
``functional_call`` over the random parameters' means, the model in eval mode on its
posterior means), vectorised over the draws with ``torch.func.vmap``: about the cost
of two or three forwards and the memory of one per draw, never the ``O(B·T·C·P)``
Jacobian a language model's ``(B, T, V)`` logits would need.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..initializers.full_normal import FullNormal
from ..initializers.kron_normal import KroneckerNormal, kron_draw
from ..layers.base import BayesianLayer
from ..sampling import posterior_mean
from .curvature import eval_mode
from .predictive import _posterior_parts

__all__ = ["linearized_samples", "draw_deviations"]

_FN = "laplace.linearized_samples"

#: budget of one vectorised chunk of Jacobian-vector products (bytes, estimated)
_CHUNK_BYTES = 64 * 2**20

Parts = list[tuple[str, BayesianLayer, str]]


def draw_deviations(
    parts: Parts, n: int, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """``n`` draws of ``θ - θ*`` from the posterior of each random parameter.

    Kronecker (``Q_G (ε / sqrt(λ_G λ_Aᵀ + τ)) Q_Aᵀ``), normal (``σ ε``) and the joint
    full family (``Σ_j z_j U_j`` with one ``z ∈ R^P`` per draw shared by every joint
    tensor, so cross-tensor covariances are kept). Draws use ``generator`` in the order
    of ``parts`` (the joint ``z`` first).

    Args:
        parts: ``(state name of the mean, layer, parameter)`` of each random parameter.
        n: the number of draws.
        generator: the random number generator (``None``: torch's default).

    Returns:
        ``{state name: (n, *shape)}`` deviations in each mean's dtype and device.
    """
    out: dict[str, Tensor] = {}
    z: Tensor | None = None
    for key, layer, name in parts:
        init = layer.parameter_spec(name).initializer
        loc = layer.point(name).detach()
        if isinstance(init, FullNormal):
            if z is None:
                z = torch.randn(
                    n, init.joint_size, dtype=loc.dtype, device=loc.device, generator=generator
                )
            factor = init.deviations.to(dtype=loc.dtype, device=loc.device)  # (P, *shape)
            out[key] = torch.tensordot(z, factor, dims=1)
            continue
        eps = torch.randn(n, *loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
        if isinstance(init, KroneckerNormal):
            with torch.no_grad():
                q = init.distribution(layer, name)
                out[key] = kron_draw(torch.zeros_like(loc), eps, q)
        else:
            _, scale = layer.posterior_loc_scale(name)
            assert scale is not None  # a random normal parameter
            out[key] = scale.detach() * eps
    return out


@contextmanager
def _forward_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, posterior means, no autograd graph, and attention on the math kernel
    (the fused CPU kernel has no forward-mode derivative)."""
    with eval_mode(model), posterior_mean(model), torch.no_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            yield


def _check_count(argument: str, value: object, *, none: bool = False) -> None:
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "an int >= 1" + (" or None" if none else "")
        raise ValueError(f"{_FN} expected `{argument}` {expected}, got {value!r}")


def _jvps(
    f: Callable[[dict[str, Tensor]], Tensor],
    means: dict[str, Tensor],
    tangents: dict[str, Tensor],
    vectorize: bool,
) -> tuple[Tensor, bool]:
    """``J δ`` for each of the ``n`` tangents ``(n, *shape)``: ``(n, B, ..., C)``;
    vectorised when it works (then and later), else a loop. Returns whether vmap worked."""

    def one(t: dict[str, Tensor]) -> Tensor:
        return jvp(f, (means,), (t,))[1]

    with warnings.catch_warnings():
        # torch's own: a batching rule it falls back on (still exact), and the
        # deprecated TorchScript its forward-mode decompositions load on first use
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
        if vectorize:
            try:
                return vmap(one)(tangents), True
            except (RuntimeError, NotImplementedError):
                pass  # an op without a batching rule for forward mode: the loop below
        n = next(iter(tangents.values())).shape[0]
        rows = [one({k: v[i] for k, v in tangents.items()}) for i in range(n)]
    return torch.stack(rows), False


def linearized_samples(
    model: nn.Module,
    x: Tensor,
    num_samples: int = 32,
    *,
    antithetic: bool = True,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""``K`` function samples of the network linearised at the posterior means.

    .. math:: f_k = f(x; \theta^*) + J(x)\,\delta_k, \qquad
        \delta_k = \theta_k - \theta^*, \quad \theta_k \sim N(\theta^*, \Sigma)

    with ``Σ`` the posterior held in ``model``'s layers (normal, Kronecker or the joint
    full family: a Laplace fit, or a mean-field variational posterior). ``f_k`` is
    exactly distributed as ``N(f(x; θ*), J Σ Jᵀ)``, the GLM predictive: its mean is the
    MAP output, whatever the posterior's width. Classification's predictive
    probabilities are the Monte Carlo average ``(1/K) Σ_k softmax(f_k)`` (the "GLM MC"
    predictive; :func:`~bayesian_layers.laplace.glm_predictive` gives the probit
    approximation instead). Each ``J(x) δ_k`` is a forward-mode Jacobian-vector product
    (``torch.func.jvp``), vectorised over a chunk of draws (``torch.func.vmap``; a loop
    where an operation has no batching rule): memory of a few forwards per draw in a
    chunk, never a Jacobian. Attention runs on the math kernel of
    ``scaled_dot_product_attention`` (the fused CPU kernel has no forward-mode rule).

    Antithetic pairs (default): samples ``k`` and ``K - K//2 + k`` (``k < K//2``) use
    ``δ_k`` and ``-δ_k``, so ``K//2`` products give ``2·(K//2)`` samples, and for an
    even ``K`` the sample mean equals ``f(x; θ*)`` up to rounding (an odd ``K``'s last
    draw is unpaired). The samples are still exact draws of the Gaussian each; only
    pairs are dependent.

    Args:
        model: a Bayesian model (e.g. returned by :func:`~bayesian_layers.laplace.fit`);
            run in eval mode on its posterior means, its modes restored after.
        x: a batch of inputs ``(B, ...)``, the one tensor ``model`` takes.
        num_samples: ``K >= 1``.
        antithetic: draw ``δ`` and ``-δ`` in pairs (see above).
        chunk_size: draws per vectorised call; ``None`` picks the largest count whose
            estimated temporaries (eight outputs' worth per draw plus the deviations)
            stay under 64 MiB.
        generator: the random number generator of the draws (``None``: torch's
            default); the draws are :func:`draw_deviations` of each chunk in turn.

    Returns:
        ``(K, B, ..., C)``: the samples, for outputs ``(B, ..., C)`` (a language
        model's ``(B, T, V)`` logits give ``(K, B, T, V)``). Wrap them as
        ``bl.Predictive(s, s.mean(0), s.var(0, correction=0))`` where a
        :class:`~bayesian_layers.Predictive` is wanted.

    Raises:
        ValueError: ``num_samples`` or ``chunk_size`` not an int ``>= 1``, a model
            without random parameters, a posterior that is neither normal, Kronecker nor
            full, or an output with fewer than two dimensions.
        TypeError: ``x`` is not a tensor, or ``antithetic`` not a bool.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesian_layers.laplace import fit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
        >>> post = fit(net, [(torch.randn(16, 3), torch.randint(0, 4, (16,)))], hessian="kron")
        >>> x = torch.randn(5, 3)
        >>> s = linearized_samples(post, x, num_samples=8)
        >>> s.shape, torch.allclose(s.mean(0), net(x), atol=1e-6)  # antithetic: mean = MAP
        (torch.Size([8, 5, 4]), True)
        >>> probs = s.softmax(-1).mean(0)  # the predictive probabilities (5, 4)
    """
    _check_count("num_samples", num_samples)
    _check_count("chunk_size", chunk_size, none=True)
    if not isinstance(antithetic, bool):
        raise TypeError(f"{_FN} expected `antithetic` a bool, got {antithetic!r}")
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise TypeError(f"{_FN} expected `x` a batched Tensor, got {type(x).__name__}")
    parts = _posterior_parts(model, fn=_FN)
    means = {key: layer.point(name).detach() for key, layer, name in parts}

    def f(params: dict[str, Tensor]) -> Tensor:
        return functional_call(model, params, (x,), strict=False)

    pairs = num_samples // 2 if antithetic else 0
    draws = num_samples - pairs  # δ_0 .. δ_{draws-1}; the first `pairs` also as -δ
    with _forward_mode(model):
        f_mu = f(means)
        if not isinstance(f_mu, Tensor) or f_mu.dim() < 2:
            shape = tuple(f_mu.shape) if isinstance(f_mu, Tensor) else type(f_mu).__name__
            raise ValueError(
                f"{_FN} expected model outputs of shape (B, C) or (B, ..., C), got {shape}"
            )
        if chunk_size is None:
            per_draw = f_mu.element_size() * (
                8 * f_mu.numel() + sum(m.numel() for m in means.values())
            )
            chunk_size = max(1, _CHUNK_BYTES // per_draw)
        out = f_mu.new_empty(num_samples, *f_mu.shape)
        vectorize = True
        for start in range(0, draws, chunk_size):
            n = min(chunk_size, draws - start)
            tangents = draw_deviations(parts, n, generator)
            jd, vectorize = _jvps(f, means, tangents, vectorize)
            out[start : start + n] = f_mu + jd
            stop = min(start + n, pairs)  # the antithetic partners of this chunk's draws
            if stop > start:
                out[draws + start : draws + stop] = f_mu - jd[: stop - start]
    return out
