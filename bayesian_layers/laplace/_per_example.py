"""Per-example rows ``S_nᵀ J_n`` of any parameters, by ``torch.func`` (private).

The generic curvature path: for modules without a hook-based rule (recurrent, attention,
embedding layers) and for the full GGN. With ``J_n = ∂f(x_n)/∂θ`` ``(C, P)`` and
``Λ_n = S_n S_nᵀ`` (:func:`~bayesian_layers.laplace.curvature.hessian_sqrt`), the GGN is
``Σ_n R_nᵀ R_n`` with ``R_n = S_nᵀ J_n`` ``(C, P)``; its diagonal ``Σ_n Σ_c R_{ncp}²``.

The model runs in eval mode on its posterior means (the caller arranges both), so
example ``n``'s outputs depend on ``x_n`` alone and ``∂f_n/∂θ`` of the batch output is
the per-example Jacobian: one ``vjp`` with the cotangent ``e_n ⊗ S_n[:, c]`` gives row
``R_{nc}``. The ``B·C`` cotangents go through ``torch.func.vmap`` at once, or one at a
time (``vectorize=False``, or when ``vmap`` cannot batch an operation of the model).
Cost: ``B·C`` vector–Jacobian products, ``O(B C P)`` memory per batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from ._layers import point_value

__all__ = ["per_example_rows", "JacobianAccumulator", "getattr_path"]


def per_example_rows(
    model: nn.Module,
    x: Any,
    means: dict[str, Tensor],
    s: Tensor,
    *,
    vectorize: bool = True,
) -> dict[str, Tensor]:
    """``R_n = S_nᵀ J_n`` for each tensor of ``means``.

    Args:
        model: in eval mode, on its posterior means (``bl.posterior_mean``).
        x: the batch ``model`` takes.
        means: state name (``"lstm.weight_ih_l0_loc"``, ``"0.weight"``) -> the value the
            Jacobian is taken at.
        s: ``(B, C, C)``, ``Λ_n = S_n S_nᵀ``, column ``c`` of example ``n`` is
            ``s[n, :, c]``.
        vectorize: batch the ``B·C`` products with ``vmap`` (a loop if ``False`` or if
            ``vmap`` fails).

    Returns:
        state name -> ``(B, C, *shape)``, row ``[n, c]`` is ``Σ_d S_n[d, c] ∂f_{nd}/∂θ``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> s = torch.eye(2).expand(4, 2, 2)  # Λ = I: the rows are the Jacobians
        >>> rows = per_example_rows(net, x, {"weight": net.weight.detach()}, s)
        >>> torch.allclose(rows["weight"][1, 0, 0], x[1])  # ∂f_{1,0}/∂W[0, :] = x_1
        True
    """
    keys = list(means)

    def f(*values: Tensor) -> Tensor:
        return functional_call(model, dict(zip(keys, values, strict=True)), (x,), strict=False)

    out, pullback = vjp(f, *(means[k].detach() for k in keys))[:2]
    b, c = out.shape
    eye = torch.eye(b, dtype=s.dtype, device=s.device)
    # cotangent (n, c): e_n ⊗ S_n[:, c], laid out (B, C, B, C) -> (B·C, B, C)
    cot = (eye[:, None, :, None] * s.transpose(1, 2)[:, :, None, :]).reshape(b * c, b, c)
    rows: tuple[Tensor, ...] | None = None
    if vectorize:
        try:
            with warnings.catch_warnings():  # a batching rule torch falls back on: still exact
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                rows = vmap(pullback)(cot)
        except (RuntimeError, NotImplementedError):  # an op vmap cannot batch
            rows = None
    if rows is None:
        parts = [pullback(cot[i]) for i in range(b * c)]
        rows = tuple(torch.stack([p[j] for p in parts]) for j in range(len(keys)))
    return {k: r.detach().reshape(b, c, *means[k].shape) for k, r in zip(keys, rows, strict=True)}


def _state_keys(model: nn.Module, layers: list[Any], fn: str) -> list[tuple[Any, str, str]]:
    """``(layer curvature, parameter, state name of its mean)`` of every group."""
    ids = {id(p): k for k, p in model.named_parameters()}
    out = []
    for lc in layers:
        for name in lc.params:
            value = point_value(lc.module, name)
            key = ids.get(id(value))
            if key is None:
                raise ValueError(
                    f"{fn} expected {lc.name}.{name} to be a parameter of the model (its "
                    f"posterior mean), got a {type(value).__name__} that is not one"
                )
            out.append((lc, name, key))
    return out


class JacobianAccumulator:
    """Sums the GGN diagonal (``full=False``) or the full GGN of ``layers`` over batches,
    from :func:`per_example_rows`.

    Args:
        model: the whole model (eval mode, posterior means while :meth:`add` runs).
        layers: :class:`~bayesian_layers.laplace.curvature.LayerCurvature` records
            whose ``diag`` is filled (``full=False``).
        full: accumulate the ``(P, P)`` matrix over all their parameter tensors, in
            order, instead.
        fn: the public function named in errors.
    """

    def __init__(self, model: nn.Module, layers: list[Any], *, full: bool, fn: str) -> None:
        self.model = model
        self.parts = _state_keys(model, layers, fn)
        self.means = {key: getattr_path(model, key).detach() for _, _, key in self.parts}
        self.full = full
        self.matrix: Tensor | None = None

    def add(self, x: Any, s: Tensor) -> None:
        """Add batch ``x`` with ``Λ_n = S_n S_nᵀ`` (``s``: ``(B, C, C)``)."""
        if not self.parts:
            return
        rows = per_example_rows(self.model, x, self.means, s)
        if self.full:
            r = torch.cat([rows[key].flatten(2) for _, _, key in self.parts], -1)  # (B, C, P)
            h = torch.einsum("bcp,bcq->pq", r, r)
            self.matrix = h if self.matrix is None else self.matrix + h
            return
        for lc, name, key in self.parts:
            d = rows[key].square().sum((0, 1))
            lc.diag[name] = lc.diag[name] + d if name in lc.diag else d


def getattr_path(model: nn.Module, key: str) -> Tensor:
    """``model``'s parameter or buffer at the dotted state name ``key``."""
    module_path, _, attr = key.rpartition(".")
    owner = model.get_submodule(module_path) if module_path else model
    return getattr(owner, attr)
