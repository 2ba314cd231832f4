"""Bayesian embedding: a drop-in replacement for ``nn.Embedding``.

The layer is on the estimator template (:mod:`.estimators`): a lookup is linear in
the table (a one-hot matmul), so :class:`EmbeddingLookup` is its op and
``"mean"`` mode, ``"frozen"`` mode, tracing and deterministic tables run through
:data:`~.estimators.REPARAMETERIZATION` (whole-table draws). Only ``"sample"`` mode
has a path of its own: it draws the looked-up rows of the table, not all of it,
the same law as a whole draw at O(U · D) cost for U unique indices.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from .base import BayesianLayer
from .estimators import REPARAMETERIZATION, WeightOp
from .registry import converts

__all__ = ["EmbeddingLookup", "EmbeddingReparameterization"]


class EmbeddingLookup(WeightOp):
    """``F.embedding`` as the template's op for ``layer``: the padding row reads the
    posterior mean (no noise, no gradient from the output); K tables at once index
    one stacked table.

    Shape: indices ``(*)``; table ``(V, D)`` (``(K, V, D)`` batched); output ``(*, D)``.
    """

    def __init__(self, layer: EmbeddingReparameterization) -> None:
        self.layer = layer

    def _pad_rows(self, table: Tensor) -> Tensor:
        pad, loc = self.layer.padding_idx, self.layer.point("weight")
        if pad is None or table is loc:  # no padding row, or the means themselves
            return table
        is_pad = torch.arange(table.shape[-2], device=table.device) == pad  # (V,)
        return torch.where(is_pad.unsqueeze(-1), loc, table)

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        layer = self.layer
        table = self._pad_rows(weight)
        return F.embedding(x, table, layer.padding_idx, scale_grad_by_freq=layer.scale_grad_by_freq)

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        layer = self.layer
        v = weight.shape[-2]
        table = self._pad_rows(weight).reshape(k * v, -1)  # (K * V, D)
        offsets = torch.arange(k, device=x.device) * v  # block j reads table j
        idx = (x.reshape(k, -1) + offsets.unsqueeze(-1)).reshape(x.shape)
        out = F.embedding(idx, table, scale_grad_by_freq=layer.scale_grad_by_freq)
        if layer.padding_idx is None:
            return out
        keep = (x != layer.padding_idx).unsqueeze(-1)  # the padding rows get no gradient
        return torch.where(keep, out, out.detach())


@converts(nn.Embedding, "reparameterization")
class EmbeddingReparameterization(BayesianLayer):
    """Embedding table with a posterior ``q(W) = N(μ, σ²)``, one function per call.

    Drop-in for ``nn.Embedding``. A call is one draw of the whole table, but only
    the rows it looks up get noise: the call gathers the *unique* indices, draws
    one noise vector per unique row and then indexes, so every occurrence of a
    token within a call sees the same vector (one function per call), and
    distinct tokens are independent. Cost O(U · embedding_dim) for U unique
    indices, not the table size (under ``torch.compile``, where ``unique`` cannot be
    traced, the whole table gets noise: O(num_embeddings · embedding_dim), same law,
    and an index out of range raises ``RuntimeError`` when the graph runs).
    ``"frozen"`` mode (and a call under a tracer) draws the whole table, kept until
    ``resample()``; ``"mean"`` uses ``μ``. ``layer.losses`` is the KL of the whole
    table (rows never looked up included). The noise of the rows is asked of
    ``layer.noise("weight", (U, D), ..., kind="parameter")`` (``(K, U, D)`` with K
    function samples).

    Args:
        num_embeddings, embedding_dim, padding_idx, scale_grad_by_freq: as for
            ``nn.Embedding``. The ``padding_idx`` row returns its posterior mean
            (zeros at init), without noise and without a gradient from the output.
        max_norm, norm_type: looked-up vectors with a larger ``norm_type`` norm
            are rescaled to norm ``max_norm``. Unlike torch, which renormalises
            its weight table in place, the rescaling acts on the drawn vectors
            and is differentiable; the parameters are left untouched.
        sparse: only ``False``; the KL gradient touches every row anyway.
        weight_initializer: a normal (or deterministic) posterior family.
        weight_regularizer: penalty on the table (KL to ``N(0, 1)`` by default).
        device, dtype: factory arguments.

    Shape:
        - Input: integer indices ``(*)``.
        - Output: ``(*, embedding_dim)``.

    Attributes:
        weight: a :class:`~bayesian_layers.RandomVariable` over the table
            ``(num_embeddings, embedding_dim)`` (value: the posterior mean, or
            the frozen draw in ``"frozen"`` mode).
        weight_loc, weight_rho: the trainable posterior parameters.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.embedding import EmbeddingReparameterization
        >>> emb = EmbeddingReparameterization(10, 4, padding_idx=0)
        >>> emb(torch.tensor([[0, 3, 3]])).shape
        torch.Size([1, 3, 4])
    """

    estimator = REPARAMETERIZATION

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_embeddings = _check_features(name, "num_embeddings", num_embeddings)
        self.embedding_dim = _check_features(name, "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"{name} expected `padding_idx` in [-{num_embeddings}, {num_embeddings}), "
                    f"got {padding_idx}"
                )
            padding_idx = padding_idx % num_embeddings
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"{name} expected `max_norm` > 0, got {max_norm}")
        if sparse:
            raise NotImplementedError(
                f"{name} does not support sparse=True: the KL term's gradient covers the "
                "whole table, so gradients are dense anyway"
            )
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = float(norm_type)
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.sparse = False
        init = self.add_param(
            "weight", (num_embeddings, embedding_dim), weight_initializer, weight_regularizer,
            device=device, dtype=dtype,
        )  # fmt: skip
        if not (init.is_normal or init.is_deterministic):
            raise ValueError(
                f"{name} needs a normal (or deterministic) weight posterior, got "
                f"{type(init).__name__}"
            )
        if padding_idx is not None:
            with torch.no_grad():
                self.point("weight")[padding_idx].zero_()

    @classmethod
    def from_torch(cls, module: nn.Embedding, **kwargs: Any) -> EmbeddingReparameterization:
        """A Bayesian embedding with ``module``'s hyperparameters, posterior means at its
        table. Keyword arguments go to the constructor (initializer, regularizer).

        Example:
            >>> from torch import nn
            >>> emb = EmbeddingReparameterization.from_torch(nn.Embedding(10, 4, padding_idx=0))
            >>> emb.extra_repr()
            '10, 4, padding_idx=0'
        """
        if not isinstance(module, nn.Embedding):
            raise TypeError(
                f"{cls.__name__}.from_torch expected nn.Embedding, got {type(module).__name__}"
            )
        new = cls(
            module.num_embeddings, module.embedding_dim, module.padding_idx, module.max_norm,
            module.norm_type, module.scale_grad_by_freq, module.sparse,
            device=module.weight.device, dtype=module.weight.dtype, **kwargs,
        )  # fmt: skip
        new.load_point_estimates({"weight": module.weight})
        return new

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        return s

    def _check_input(self, input: object) -> Tensor:
        name = type(self).__name__
        input = self.check_input(input, floating=False)  # a Tensor (indices: any dtype yet)
        if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
            raise TypeError(f"{name} expected `input` of integer indices, got {input.dtype}")
        if input.numel() and torch.compiler.is_compiling():
            # no data-dependent Python branch in a compiled graph: a device-side check
            # (it raises RuntimeError, with this message, when the graph runs)
            in_range = (input.min() >= 0) & (input.max() < self.num_embeddings)
            torch._assert_async(in_range, f"{name} expected indices in [0, {self.num_embeddings})")
        elif input.numel() and input.device.type != "meta":  # meta: no values to check
            low, high = int(input.min()), int(input.max())
            if low < 0 or high >= self.num_embeddings:
                raise ValueError(
                    f"{name} expected indices in [0, {self.num_embeddings}), got values in "
                    f"[{low}, {high}]"
                )
        return input

    def forward(self, input: Tensor) -> Tensor:
        idx = self._check_input(input)
        k = self.check_samples(idx)
        # meta tensors have no values to deduplicate: the whole-draw path gives the shapes
        # rows of a mean-field normal table only: another family (a joint or low-rank
        # posterior, e.g. a full Laplace or SWAG fit) draws the whole table
        normal = self.parameter_spec("weight").initializer.is_normal
        if (
            normal
            and self.sampling == "sample"
            and self.per_example_noise()
            and idx.device.type != "meta"
        ):
            loc, scale = self.posterior_loc_scale("weight")
            if scale is not None:
                self.forget_draw("weight")  # rows only: no whole draw
                return self._renorm(self._looked_up_rows(idx, loc, scale, k))
        # mean, frozen, traced, a deterministic or non-normal table: whole draws
        out = self.estimator.project(self, idx, EmbeddingLookup(self), "weight", None)
        return self._renorm(out)

    def _looked_up_rows(self, idx: Tensor, loc: Tensor, scale: Tensor, k: int) -> Tensor:
        """One draw of the rows ``idx`` looks up (per function sample), each row once."""
        compiling = torch.compiler.is_compiling()
        if compiling:
            # unique() has a data-dependent size, which torch.compile cannot trace: draw
            # every row instead (the same law for the rows looked up, more noise drawn)
            unique, inverse = torch.arange(self.num_embeddings, device=idx.device), idx
        else:
            unique, inverse = torch.unique(idx, return_inverse=True)  # (U,), idx.shape
        shape = (unique.numel(), self.embedding_dim)
        noise = self.noise("weight", (k, *shape) if k > 1 else shape, loc, kind="parameter")
        rows = torch.addcmul(loc[unique], scale[unique], noise)  # ([K,] U, D)
        pad = None
        if self.padding_idx is not None:
            is_pad = unique == self.padding_idx
            rows = torch.where(is_pad.unsqueeze(-1), loc[unique].expand_as(rows), rows)
            if compiling:
                pad = self.padding_idx  # every row is present: row index == token index
            else:
                hits = is_pad.nonzero()
                pad = int(hits[0, 0]) if hits.numel() else None
        if k > 1:
            # K draws: block j of the sample-major batch reads rows[j].
            u = unique.numel()
            offsets = torch.arange(k, device=idx.device) * u  # (K,)
            inverse = (inverse.reshape(k, -1) + offsets.unsqueeze(-1)).reshape(idx.shape)
            rows = rows.reshape(k * u, self.embedding_dim)
            out = F.embedding(inverse, rows, scale_grad_by_freq=self.scale_grad_by_freq)
            if self.padding_idx is None:
                return out
            keep = (idx != self.padding_idx).unsqueeze(-1)  # the padding row: no gradient
            return torch.where(keep, out, out.detach())
        return F.embedding(inverse, rows, pad, scale_grad_by_freq=self.scale_grad_by_freq)

    def _renorm(self, out: Tensor) -> Tensor:
        if self.max_norm is None:
            return out
        norm = torch.linalg.vector_norm(out, ord=self.norm_type, dim=-1, keepdim=True)
        return out * (self.max_norm / (norm + 1e-7)).clamp(max=1.0)
