r"""Deep ensembles (Lakshminarayanan et al., 2017): ``n`` independently initialised copies of
one network, trained side by side, whose predictive is the equal-weight mixture

.. math:: p(y \mid x) = \frac1n \sum_{i=1}^{n} p(y \mid x, \theta_i).

:class:`Ensemble` stacks the members' parameters and buffers into tensors of shape
``(n, ...)`` (:func:`torch.func.stack_module_state`) and runs every member in one
vectorised call (:func:`torch.vmap` over :func:`torch.func.functional_call`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ._model_parts import normalization_in_eval
from .layers.base import BayesianLayer
from .objectives import losses as collect_losses
from .sampling import vectorized_samples

__all__ = ["Ensemble"]

_SEP = "__"  # a member's parameter "0.weight" is stored as "members.0__weight"


class _LossesOf(nn.Module):
    """``forward()`` returns ``bl.losses(model)``: lets ``functional_call`` evaluate the
    regularizer terms of the template under one member's parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self) -> list[Tensor]:
        return collect_losses(self.model)


class Ensemble(nn.Module):
    r"""A deep ensemble of ``n`` members built by ``make_model``, run in one vectorised call.

    The predictive is the equal-weight mixture
    :math:`p(y \mid x) = \frac1n \sum_i p(y \mid x, \theta_i)`; each member is a point
    estimate :math:`\theta_i` (or, for members with Bayesian layers, its own variational
    posterior :math:`q_i(\theta)`, making the predictive
    :math:`\frac1n \sum_i \int p(y \mid x, \theta) q_i(\theta) d\theta`).

    Member ``i``'s parameter ``name`` is the slice ``i`` of one stacked
    ``nn.Parameter`` ``members.<name with "." replaced by "__">`` of shape
    ``(n, *shape)``; buffers (batch-norm running statistics) are stacked alike, so each
    member keeps its own statistics and ``state_dict`` holds everything.

    **Training.** One optimizer over ``ensemble.parameters()`` trains every member. Use
    the *sum* of the members' losses, :math:`L = \sum_i L_i(\theta_i)`: since
    :math:`L_j` does not depend on :math:`\theta_i` for :math:`j \ne i`,
    :math:`\partial L / \partial \theta_i = \partial L_i / \partial \theta_i`, the gradient
    member ``i`` would get if trained alone, so any element-wise optimizer (SGD, Adam,
    AdamW, with weight decay) takes exactly the n independent steps. (The mean would
    scale every gradient by :math:`1/n`: SGD's step shrinks n-fold, and Adam's changes
    through ``eps``.) Global operations over all parameters (gradient-norm clipping) do
    couple the members. With Bayesian members the ELBO convention becomes
    ``loss = sum_i nll_mean_i + sum(bl.losses(ensemble)) / num_train_examples``:
    :attr:`losses` lists every member's regularizer terms.

    **Vectorised or looped.** ``vectorize=True`` runs ``torch.vmap`` over the members
    (``randomness="different"``: dropout draws independent masks per member). Where vmap
    cannot handle the model (an op without a batching rule, such as ``nn.LSTM``'s
    ``aten::lstm``; data-dependent Python control flow such as ``if x.sum() > 0``) the
    first call falls back to a Python loop of ``n`` ``functional_call``\ s for good,
    restoring any buffers the failed attempt touched; :attr:`vectorized` tells which
    path is in use. On CPU the loop is often the faster one (``benchmarks/ensemble_step.py``,
    one thread, n = 5, batch 256: vmap 1.1-1.5x the loop's time for an MLP and LeNet-5):
    vmap pays where fewer, larger kernels do (GPUs). Members with Bayesian layers always
    loop: each member keeps its own latest weight draw (for Monte Carlo regularizers),
    which a vmapped call cannot leave behind. ``vectorize=False`` loops from the start.

    **Limitation.** The members' modules live outside ``ensemble.modules()`` (only the
    stacked tensors are registered), so the sampling-mode tools
    (``bl.posterior_mean``, ``bl.frozen_sample``, ``bl.set_sampling``) given the ensemble
    do not reach Bayesian layers inside the members: they keep sampling afresh.

    **Predictive.** The class sets ``members_as_samples = True`` and ``ensemble_size = n``,
    so :func:`bayesian_layers.predict` treats the members as function samples:
    ``num_samples = K`` must be a multiple of ``n``; within each vectorised chunk of
    ``k`` samples (a multiple of ``n``) sample ``j`` is member ``j * n // k`` (blocks of
    ``k / n`` samples per member; with the default chunking ``K = n`` gives sample ``i`` =
    member ``i``). Deterministic members give ``K / n`` identical samples each; Bayesian
    members draw ``K / n`` function samples each. During ``predict`` (and only then) the
    ensemble keeps the batch convention: it reads its ``(k B, ...)`` input as ``n``
    blocks, one per member, and returns ``(k B, ...)``.

    Args:
        make_model: called ``n`` times with no arguments; each call returns a freshly
            initialised ``nn.Module`` of the same structure (parameter and buffer names,
            shapes and dtypes). The members must return a Tensor.
        n: the number of members (``>= 1``).
        vectorize: try ``torch.vmap`` first (True) or loop over the members (False).

    Shape:
        - Input: whatever one member takes, ``(B, *)``.
        - Output: ``(n, B, *out)``, member ``i``'s output at ``[i]``.

    Attributes:
        members: the module holding the stacked parameters and buffers ``(n, ...)``.
        ensemble_size: ``n``.
        vectorized: ``True`` once a vmapped call succeeded, ``False`` when looping,
            ``None`` before the first call.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.ensemble import Ensemble
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> ens = Ensemble(lambda: torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(),
        ...                                             torch.nn.Linear(8, 2)), n=4)
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> out = ens(x)  # (n, B, 2)
        >>> loss = sum(torch.nn.functional.cross_entropy(o, y) for o in out)  # sum over members
        >>> loss.backward()
        >>> ens.members.get_parameter("0__weight").shape
        torch.Size([4, 8, 3])
        >>> pred = bl.predict(ens, x, num_samples=8)  # 2 samples per member
        >>> torch.allclose(pred.samples[::2], ens(x).detach())
        True
        >>> torch.allclose(ens.member(1)(x), out[1])
        True
    """

    members_as_samples: ClassVar[bool] = True

    def __init__(
        self, make_model: Callable[[], nn.Module], n: int, *, vectorize: bool = True
    ) -> None:
        super().__init__()
        if not callable(make_model) or isinstance(make_model, nn.Module):
            raise TypeError(
                f"Ensemble expected `make_model` a callable returning a fresh nn.Module "
                f"(e.g. a class or a lambda), got {type(make_model).__name__}"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Ensemble expected `n` an int >= 1, got {n!r}")
        if not isinstance(vectorize, bool):
            raise TypeError(f"Ensemble expected `vectorize` a bool, got {vectorize!r}")
        models: list[nn.Module] = []
        for i in range(n):
            model = make_model()
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"Ensemble expected `make_model` to return an nn.Module, got "
                    f"{type(model).__name__} (call {i})"
                )
            shared = [m for m in models if _shares_tensors(model, m)]
            if shared:
                raise ValueError(
                    f"Ensemble expected `make_model` to build a fresh module at every call; "
                    f"call {i} returned the module (or parameters) of call "
                    f"{models.index(shared[0])}, so the members would be identical copies"
                )
            if i and _structure(model) != _structure(models[0]):
                raise ValueError(
                    f"Ensemble expected `make_model` to return members of one structure; "
                    f"call 0 gave {_structure(models[0])}, call {i} gave {_structure(model)}"
                )
            models.append(model)
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        persistent = set(models[0].state_dict(keep_vars=True))
        keys = [name.replace(".", _SEP) for name in [*params, *buffers]]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"Ensemble cannot store the members' tensors under distinct keys: names "
                f"{[*params, *buffers]} collide once '.' is replaced by {_SEP!r}"
            )
        self.members = nn.Module()
        for name, value in params.items():
            self.members.register_parameter(
                name.replace(".", _SEP), nn.Parameter(value.detach(), value.requires_grad)
            )
        for name, value in buffers.items():
            self.members.register_buffer(
                name.replace(".", _SEP), value, persistent=name in persistent
            )
        self.ensemble_size = n
        self.vectorize = vectorize
        self.bayesian = any(isinstance(m, BayesianLayer) for m in models[0].modules())
        self.has_losses = any(
            isinstance(getattr(type(m), "losses", None), property) for m in models[0].modules()
        )
        self.vectorized: bool | None = False if (self.bayesian or not vectorize) else None
        # the members' modules, outside the module tree: ``functional_call`` runs them on
        # the stacked tensors (one template when vectorised; one per member when looped,
        # so each keeps its own per-call state such as its latest weight draw)
        self._templates: list[nn.Module] = models if self.vectorized is False else models[:1]
        #: set by ``bl.predict`` to the function samples of the current call (see above)
        self.folded_samples: int | None = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.ensemble_size

    def extra_repr(self) -> str:
        return f"n={self.ensemble_size}, vectorize={self.vectorize}"

    def _param(self, name: str) -> Tensor:
        return self.members.get_parameter(name.replace(".", _SEP))

    def _buffer(self, name: str) -> Tensor:
        return self.members.get_buffer(name.replace(".", _SEP))

    def train(self, mode: bool = True) -> Ensemble:
        super().train(mode)
        for t in self._templates:
            t.train(mode)
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Ensemble:
        super()._apply(fn, recurse)
        for t in self._templates:
            t._apply(fn, recurse)  # keep the templates' other state on the same device/dtype
        return self

    def _template(self, i: int) -> nn.Module:
        while len(self._templates) <= i:
            self._templates.append(copy.deepcopy(self._templates[0]))
        return self._templates[i]

    def _tensors(self, i: int | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        pick = (lambda t: t) if i is None else (lambda t: t[i])
        params = {name: pick(self._param(name)) for name in self._param_names}
        buffers = {name: pick(self._buffer(name)) for name in self._buffer_names}
        return params, buffers

    def member(self, i: int) -> nn.Module:
        """A plain copy of member ``i``: the module ``make_model`` built, holding member
        ``i``'s current parameters and buffers (detached copies), in this ensemble's mode.

        Raises:
            IndexError: ``i`` outside ``[-n, n)``.
        """
        n = self.ensemble_size
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise IndexError(f"Ensemble.member expected `i` an int in [-{n}, {n}), got {i!r}")
        model = copy.deepcopy(self._templates[0])
        params, buffers = self._tensors(i % n)
        with torch.no_grad():
            for name, value in params.items():
                model.get_parameter(name).copy_(value)
            for name, value in buffers.items():
                model.get_buffer(name).copy_(value)
        return model.train(self.training)

    # --------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Every member on ``x``: ``(B, *)`` -> ``(n, B, *out)`` (see the class docstring;
        inside ``bl.predict``: ``(k B, *)`` -> ``(k B, *out)``, one block per member)."""
        k = self.folded_samples
        if k is None:
            return self._run(x, split=False)
        n = self.ensemble_size
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] % n:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"Ensemble expected, inside predict, an input whose first dimension is a "
                f"multiple of n={n} (one block per member), got {got}"
            )
        blocks = x.reshape(n, x.shape[0] // n, *x.shape[1:])  # (n, k B / n, *)
        with ExitStack() as stack:
            for t in self._templates:
                stack.enter_context(normalization_in_eval(t))
            out = self._run(blocks, split=True, samples=k // n)  # (n, k B / n, *out)
        return out.reshape(-1, *out.shape[2:])  # (k B, *out)

    def _run(self, x: Tensor, *, split: bool, samples: int = 1) -> Tensor:
        if self.vectorized is not False:
            snapshot = None
            if self.vectorized is None:  # first try: undo a failed attempt's buffer updates
                snapshot = {k: b.clone() for k, b in self.members.named_buffers()}
            try:
                out = self._vmapped(x, split)
            except RuntimeError:
                if snapshot is None:
                    raise
                with torch.no_grad():
                    for k, b in self.members.named_buffers():
                        b.copy_(snapshot[k])
                out = self._looped(x, split, samples)  # a user error raises here
                self.vectorized = False
                return out
            self.vectorized = True
            return out
        return self._looped(x, split, samples)

    def _vmapped(self, x: Tensor, split: bool) -> Tensor:
        template = self._templates[0]

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], xi: Tensor) -> Any:
            return functional_call(template, (params, buffers), (xi,))

        params, buffers = self._tensors()
        out = vmap(one, in_dims=(0, 0, 0 if split else None), randomness="different")(
            params, buffers, x
        )
        return self._check_output(out)

    def _looped(self, x: Tensor, split: bool, samples: int) -> Tensor:
        outs = []
        for i in range(self.ensemble_size):
            template = self._template(i)
            with ExitStack() as stack:
                if samples > 1 and self.bayesian:
                    stack.enter_context(vectorized_samples(template, samples))
                out = functional_call(template, self._tensors(i), (x[i] if split else x,))
            outs.append(self._check_output(out))
        return torch.stack(outs)  # (n, B, *out)

    def _check_output(self, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(
                f"Ensemble expected its members to return a Tensor, got {type(out).__name__}"
            )
        return out

    # ---------------------------------------------------------------- losses
    @property
    def losses(self) -> list[Tensor]:
        """Every member's regularizer terms (``bl.losses`` of member ``i`` under its own
        parameters, members in order); empty for members without any. A Monte Carlo
        term uses that member's latest draw."""
        if not self.has_losses:
            return []
        out: list[Tensor] = []
        for i in range(self.ensemble_size):
            wrapper = _LossesOf(self._template(i))
            params, buffers = self._tensors(i)
            prefixed = {f"model.{k}": v for k, v in (params | buffers).items()}
            out.extend(functional_call(wrapper, prefixed, ()))
        return out


def _shares_tensors(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` are the same module, or hold the very same parameters, all
    of them (the members would then be identical copies). Sharing a part (one pretrained
    backbone with a fresh head per member) is a member recipe of its own: each member
    gets its own copy of the backbone's values."""
    ids_a, ids_b = ({id(p) for p in m.parameters()} for m in (a, b))
    return a is b or (bool(ids_a) and ids_a == ids_b)


def _structure(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every parameter and buffer: what members must share."""
    return [
        (name, tuple(t.shape), t.dtype)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    ]
