"""Per-layer generalised Gauss–Newton curvature: its diagonal, Kronecker factors, or the
full matrix.

For a network ``f(x; θ)`` and a likelihood with log-likelihood Hessian ``-Λ`` in the
outputs, the GGN is ``H = Σ_n J_nᵀ Λ_n J_n`` (``J_n = ∂f(x_n)/∂θ``):

* classification (softmax cross-entropy): ``Λ = diag(p) - p pᵀ``, ``p = softmax(f)``;
* regression (Gaussian with variance ``σ²``): ``Λ = I / σ²``.

Writing ``Λ = S Sᵀ`` (``S[:, c] = sqrt(p_c) (e_c - p)`` for the softmax, ``I / σ`` for
the Gaussian), the GGN is exact with one backward pass per output column ``c``: the
"gradient" of a layer's pre-activation ``z`` is ``g_c = (∂f/∂z)ᵀ S[:, c]``. No Monte
Carlo labels are drawn. For a linear or 2-d convolution layer ``z = W a + b`` (the same
on every patch ``t``), by forward hooks:

* ``"diag"``: the exact diagonal, ``Σ_n Σ_c (Σ_t g_{nct} a_{ntᵀ})²`` (and
  ``Σ_n Σ_c (Σ_t g_{nct})²`` for the bias), from per-example gradients (a linear
  layer on one position: ``Σ_c (g_c²)ᵀ (a²)``, one matrix product per column);
* ``"kron"``: KFAC ("expand" over patches, as curvlinops and laplace-torch), with
  ``A = Σ_{n,t} ã ãᵀ / (N T)`` of the input with a 1 appended for the bias
  (``ã = [a; 1]``) and ``G = Σ_{n,t,c} g gᵀ``; the weight block is ``G ⊗ A[:-1, :-1]``,
  the bias block ``A[-1, -1] G = G``; the weight–bias cross block is dropped (as in
  laplace-torch, whose Kronecker factors keep weight and bias apart).

Recurrent (LSTM, LSTM and GRU cells), attention and embedding layers (torch's or
Bayesian; :mod:`._layers`) go through per-example Jacobians (:mod:`._per_example`):
their exact GGN diagonal ``Σ_n Σ_c (S_nᵀ J_n)_c²``, for ``"diag"`` and ``"kron"`` alike
(a Kronecker fit keeps their diagonal). ``"full"``: the whole ``P × P`` GGN over every
fitted parameter jointly, ``Σ_n R_nᵀ R_n`` with ``R_n = S_nᵀ J_n``, all layers through
per-example Jacobians (small models: ``O(P²)`` memory).

Sequence outputs ``(B, T, C)`` (a language model's ``(B, T, V)`` logits; any
``(B, ..., C)``) have one likelihood term per token, ``Λ_{nt}`` per token, and the GGN
sums over them, ``H = Σ_n Σ_t J_ntᵀ Λ_nt J_nt`` (as laplace-torch and Laplace-LoRA on
token-level classification; class-index targets ``-100`` are ignored, as in
``F.cross_entropy``). ``"diag"``: exact, one backward pass per token and column (``T·C``
per batch). ``"kron"``: KFAC "expand" (Eschenhagen et al. 2023; curvlinops): ``C``
backward passes, column ``c`` from every token at once (cotangent ``S_nt[:, c]`` at each
``t``), ``G = Σ_{n,t',c} g_{nt'c} g_{nt'c}ᵀ``, ``A`` over the ``N·T'`` input rows; it
equals the per-token sum when token ``t``'s output depends on the layer only through its
own position ``t`` (no mixing of positions after the layer), and adds the cross-token
products of the columns otherwise. The per-example Jacobians (generic layers,
``"full"``) take the ``T·C`` outputs of an example as one vector with a block-diagonal
``Λ_n`` (``O(B (T C)²)`` memory).

Other modules (BatchNorm, LayerNorm, ``nn.GRU``, activations) are traversed as point
estimates, the model in eval mode. Cost: ``C`` backward passes per batch for the hooked
layers, one output column at a time, each reduced at once (``O(B·T·O)`` gradient memory
per layer; the forward runs with the parameters' ``requires_grad`` off, the probes
carrying the graph), ``B·C`` vector–Jacobian products (vectorised) for the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sampling import posterior_mean
from ._checks import HESSIANS, LIKELIHOODS, check_choice, check_mc_samples, check_positive_float
from ._layers import point_value, random_params, targets
from ._per_example import JacobianAccumulator

__all__ = [
    "LayerCurvature",
    "Curvature",
    "compute_curvature",
    "supported_layers",
    "point_value",
    "hessian_sqrt",
    "output_sqrt",
    "block_diagonal",
    "mc_sqrt",
]

_FN = "laplace.fit"
#: examples per chunk of a layer's inputs (a convolution's patches) for the factor ``A``
_A_CHUNK = 16


@dataclass
class LayerCurvature:
    """The curvature of one layer.

    Attributes:
        name: the module's qualified name in the model.
        module: the module.
        params: the parameters in the posterior, ``("weight",)`` or ``("weight", "bias")``.
        diag: ``"diag"`` only: parameter name -> GGN diagonal (the parameter's shape).
        A: ``"kron"`` only: ``(I, I)`` input factor, ``I = in_features`` (times the kernel
            size for a convolution), plus 1 when the layer has a bias.
        G: ``"kron"`` only: ``(O, O)`` output-gradient factor.
        eigen: ``"kron"`` only: cached eigendecompositions ``(λ, Q)`` of ``G`` and of
            each parameter's ``A`` block (filled on first use).
        structure: ``"diag"`` (``diag`` holds the curvature), ``"kron"`` (``A``, ``G``)
            or ``"full"`` (a block of :attr:`Curvature.full`). A Kronecker fit has
            ``"diag"`` layers too: the recurrent, attention and embedding ones.
    """

    name: str
    module: nn.Module
    params: tuple[str, ...]
    diag: dict[str, Tensor] = field(default_factory=dict)
    A: Tensor | None = None
    G: Tensor | None = None
    eigen: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    structure: str = "diag"


@dataclass
class Curvature:
    """What a Laplace fit needs to know about the data: curvature, loss, sizes.

    Attributes:
        layers: one :class:`LayerCurvature` per fitted layer, in model order.
        likelihood, hessian: as passed to :func:`compute_curvature`.
        loss: the summed negative log-likelihood at the means, without constants
            (cross-entropy; ``Σ (f - y)² / 2`` for regression).
        n_data: ``N``, the number of examples.
        n_outputs: the outputs per example: ``C``, or ``T·C`` for ``(B, T, C)`` outputs.
        sigma_noise: ``σ`` of the Gaussian likelihood (1 for classification).
        prior_precision: the ``τ`` last written into the layers.
        full: ``"full"`` only: the ``(P, P)`` GGN over the parameter tensors of
            :meth:`groups`, flattened and concatenated in that order.
        joint: ``"full"`` only: the noise hook shared by the layers (set when the
            posterior is written).
    """

    layers: list[LayerCurvature]
    likelihood: str
    hessian: str
    loss: Tensor
    n_data: int
    n_outputs: int
    sigma_noise: float = 1.0
    prior_precision: float | Tensor = 1.0
    full: Tensor | None = None
    joint: Any = None

    def groups(self) -> list[tuple[LayerCurvature, str]]:
        """``(layer, parameter name)`` of every parameter tensor in the posterior, in
        order: the groups of a per-layer prior precision."""
        return [(lc, p) for lc in self.layers for p in lc.params]


def supported_layers(model: nn.Module, subset: str = "all") -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers whose curvature :func:`compute_curvature` takes:
    every linear and 2-d convolution, recurrent (LSTM, LSTM and GRU cells), attention
    and embedding layer (torch's or Bayesian), or only the last linear layer for
    ``subset="last_layer"``, or the ``lora_A`` and ``lora_B`` factors of every LoRA
    adapter for ``subset="lora"``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> [n for n, _ in supported_layers(net, "last_layer")]
        ['2']
    """
    return [(n, m) for n, m, _ in targets(model, subset)]


def _patches(module: Any, a: Tensor) -> Tensor:
    """``(B, C_in·kh·kw, T)`` input patches of a 2-d convolution."""
    if module.groups != 1 or module.padding_mode != "zeros":
        raise ValueError(
            f"{_FN} supports 2-d convolutions with groups=1 and padding_mode='zeros', got "
            f"groups={module.groups}, padding_mode={module.padding_mode!r} "
            f"({type(module).__name__})"
        )
    padding = module.padding
    if padding == "same":  # torch's split (stride 1): the odd extra pixel goes right/bottom
        pads: list[int] = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        a, padding = F.pad(a, pads), 0
    elif isinstance(padding, str):  # "valid"
        padding = 0
    return F.unfold(a, module.kernel_size, module.dilation, padding, module.stride)


def hessian_sqrt(f: Tensor, likelihood: str, sigma: float) -> Tensor:
    """``S`` with ``Λ = S Sᵀ`` per output vector: ``f`` ``(..., C)`` -> ``(..., C, C)``;
    column ``c`` is ``S[..., :, c]``.

    Example:
        >>> s = hessian_sqrt(torch.zeros(2, 3), "classification", 1.0)  # p = 1/3 each
        >>> torch.allclose(s @ s.mT, torch.eye(3) / 3 - 1 / 9)
        True
    """
    c = f.shape[-1]
    eye = torch.eye(c, dtype=f.dtype, device=f.device)
    if likelihood == "regression":
        return (eye / sigma).expand(*f.shape, c)
    p = torch.softmax(f.detach(), dim=-1)  # (..., C)
    return (eye - p.unsqueeze(-1)) * p.sqrt().unsqueeze(-2)  # sqrt(p_c)(e_c - p)


def _class_indices(f: Tensor, y: Tensor) -> bool:
    """Whether ``y`` holds class indices for ``f`` (shape ``f.shape[:-1]``, integers)
    rather than class probabilities (``f``'s shape, floating); else a ``ValueError``."""
    if y.shape == f.shape[:-1] and not y.is_floating_point():
        return True
    if y.shape == f.shape and y.is_floating_point():
        return False
    raise ValueError(
        f"{_FN} expected classification targets of shape {tuple(f.shape[:-1])} (class "
        f"indices) or {tuple(f.shape)} (class probabilities) for outputs of shape "
        f"{tuple(f.shape)}, got {tuple(y.shape)} ({y.dtype})"
    )


def _pair(batch: Any) -> tuple[Any, Tensor]:
    """``(x, y)`` of one batch, or a ``TypeError`` saying what came instead."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    if isinstance(batch, Tensor):
        got = f"a Tensor of shape {tuple(batch.shape)} (one (x, y) pair? pass [(x, y)])"
    elif isinstance(batch, (tuple, list)):
        got = f"a {type(batch).__name__} of {len(batch)} items"
    else:
        got = f"a {type(batch).__name__}"
    raise TypeError(f"{_FN} expected `loader` to yield (x, y) pairs with a Tensor y, got {got}")


def _loss(f: Tensor, y: Tensor, likelihood: str) -> Tensor:
    if likelihood == "classification":
        c = f.shape[-1]
        if not _class_indices(f, y):
            return F.cross_entropy(f.reshape(-1, c), y.reshape(-1, c), reduction="sum")
        target = y.reshape(-1).long()  # any integer dtype (cross_entropy takes int64)
        if bool(((target != -100) & ((target < 0) | (target >= c))).any()):  # one sync
            kept = target[target != -100]
            raise ValueError(
                f"{_FN} expected class indices in [0, {c - 1}] (or -100, ignored) for "
                f"outputs of shape {tuple(f.shape)}, got values in "
                f"[{int(kept.min())}, {int(kept.max())}]"
            )
        return F.cross_entropy(f.reshape(-1, c), target, reduction="sum")
    if y.shape != f.shape:
        raise ValueError(
            f"{_FN} expected regression targets of the output's shape {tuple(f.shape)}, "
            f"got {tuple(y.shape)}"
        )
    return 0.5 * (f - y).square().sum()


def output_sqrt(f: Tensor, y: Tensor, likelihood: str, sigma: float) -> Tensor:
    """:func:`hessian_sqrt` of ``f`` ``(B, ..., C)``, zero at the outputs whose class
    index is ``-100`` (ignored, as by ``F.cross_entropy``): ``(B, ..., C, C)``.

    Example:
        >>> f, y = torch.zeros(2, 3, 4), torch.tensor([[0, 1, -100], [2, 3, 0]])
        >>> s = output_sqrt(f, y, "classification", 1.0)
        >>> s.shape, bool(s[0, 2].abs().sum() == 0)
        (torch.Size([2, 3, 4, 4]), True)
    """
    s = hessian_sqrt(f, likelihood, sigma)
    if likelihood == "classification" and _class_indices(f, y):
        s = s * (y != -100).to(s.dtype)[..., None, None]
    return s


def mc_sqrt(f: Tensor, y: Tensor, likelihood: str, sigma: float, samples: int) -> Tensor:
    """``K = samples`` Monte Carlo columns ``(B, ..., C, K)`` with ``E[S Sᵀ] = Λ`` per
    output: ``(e_ỹ - p) / √K`` with ``ỹ ~ Cat(p)`` (classification; zero at class index
    ``-100``), ``ε / (σ √K)`` with ``ε ~ N(0, I)`` (regression). Drawn with torch's
    global generator.

    Example:
        >>> s = mc_sqrt(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long),
        ...             "classification", 1.0, 5)
        >>> s.shape, torch.allclose(s.sum(-2), torch.zeros(2, 3, 5), atol=1e-6)
        (torch.Size([2, 3, 4, 5]), True)
    """
    c = f.shape[-1]
    if likelihood == "regression":
        noise = torch.randn(*f.shape, samples, dtype=f.dtype, device=f.device)
        return noise / (sigma * math.sqrt(samples))
    p = torch.softmax(f.detach(), dim=-1).reshape(-1, c)
    draws = torch.multinomial(p, samples, replacement=True)  # (rows, K)
    s = F.one_hot(draws, c).to(p.dtype) - p[:, None, :]  # (rows, K, C)
    s = s.transpose(1, 2).reshape(*f.shape, samples) / math.sqrt(samples)
    if _class_indices(f, y):
        s = s * (y != -100).to(s.dtype)[..., None, None]
    return s


def block_diagonal(s: Tensor) -> Tensor:
    """``(B, T, C, C)`` per-token square roots -> ``(B, T·C, T·C)``, the square root of
    the block-diagonal ``Λ_n`` of an example's outputs flattened token by token.

    Example:
        >>> s = torch.ones(1, 2, 3, 3)
        >>> block_diagonal(s)[0, :3, 3:].abs().sum().item(), block_diagonal(s).shape
        (0.0, torch.Size([1, 6, 6]))
    """
    b, t, c = s.shape[:3]
    eye = torch.eye(t, dtype=s.dtype, device=s.device)
    return torch.einsum("tu,btcd->btcud", eye, s).reshape(b, t * c, t * c)


def _cotangents(s: Tensor, per_token: bool) -> Iterator[Tensor]:
    """The cotangents of the backward passes, ``(B, ..., C)`` each: column ``c`` of every
    output's ``S`` at once (``C`` of them), or one token's (``T·C``, ``per_token``)."""
    c = s.shape[-1]
    if not per_token:
        for k in range(c):
            yield s[..., k]
        return
    flat = s.reshape(s.shape[0], -1, c, c)  # (B, T, C, C)
    for t in range(flat.shape[1]):
        for k in range(c):
            cot = torch.zeros_like(flat[..., 0])  # (B, T, C)
            cot[:, t] = flat[:, t, :, k]
            yield cot.reshape(s.shape[:-1])


class _Accumulator:
    """Sums one layer's curvature over batches."""

    def __init__(self, name: str, module: nn.Module, kind: str, hessian: str) -> None:
        self.lc = LayerCurvature(name, module, random_params(module, kind), structure=hessian)
        self.kind = kind
        self.hessian = hessian
        self.positions = 0  # N·T, the rows that went into A
        weight = point_value(module, "weight") if kind != "generic" else None
        self.weight_shape = None if weight is None else weight.shape  # hooked layers' only
        self.x: Tensor | None = None  # "diag": the current batch's (B, T, I) inputs

    def inputs(self, a: Tensor) -> Tensor:
        """``(B, T, I)`` inputs (patches), T positions per example."""
        if self.kind == "conv2d":
            return _patches(self.lc.module, a).transpose(1, 2)
        return a.reshape(a.shape[0], -1, a.shape[-1])

    def begin(self, a: Tensor) -> None:
        """A batch's layer input ``a``. ``"diag"``: kept as ``(B, T, I)`` rows for the
        columns to come; ``"kron"``: ``A`` grows by ``[[XᵀX, Xᵀ1], [1ᵀX, BT]]`` (the
        appended 1 of the bias from column sums, no copy), ``_A_CHUNK`` examples at a
        time for a convolution (its patches are ``T·I`` numbers per example), the whole
        batch for a linear layer."""
        if self.hessian != "kron":
            self.x = self.inputs(a)  # (B, T, I)
            return
        has_bias = point_value(self.lc.module, "bias") is not None
        # a convolution's patches are a copy: a few examples at a time; a linear layer's
        # inputs are a view: one product for the batch (small chunks of a wide layer's
        # (I, I) update would be memory-bound)
        chunks = a.split(_A_CHUNK) if self.kind == "conv2d" else (a,)
        for chunk in chunks:
            x = self.inputs(chunk)
            xs = x.reshape(-1, x.shape[-1])  # (b·T, I)
            aa = xs.T @ xs
            if has_bias:
                col = xs.sum(0)  # (I,)
                corner = col.new_full((1,), float(xs.shape[0]))
                aa = torch.cat([torch.cat([aa, col[:, None]], 1), torch.cat([col, corner])[None]])
            self.lc.A = aa if self.lc.A is None else self.lc.A + aa
            self.positions += xs.shape[0]

    def add_column(self, gc: Tensor) -> None:
        """One output column's pre-activation gradient, ``(B, O, ...)`` (conv) or
        ``(B, ..., O)`` (linear): reduced at once (``"diag"``: ``Σ_n (Σ_t g_t a_tᵀ)²``,
        for one position ``t`` the product ``(g²)ᵀ (a²)``; ``"kron"``: ``G += gᵀ g``)."""
        g = self._rows(gc)  # (B, T, O)
        if self.hessian == "kron":
            gg = g.reshape(-1, g.shape[-1])
            self.lc.G = gg.T @ gg if self.lc.G is None else self.lc.G + gg.T @ gg
            return
        x = self.x  # (B, T, I)
        assert x is not None and self.weight_shape is not None  # begin() ran; a weight
        if g.shape[1] == 1:  # per-example gradient g aᵀ, squared elementwise g² (a²)ᵀ
            w = g[:, 0].square().T @ x[:, 0].square()  # (O, I)
        else:  # per-example gradients Σ_t g_t a_tᵀ: (B, O, I)
            w = torch.bmm(g.transpose(1, 2), x).square().sum(0)
        self._acc(self.lc.diag, "weight", w.reshape(self.weight_shape))
        if "bias" in self.lc.params:
            self._acc(self.lc.diag, "bias", g.sum(1).square().sum(0))

    def end(self) -> None:
        """Drop the batch's inputs."""
        self.x = None

    def _rows(self, gc: Tensor) -> Tensor:
        if self.kind == "conv2d":
            return gc.flatten(2).transpose(1, 2)  # (B, O, H, W) -> (B, T, O)
        return gc.reshape(gc.shape[0], -1, gc.shape[-1])  # (B, T, O)

    @staticmethod
    def _acc(d: dict[str, Tensor], k: str, v: Tensor) -> None:
        d[k] = d[k] + v if k in d else v

    def finish(self) -> LayerCurvature:
        if self.lc.A is not None:
            self.lc.A = self.lc.A / self.positions
        return self.lc


class ProbeRecord:
    """What :func:`recording_probes` saw: per hooked module (by ``id``), its input
    (detached) and the zero probe added to its output (``∂F/∂probe = ∂F/∂z``).

    Attributes:
        seen: ``id(module) -> (input, probe)`` of the last forward.
        active: the hooks record (and add probes) only while ``True``.
    """

    def __init__(self) -> None:
        self.seen: dict[int, tuple[Tensor, Tensor]] = {}
        self.active = True

    def record(self, module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Any:
        if not self.active:
            return None
        probe = torch.zeros_like(out, requires_grad=True)
        self.seen[id(module)] = (inputs[0].detach(), probe)
        return out + probe

    def probes(self, modules: Sequence[nn.Module]) -> list[Tensor]:
        """The probes of ``modules``, in order."""
        return [self.seen[id(m)][1] for m in modules]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Context: ``model`` in eval mode; each submodule's own mode restored at exit (a
    model in training mode around an eval-mode part, such as a wrapped pretrained
    model, keeps that part in eval mode).

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5).eval())
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net[0].training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def recording_probes(model: nn.Module, modules: Sequence[nn.Module]) -> Iterator[ProbeRecord]:
    """Context: ``model`` in eval mode (batch norm on its running statistics) with a
    forward hook on each of ``modules`` that records its input and adds a zero probe to
    its output; hooks removed and the modes restored at exit (:func:`eval_mode`)."""
    rec = ProbeRecord()
    handles = [m.register_forward_hook(rec.record) for m in modules]
    try:
        with eval_mode(model):
            yield rec
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _frozen(model: nn.Module, on: bool) -> Iterator[None]:
    """Context: ``model``'s parameters without ``requires_grad`` (when ``on``), each
    restored at exit; the forward then keeps no graph for the weights' gradients."""
    params = [p for p in model.parameters() if p.requires_grad] if on else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def compute_curvature(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    likelihood: str = "classification",
    hessian: str = "diag",
    subset: str = "all",
    sigma_noise: float = 1.0,
    mc_samples: int = 0,
) -> Curvature:
    """The GGN curvature of ``model`` on ``loader`` at its (posterior-mean) weights.

    Args:
        model: a network mapping a batch ``x`` to ``(B, C)`` outputs (logits for
            classification) or ``(B, ..., C)`` ones, one likelihood term per position
            (a language model's ``(B, T, V)``); Bayesian layers are run on their
            posterior means and the model in eval mode (BatchNorm on its running
            statistics), as laplace-torch.
        loader: an iterable of ``(x, y)`` batches; ``y`` class indices ``(B, ...)``
            (``-100``: ignored), class probabilities or regression targets of the
            output's shape.
        likelihood: ``"classification"`` or ``"regression"``.
        hessian: ``"diag"`` (exact GGN diagonal), ``"kron"`` (KFAC factors; the exact
            diagonal for recurrent, attention and embedding layers) or ``"full"`` (the
            ``(P, P)`` GGN of all fitted parameters jointly, :attr:`Curvature.full`).
        subset: ``"all"`` supported layers (:func:`supported_layers`), only the
            ``"last_layer"`` linear one, or the factors of the LoRA adapters
            (``"lora"``).
        sigma_noise: ``σ`` of the Gaussian likelihood (regression).
        mc_samples: ``0``: the exact GGN (``C`` backward passes per batch, ``T·C`` for
            ``"diag"`` on sequences). ``K > 0``: the Monte Carlo GGN (the Fisher with
            sampled labels, :func:`mc_sqrt`): ``K`` backward passes per batch, each
            from every output at once; unbiased for the per-token sums (the
            cross-token products vanish in expectation), for the diagonal, the KFAC
            ``G`` and the full GGN alike. For a language model (``C`` = the
            vocabulary) this is the affordable choice.

    Returns:
        a :class:`Curvature`.

    Raises:
        ValueError: an unknown choice, ``sigma_noise <= 0``, a model with no supported
            layer (no adapter for ``"lora"``), an empty loader, an output with fewer
            than 2 dimensions or targets of the wrong shape.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> data = [(torch.randn(5, 3), torch.randint(0, 2, (5,)))]
        >>> curv = compute_curvature(net, data, hessian="kron")
        >>> [tuple(lc.A.shape) for lc in curv.layers], curv.n_data
        ([(4, 4), (5, 5)], 5)
    """
    check_choice(_FN, "likelihood", likelihood, LIKELIHOODS)
    check_choice(_FN, "hessian", hessian, HESSIANS)
    sigma = check_positive_float(_FN, "sigma_noise", sigma_noise)
    check_mc_samples(_FN, mc_samples)
    found = targets(model, subset)
    if not found:
        raise ValueError(
            f"{_FN} expected a model with a Linear, Conv2d, recurrent, attention or "
            f"Embedding layer, got none in {type(model).__name__}"
        )
    hooked = [(n, m) for n, m, kind in found if kind != "generic" and hessian != "full"]
    accs = {name: _Accumulator(name, m, kind, hessian) for name, m, kind in found}
    for name, _, kind in found:
        if kind == "generic" or hessian == "full":
            accs[name].lc.structure = "full" if hessian == "full" else "diag"
    jacobians = JacobianAccumulator(
        model,
        [accs[n].lc for n, _, kind in found if kind == "generic" or hessian == "full"],
        full=hessian == "full",
        fn=_FN,
    )
    modules = [m for _, m in hooked]
    loss = torch.zeros(())
    n_data, n_out = 0, 0
    with recording_probes(model, modules) as rec, posterior_mean(model), torch.enable_grad():
        for batch in loader:
            x, y = _pair(batch)
            rec.seen.clear()
            rec.active = True
            with torch.set_grad_enabled(bool(hooked)), _frozen(model, bool(hooked)):
                f = model(x)  # the probes alone carry the graph
            if f.dim() < 2:
                raise ValueError(
                    f"{_FN} expected model outputs of shape (B, C) or (B, ..., C), got "
                    f"{tuple(f.shape)}"
                )
            loss = loss.to(f) + _loss(f.detach(), y, likelihood)
            tokens = f[0].numel() // f.shape[-1]
            if mc_samples:  # (B, ..., C, K): each column from every output at once
                s = mc_sqrt(f, y, likelihood, sigma, mc_samples)
                per_token = False
            else:  # (B, ..., C, C); "diag" on sequences: one token's column at a time
                s = output_sqrt(f, y, likelihood, sigma)
                per_token = tokens > 1 and hessian == "diag"
            if hooked:
                probes = rec.probes(modules)
                for name, m in hooked:
                    accs[name].begin(rec.seen[id(m)][0])
                # one column at a time: O(B·T·O) memory
                n_cols = s.shape[-1] * (tokens if per_token else 1)
                for c, cot in enumerate(_cotangents(s, per_token)):
                    col = torch.autograd.grad(f, probes, cot, retain_graph=c < n_cols - 1)
                    for i, (name, _) in enumerate(hooked):
                        accs[name].add_column(col[i])
                    del col
                for name, _ in hooked:
                    accs[name].end()
            rec.active = False  # hooks off while the per-example Jacobians re-run the model
            if jacobians.parts:
                s_n = s.reshape(f.shape[0], tokens, *s.shape[-2:])  # (B, T, C, K)
                if mc_samples or tokens == 1:  # a column spans every token: (B, T·C, K)
                    s_n = s_n.reshape(f.shape[0], -1, s.shape[-1])
                else:
                    s_n = block_diagonal(s_n)
                jacobians.add(x, s_n, f.detach().flatten(1))
            n_data += f.shape[0]
            n_out = f[0].numel()
    if n_data == 0:
        raise ValueError(f"{_FN} expected a `loader` with at least one batch, got an empty one")
    return Curvature(
        layers=[accs[n].finish() for n, _, _ in found],
        likelihood=likelihood,
        hessian=hessian,
        loss=loss,
        n_data=n_data,
        n_outputs=n_out,
        sigma_noise=sigma,
        full=jacobians.matrix,
    )
