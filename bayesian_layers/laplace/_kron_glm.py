"""The linearised predictive's covariance without parameter Jacobians (private; used by
:func:`bayesian_layers.laplace.glm_predictive`).

For a linear or 2-d convolution layer ``z_t = W a_t + b`` (``t`` over positions), the
Jacobian of output ``c`` of example ``n`` with respect to ``W`` is
``J_nc = Σ_t g_nct a_ntᵀ`` with ``g_nct = ∂f_nc / ∂z_nt``: a forward pass that records
each layer's input ``a`` and ``C`` backward passes that record ``g`` give every
Jacobian, with no ``O(B C P)`` tensor for the whole network. When ``T = 1`` (a linear
layer on ``(B, I)`` inputs) the covariance term of a Kronecker posterior needs no
Jacobian at all:

``(J Σ Jᵀ)_cd = Σ_o g̃_co g̃_do Σ_i ã_i² / (λ_Go λ_Ai + τ)``, ``g̃ = Q_Gᵀ g``,
``ã = Q_Aᵀ a``,

``O(O² + I² + O I)`` per example instead of the ``O(C (O² I + O I²))`` of rotating a
Jacobian; for a diagonal posterior ``(J Σ Jᵀ)_cd = Σ_o g_co g_do Σ_i a_i² σ²_oi``.
Convolutions (``T > 1``) rotate ``g`` and ``a`` per position first
(``Q_Gᵀ J Q_A = Σ_t g̃_t ã_tᵀ``, ``O(T (O² + I²))``) and then form the rotated
``J_nc`` per example, a few examples at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..initializers.kron_normal import KroneckerNormal
from ..layers.base import BayesianLayer
from ..sampling import posterior_mean
from ._layers import layer_kind as _kind
from .curvature import _frozen, _patches, recording_probes

__all__ = ["probe_moments"]

#: elements of the per-example Jacobians formed at once for a convolution
_CHUNK_ELEMENTS = 1 << 24


def _weight_term(layer: BayesianLayer, x: Tensor, g: Tensor) -> Tensor:
    """``J Σ Jᵀ`` of ``layer``'s weight: ``x`` ``(B, T, I)`` inputs, ``g`` ``(B, C, T, O)``
    output gradients -> ``(B, C, C)``."""
    init = layer.parameter_spec("weight").initializer
    b, c, t, o = g.shape
    if isinstance(init, KroneckerNormal):
        inv = (torch.outer(init.eigvals_g, init.eigvals_a) + init.prior_precision).reciprocal()
        # into the eigenbases: Q_Gᵀ J Q_A = Σ_t g̃ ãᵀ
        g, x = g @ init.eigvecs_g, x @ init.eigvecs_a
    else:
        _, scale = layer.posterior_loc_scale("weight")
        assert scale is not None  # a random normal weight
        inv = scale.reshape(o, -1).square()  # σ²_oi
    if t == 1:
        g1, a1 = g[:, :, 0], x[:, 0]  # (B, C, O), (B, I)
        w = a1.square() @ inv.T  # (B, O): Σ_i ã_i² inv_oi
        return torch.einsum("bco,bo,bdo->bcd", g1, w, g1)
    out = []
    step = max(1, _CHUNK_ELEMENTS // (c * o * x.shape[-1]))
    inv = inv.reshape(1, 1, -1)
    for gs, xs in zip(g.split(step), x.split(step), strict=True):
        n = gs.shape[0]
        # (n, C·O, T) @ (n, T, I): the rotated Jacobians, flattened to (n, C, O·I)
        jac = torch.bmm(gs.transpose(2, 3).reshape(n, c * o, t), xs).reshape(n, c, -1)
        out.append(torch.bmm(jac * inv, jac.transpose(1, 2)))
    return torch.cat(out)


def _bias_term(layer: BayesianLayer, g: Tensor) -> Tensor:
    """``J Σ Jᵀ`` of ``layer``'s bias: ``g`` ``(B, C, T, O)`` -> ``(B, C, C)``."""
    init = layer.parameter_spec("bias").initializer
    jac = g.sum(2)  # (B, C, O)
    if isinstance(init, KroneckerNormal):
        jac = jac @ init.eigvecs_g * init.eigvecs_a.reshape(())  # Q_A is (1, 1): ±1
        inv = (init.eigvals_g * init.eigvals_a.reshape(()) + init.prior_precision).reciprocal()
    else:
        _, scale = layer.posterior_loc_scale("bias")
        assert scale is not None  # a random normal bias
        inv = scale.reshape(-1).square()
    return torch.einsum("bco,o,bdo->bcd", jac, inv, jac)


def _supported(model: nn.Module) -> list[tuple[BayesianLayer, tuple[str, ...]]] | None:
    """``(layer, random parameter names)`` when every random parameter of ``model`` is the
    weight or bias of a linear / 2-d convolution layer with a normal or Kronecker
    posterior; ``None`` otherwise (the caller falls back to parameter Jacobians)."""
    found = []
    for layer in model.modules():
        if not isinstance(layer, BayesianLayer):
            continue
        names = tuple(n for n, _ in layer.named_random_parameters())
        if not names:
            continue
        if _kind(layer) not in ("linear", "conv2d") or not set(names) <= {"weight", "bias"}:
            return None
        for n in names:
            init = layer.parameter_spec(n).initializer
            if not (isinstance(init, KroneckerNormal) or init.is_normal):
                return None
        found.append((layer, names))
    return found or None


def probe_moments(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(f(x; θ*) (B, C), J Σ Jᵀ (B, C, C))`` of the posterior in ``model``'s linear and
    convolution layers, or ``None`` when a random parameter lives elsewhere.

    One forward pass (eval mode, posterior means) and ``C`` backward passes.
    """
    layers = _supported(model)
    if layers is None:
        return None
    modules = [layer for layer, _ in layers]
    with recording_probes(model, modules) as rec, posterior_mean(model), torch.enable_grad():
        with _frozen(model, True):
            f = model(x)  # the probes alone carry the graph
        if f.dim() != 2:
            return None  # the caller raises its error on the output's shape
        probes = rec.probes(modules)
        last = f.shape[1] - 1
        cols = [  # (the column sums are graph ops too: under enable_grad)
            torch.autograd.grad(f[:, c].sum(), probes, retain_graph=c < last)
            for c in range(f.shape[1])
        ]
    b, c = f.shape
    f_var = f.new_zeros(b, c, c)
    for i, (layer, names) in enumerate(layers):
        a = rec.seen[id(layer)][0]
        if _kind(layer) == "conv2d":
            xs = _patches(layer, a).transpose(1, 2)  # (B, T, I)
            g = torch.stack([col[i].flatten(2).transpose(1, 2) for col in cols], 1)
        else:
            xs = a.reshape(b, -1, a.shape[-1])
            g = torch.stack([col[i].reshape(b, -1, col[i].shape[-1]) for col in cols], 1)
        if "weight" in names:
            f_var = f_var + _weight_term(layer, xs, g)
        if "bias" in names:
            f_var = f_var + _bias_term(layer, g)
    return f.detach(), f_var.detach()
