"""Cheaper forms of K predictive samples of a dense layer, each with the law of the
estimator's own samples: output-space noise (per example) and, at one input shared by
all K samples, the exact joint law over the batch from a B x B factor per output unit;
and, where the caller asks only for each example's law (``bl.predict(...,
joint=False)``), output-space noise for whole-draw posteriors (normal and Kronecker).

:func:`bayesian_layers.predict` uses them; they are never used in training (the
gradients of the cheaper forms are those of other estimators). Part of
:mod:`bayesian_layers.layers.estimators`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ...initializers.kron_normal import KroneckerNormal
from ..functional.linear import add_sample_bias
from .op import WeightOp, local_reparameterization_moments, predictive_moments

if TYPE_CHECKING:
    from ..base import BayesianLayer

__all__ = [
    "output_noise_samples",
    "batch_joint_samples",
    "use_batch_joint",
    "whole_draw_samples",
    "marginal_samples",
    "kron_marginal_samples",
]

#: the batch joint form pays while ``B² <= BATCH_JOINT_RATIO · K``: it costs a
#: ``(B², in) x (in, out)`` matmul and ``out`` Cholesky factors of ``B x B`` once, against
#: ``K · in · out`` normal draws for K whole weights (measured on CPU: 10 against 120 ms
#: at B = 16, K = 32, 784 x 512).
BATCH_JOINT_RATIO = 32


def output_noise_samples(
    layer: BayesianLayer,
    x: Tensor,
    op: WeightOp,
    weight: str,
    bias: str | None,
    loc: Tensor,
    scale: Tensor,
    k: int,
    *,
    shared: bool,
) -> Tensor:
    r"""K samples of ``op(x, W, b)`` with every output element drawn from its marginal
    (local reparameterization's law, :func:`~.op.local_reparameterization_moments`),
    independently: output-space noise.

    For a dense layer on a 2-D input this is, per example, exactly the law of a whole
    weight draw (the rows of ``W`` are independent), so a chain of such layers gives each
    example's output its exact law; only the dependence between examples differs. At a
    shared input the noise is that of the folded call, so for a fixed seed the samples
    are the folded call's.

    Args:
        layer: the layer (its noise comes from ``layer.noise(f"{weight}_output")``).
        x: ``(B, ...)`` when ``shared`` (one input for all K samples: the moments are
            computed once), else ``(K * B, ...)`` sample-major.
        op: the family's op.
        weight, bias: parameter names (``bias`` None: no bias). A random bias of a
            non-normal family is drawn whole, once per sample.
        loc, scale: the normal weight posterior's mean and scale.
        k: K, the function samples.
        shared: whether ``x`` is shared by the K samples.

    Returns:
        ``(K * B, ...)``, sample-major.
    """
    bias_loc, bias_scale = None, None
    sampled_bias = None
    if bias is not None:
        spec = layer.parameter_spec(bias)
        if spec.is_random and not spec.initializer.is_normal:
            sampled_bias = layer.sample_param(bias)  # (K, out): one draw per sample
        else:
            bias_loc, bias_scale = layer.posterior_loc_scale(bias)
    if shared or k == 1:  # the per-call store can hit only here (K folded copies are new)
        mean, std = predictive_moments(layer, weight, op, x, loc, scale, bias_loc, bias_scale)
    else:
        mean, std = local_reparameterization_moments(op, x, loc, scale, bias_loc, bias_scale)
    rows = mean.shape[0] * (k if shared else 1)
    noise = layer.noise(f"{weight}_output", (rows, *mean.shape[1:]), loc).to(mean.dtype)
    if shared:  # the moments once, broadcast over the K samples
        y = torch.addcmul(mean, std, noise.view(k, *mean.shape)).view(noise.shape)
    else:
        y = torch.addcmul(mean, std, noise)
    return y if sampled_bias is None else op.add_sample_bias(y, sampled_bias, k)


def use_batch_joint(layer: BayesianLayer, x: Tensor, weight: str, k: int) -> bool:
    """Whether :func:`batch_joint_samples` is cheaper than K whole draws and applies: a
    2-D float32/float64 input of ``1 <= B <= in_features`` rows with ``B² <=``
    :data:`BATCH_JOINT_RATIO` ``· K``, a normal weight posterior, no noise hook, and not
    inside ``torch.compile`` or a CUDA graph capture (it checks its factors on the host)."""
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float64) or layer.has_noise_hooks:
        return False
    if torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return False  # its singularity check reads a flag on the host
    rows, features = x.shape
    if not 0 < rows <= features or rows * rows > BATCH_JOINT_RATIO * k:
        return False
    init = layer.parameter_spec(weight).initializer
    return bool(init.is_normal) and not init.is_deterministic


def batch_joint_samples(
    layer: BayesianLayer, x: Tensor, weight: str, bias: str | None, k: int
) -> Tensor | None:
    r"""K exact function samples of a dense layer at one input ``x`` shared by all of
    them, without drawing whole weights.

    Under ``W ~ N(μ, σ²)`` elementwise, the column ``o`` of ``y = x Wᵀ`` over the batch is
    :math:`\mathcal N(x\mu_o, x\,\mathrm{diag}(\sigma_o^2)\,x^\top)`, independent across
    ``o``: it is drawn as ``x μ_oᵀ + L_o z`` with ``L_o`` the Cholesky factor of that
    ``B x B`` covariance and ``z ~ N(0, I_B)``: ``K · out · B`` normal draws instead
    of ``K · out · in``. The joint law over the batch is that of K whole weight draws,
    so the samples are function samples. A random bias is drawn whole, per sample.

    Shape: ``x`` ``(B, in)``; returns ``(K * B, out)``, sample-major; ``None`` where a
    covariance is singular (repeated or zero rows): the caller then draws whole weights.
    """
    loc, scale = layer.posterior_loc_scale(weight)
    assert scale is not None  # use_batch_joint checked that the weight is random
    rows = x.shape[0]
    pairs = (x.unsqueeze(1) * x.unsqueeze(0)).reshape(rows * rows, -1)  # (B², in)
    cov = (scale.square() @ pairs.T).reshape(-1, rows, rows)  # (out, B, B)
    factor, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        return None  # singular (repeated or zero rows): the caller draws whole weights
    z = layer.noise(f"{weight}_batch", (loc.shape[0], rows, k), loc)  # (out, B, K)
    noise = torch.bmm(factor, z).permute(2, 1, 0)  # (K, B, out)
    b = None if bias is None else layer.sample_param(bias)  # (out,) or (K, out)
    y = (F.linear(x, loc) + noise).reshape(k * rows, -1)
    return add_sample_bias(y, b, k)


def whole_draw_samples(
    layer: BayesianLayer, x: Tensor, weight: str, bias: str | None, k: int
) -> Tensor:
    """K whole weight draws (any posterior family) applied to one input ``x`` shared by
    all of them as one ``(B, in) x (in, K * out)`` matmul: the draws, and so the samples
    for a fixed seed, of the folded call, without K copies of ``x``.

    Shape: ``x`` ``(B, in)``; returns ``(K * B, out)``, sample-major.
    """
    w = layer.sample_param(weight)  # (K, out, in), or (out, in) for K = 1
    b = None if bias is None else layer.sample_param(bias)
    if k == 1:
        return F.linear(x, w, b)
    out = w.shape[-2]
    y = (x @ w.reshape(k * out, -1).T).view(x.shape[0], k, out).transpose(0, 1)  # (K, B, out)
    return add_sample_bias(y.reshape(k * x.shape[0], out), b, k)


def kron_marginal_samples(
    layer: BayesianLayer, x: Tensor, weight: str, bias: str | None, k: int
) -> Tensor:
    r"""K samples of a dense layer with a Kronecker (Laplace) weight posterior at one input
    ``x`` shared by all of them, each example's output drawn from its exact law.

    With precision ``G ⊗ A + τ I`` of ``W`` ``(O, I)`` in the eigenbases
    ``Q_G``, ``Q_A`` (eigenvalues ``Λ_oi = λ_Go λ_Ai + τ``), ``W = M + Q_G E Q_Aᵀ`` with
    independent ``E_oi ~ N(0, 1/Λ_oi)``, so for one example ``x_b``:
    :math:`W x_b = M x_b + Q_G u_b`, :math:`u_{bo} \sim \mathcal N(0, \sum_i
    z_{bi}^2 / \Lambda_{oi})` independently, ``z = x Q_A``. One ``(B, I) x (I, I)``
    matmul and ``K · B · O`` normal numbers, against ``K · O · I`` numbers and the
    rotation of K whole draws; the examples of one sample are independent (a random bias
    is drawn per example too), not one function.

    Shape: ``x`` ``(B, in)``; returns ``(K * B, out)``, sample-major.
    """
    init = layer.parameter_spec(weight).initializer
    assert isinstance(init, KroneckerNormal)  # marginal_samples checked the family
    q = init.distribution(layer, weight)
    dtype, x = x.dtype, x.to(q.loc.dtype)  # in the parameters' dtype (autocast: back at the end)
    rows = x.shape[0]
    z = x @ q.eigvecs_a  # (B, I) in A's eigenbasis
    var = z.square() @ q._eig_precision().reciprocal().T  # (B, O)
    mean = F.linear(x, q.loc)  # (B, O)
    shared = _kron_bias_in_basis(layer, bias, q.eigvecs_g)
    if shared is not None:  # a Kronecker bias of the same G: one draw in Q_G's basis
        mean, var, bias = mean + shared[0], var + shared[1], None
    eps = layer.noise(f"{weight}_output", (k, rows, var.shape[-1]), q.loc)
    y = (mean + (var.sqrt() * eps) @ q.eigvecs_g.T).reshape(k * rows, -1)  # sample-major
    if bias is not None:
        spec = layer.parameter_spec(bias)
        if spec.is_random:  # drawn per example too: K·B draws of its own family
            noise = layer.noise(bias, (k * rows, *spec.shape), q.loc, kind="parameter")
            y = y + layer.draw_param(bias, noise)
        else:
            y = y + layer.sample_param(bias)
    return y.to(dtype)


def _kron_bias_in_basis(
    layer: BayesianLayer, bias: str | None, eigvecs_g: Tensor
) -> tuple[Tensor, Tensor] | None:
    """``(loc (O,), variance (O,))`` of a random Kronecker ``bias`` in the eigenbasis
    ``eigvecs_g`` of the weight's ``G`` when its own ``G`` has that basis (a Laplace fit
    shares one ``G`` between a layer's weight and bias), else ``None``."""
    if bias is None:
        return None
    spec = layer.parameter_spec(bias)
    init = spec.initializer
    if not (spec.is_random and isinstance(init, KroneckerNormal)):
        return None
    qb = init.distribution(layer, bias)
    if qb.eigvecs_g.shape != eigvecs_g.shape or not torch.equal(qb.eigvecs_g, eigvecs_g):
        return None
    # the bias (O,) viewed as (O, 1): Q_G (ε / sqrt(Λ_b)) q_A, q_A = ±1 — per o in Q_G's
    # basis an independent N(0, 1 / Λ_b,o)
    return qb.loc.reshape(-1), qb._eig_precision().reciprocal().reshape(-1)


def marginal_samples(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str, bias: str | None, k: int
) -> Tensor | None:
    """K samples of a whole-draw dense layer at one input ``x`` shared by all of them,
    each example's output from its exact law but independent across the examples of one
    sample: :func:`output_noise_samples` for a normal weight posterior,
    :func:`kron_marginal_samples` for a Kronecker one; ``None`` for other families (the
    caller draws whole weights).

    Shape: ``x`` ``(B, in)``; returns ``(K * B, out)``, sample-major.
    """
    init = layer.parameter_spec(weight).initializer
    if isinstance(init, KroneckerNormal):
        return kron_marginal_samples(layer, x, weight, bias, k)
    if not init.is_normal or init.is_deterministic:
        return None
    loc, scale = layer.posterior_loc_scale(weight)
    assert scale is not None  # a random normal weight
    return output_noise_samples(layer, x, op, weight, bias, loc, scale, k, shared=True)
