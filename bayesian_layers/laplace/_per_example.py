"""Per-example rows ``S_nᵀ J_n`` of any parameters, by ``torch.func`` (private).

The generic curvature path: for modules without a hook-based rule (recurrent, attention,
embedding layers) and for the full GGN. With ``J_n = ∂f(x_n)/∂θ`` ``(C, P)`` and
``Λ_n = S_n S_nᵀ`` (:func:`~bayesian_layers.laplace.curvature.hessian_sqrt`), the GGN is
``Σ_n R_nᵀ R_n`` with ``R_n = S_nᵀ J_n`` ``(C, P)``; its diagonal ``Σ_n Σ_c R_{ncp}²``.

Each example runs alone (``x[n:n+1]``; the model in eval mode, so its outputs are those of
the batch; checked on the first example, and a sequence-first input ``(T, B, ...)`` runs
as a whole batch instead, ``O(B²)``) and the ``C`` vector–Jacobian products with the
cotangents ``S_n[:, c]`` give its rows, ``torch.func.vmap`` over the examples and the
cotangents: ``B`` single-example forward passes, ``B·C`` products, ``O(B C P)`` memory
per batch. Where ``vmap`` cannot run the model per example (an embedding's index check,
say), chunks of ``m = 8`` examples go through the chunk's output, ``∂f_n/∂θ`` being the
per-example Jacobian: the cotangent ``e_n ⊗ S_n[:, c]`` gives row ``(n, c)``, ``m·C``
products of a chunk vmapped (cost ``O(B m C)`` single-example backward passes);
``vectorize=False`` loops over everything.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from ._layers import point_value

__all__ = ["per_example_rows", "JacobianAccumulator", "getattr_path"]

_VMAP_FAILS = (RuntimeError, NotImplementedError)
#: examples per batch-output product where vmap cannot run the model per example (its
#: cost is quadratic in this size, its Python overhead inversely proportional)
_CHUNK = 8


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, silent about a batching rule torch falls back on (still exact)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        return fn(*args)


def per_example_rows(
    model: nn.Module,
    x: Tensor,
    means: dict[str, Tensor],
    s: Tensor,
    *,
    f: Tensor | None = None,
    vectorize: bool = True,
) -> dict[str, Tensor]:
    """``R_n = S_nᵀ J_n`` for each tensor of ``means``.

    Args:
        model: in eval mode, on its posterior means (``bl.posterior_mean``).
        x: the batch ``(B, ...)`` ``model`` takes (one tensor).
        means: state name (``"lstm.weight_ih_l0_loc"``, ``"0.weight"``) -> the value the
            Jacobian is taken at.
        s: ``(B, C, K)``, ``Λ_n = S_n S_nᵀ`` (``K = C``; or ``K`` Monte Carlo columns
            with ``E[S_n S_nᵀ] = Λ_n``), column ``c`` of example ``n`` is ``s[n, :, c]``.
        f: the batch's outputs ``(B, C)``, if known: running example 0 alone must give
            ``f[0]`` (else the batch runs whole). Outputs ``(B, ..., C)`` are flattened
            to ``(B, C')`` (``s`` then ``(B, C', C')``).
        vectorize: batch the products with ``vmap`` (a loop over examples and outputs
            if ``False``).

    Returns:
        state name -> ``(B, K, *shape)``, row ``[n, c]`` is ``Σ_d S_n[d, c] ∂f_{nd}/∂θ``.

    Raises:
        TypeError: ``x`` is not a tensor.

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
    if not isinstance(x, Tensor):
        raise TypeError(
            "laplace.fit expected batches whose input is one tensor for the per-example "
            f"Jacobians of recurrent, attention, embedding layers or hessian='full', got "
            f"{type(x).__name__}"
        )
    keys = list(means)
    values = tuple(means[k].detach() for k in keys)

    def pullback_of(xs: Tensor, squeeze: bool) -> Callable[..., tuple[Tensor, ...]]:
        def f(*v: Tensor) -> Tensor:
            out = functional_call(model, dict(zip(keys, v, strict=True)), (xs,), strict=False)
            out = out.flatten(1)  # (B, ..., C) outputs: one vector per example
            return out[0] if squeeze else out

        return vjp(f, *values)[1]

    def one(xn: Tensor, sn: Tensor) -> tuple[Tensor, ...]:  # vmapped over the examples
        return vmap(pullback_of(xn.unsqueeze(0), True))(sn.T)  # cotangent c: S_n[:, c]

    split = _splits_by_example(model, x, s.shape[0], f)
    if vectorize and split:
        try:
            rows = _quiet(vmap(one), x, s)
            return _shaped(rows, keys, means, s)
        except _VMAP_FAILS:  # the model cannot run under vmap over the examples
            pass
    # a few examples at a time (all of them when the input's first dimension is not the
    # examples') through their output: cotangent (n, c) = e_n ⊗ S_n[:, c]
    parts = []
    size = (_CHUNK if vectorize else 1) if split else s.shape[0]
    for xs, ss in zip(x.split(size), s.split(size), strict=True):
        if not split:
            xs = x
        m, c, k = ss.shape
        eye = torch.eye(m, dtype=ss.dtype, device=ss.device)
        cot = (eye[:, None, :, None] * ss.transpose(1, 2)[:, :, None, :]).reshape(m * k, m, c)
        pullback = pullback_of(xs, False)
        part: tuple[Tensor, ...] | None = None
        if vectorize:
            try:
                part = _quiet(vmap(pullback, chunk_size=_CHUNK * k), cot)
            except _VMAP_FAILS:
                part = None
        if part is None:
            each = [pullback(cot[i]) for i in range(m * k)]
            part = tuple(torch.stack([e[j] for e in each]) for j in range(len(keys)))
        parts.append(part)
    rows = tuple(torch.cat([p[j] for p in parts]) for j in range(len(keys)))
    return _shaped(rows, keys, means, s)


def _splits_by_example(model: nn.Module, x: Tensor, b: int, f: Tensor | None) -> bool:
    """Whether ``x[n:n+1]`` is example ``n`` alone: ``x``'s first dimension has the ``B``
    examples and the first one run alone gives one ``(1, C)`` output (equal to ``f[0]``
    when given). A sequence-first input ``(T, B, ...)`` fails it."""
    if x.dim() == 0 or x.shape[0] != b:
        return False
    if b == 1:
        return True
    with torch.no_grad():
        first = model(x[:1])
    if first.dim() < 2 or first.shape[0] != 1:
        return False
    first = first.flatten(1)
    if f is None:
        return True
    f0 = f[:1].detach().flatten(1)
    if first.shape != f0.shape:
        return False
    return bool(torch.allclose(first, f0, rtol=1e-3, atol=1e-3 * (1 + float(f0.abs().max()))))


def _shaped(
    rows: tuple[Tensor, ...], keys: list[str], means: dict[str, Tensor], s: Tensor
) -> dict[str, Tensor]:
    b, cols = s.shape[0], s.shape[2]
    return {
        k: r.detach().reshape(b, cols, *means[k].shape) for k, r in zip(keys, rows, strict=True)
    }


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

    def add(self, x: Any, s: Tensor, f: Tensor | None = None) -> None:
        """Add batch ``x`` (outputs ``f`` ``(B, C)``) with ``Λ_n = S_n S_nᵀ`` (``s``:
        ``(B, C, C)``)."""
        if not self.parts:
            return
        rows = per_example_rows(self.model, x, self.means, s, f=f)
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
