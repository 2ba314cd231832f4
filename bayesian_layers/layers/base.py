"""Shared machinery of layers with uncertain parameters: parameters as random
variables, sampling modes, vectorised function samples and ``losses``."""

from __future__ import annotations

import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]
from torch.utils.hooks import RemovableHandle

from .. import tracing as _tracing
from ..initializers import TrainableInitializer, TrainableNormal, get_initializer
from ..random_variables.variable import RandomVariable
from ..regularizers import Regularizer, get_regularizer
from ._util import rademacher

__all__ = [
    "BayesianLayer",
    "NoiseHook",
    "ParameterSpec",
    "SAMPLING_MODES",
    "as_tensor",
    "check_input",
    "parameter_dtype",
]

#: ``hook(layer, name, kind, shape, make) -> Tensor | None``; see
#: :meth:`BayesianLayer.register_noise_hook`.
NoiseHook = Callable[["BayesianLayer", str, str, torch.Size, Callable[[torch.Size], Tensor]], Any]


def _normal_maker(like: Tensor) -> Callable[[torch.Size], Tensor]:
    def make(shape: torch.Size) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    return make


def _sign_maker(like: Tensor) -> Callable[[torch.Size], Tensor]:
    def make(shape: torch.Size) -> Tensor:
        return rademacher(shape, like)

    return make


@dataclass(frozen=True)
class ParameterSpec:
    """What a layer declares about one of its parameters (see
    :meth:`BayesianLayer.named_random_parameters`).

    Attributes:
        name: the parameter's name on the layer (``"weight"``, ``"bias"``).
        shape: the parameter's shape (no sample dimensions).
        initializer: the posterior family (``.is_normal``, ``.is_deterministic``,
            ``.loc_scale(layer, name)``, ...).
        regularizer: the penalty of the posterior (a KL), ``None`` when there is none.
        is_random: ``False`` for point estimates (deterministic families).

    Example:
        >>> import bayesian_layers as bl
        >>> spec = bl.layers.LinearFlipout(3, 2).parameter_spec("weight")
        >>> spec.name, spec.shape, spec.is_random
        ('weight', torch.Size([2, 3]), True)
    """

    name: str
    shape: torch.Size
    initializer: TrainableInitializer
    regularizer: Regularizer | None
    is_random: bool


#: ``"sample"``: a fresh function sample at every call (default, train and eval);
#: ``"mean"``: posterior means, no sampling; ``"frozen"``: one function sample kept
#: across calls until :meth:`BayesianLayer.resample`.
SAMPLING_MODES = ("sample", "mean", "frozen")


def as_tensor(x: Any, owner: str) -> Tensor:
    """Unwrap a random variable to its value; reject non-tensors with a ``TypeError``."""
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected a Tensor input, got {type(x).__name__}")
    return x


def check_input(
    x: Any, owner: str, argument: str = "input", *, dtype: torch.dtype | None = None
) -> Tensor:
    """Unwrap a random variable and check that ``x`` is a tensor of the expected dtype.

    Args:
        x: the value passed to a layer (a Tensor or a RandomVariable).
        owner: the layer's name for messages, e.g. ``type(self).__name__``.
        argument: the argument's name for messages (``"input"``, ``"hx"``, ``"query"``).
        dtype: the floating dtype the layer computes in (its parameters' dtype);
            ``None`` checks only that ``x`` is a tensor. Under ``torch.autocast``
            for ``x``'s device the autocast dtype is accepted as well, so a
            lower-precision output of one layer may feed the next.

    Returns:
        ``x`` as a plain tensor.

    Raises:
        TypeError: ``x`` is not a tensor, or its dtype is neither ``dtype`` nor
            (under autocast) the autocast dtype. The message names the layer, the
            argument, the expected and the received dtype.

    Example:
        >>> check_input(torch.zeros(2, 3), "Linear", dtype=torch.float32).shape
        torch.Size([2, 3])
        >>> check_input(torch.zeros(2, 3, dtype=torch.float64), "Linear", dtype=torch.float32)
        Traceback (most recent call last):
        ...
        TypeError: Linear expected `input` of dtype torch.float32, got torch.float64
    """
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected `{argument}` to be a Tensor, got {type(x).__name__}")
    if dtype is None or x.dtype == dtype:
        return x
    device = x.device.type
    if torch.is_autocast_enabled(device):
        fast = torch.get_autocast_dtype(device)
        if x.dtype == fast:
            return x
        raise TypeError(
            f"{owner} expected `{argument}` of dtype {dtype} (or {fast} under autocast), "
            f"got {x.dtype}"
        )
    raise TypeError(f"{owner} expected `{argument}` of dtype {dtype}, got {x.dtype}")


def parameter_dtype(module: object) -> torch.dtype | None:
    """The dtype of ``module``'s first materialised floating parameter: its own first
    (the common case, no recursion), then its submodules'; ``None`` when there is none
    (or ``module`` is not an ``nn.Module``). Lazy parameters are skipped by an isinstance
    test, which ``torch.compile`` traces (``nn.parameter.is_lazy`` breaks the graph)."""
    if not isinstance(module, nn.Module):
        return None
    for p in module._parameters.values():
        if p is not None and p.is_floating_point() and not isinstance(p, UninitializedTensorMixin):
            return p.dtype
    for p in module.parameters():
        if p.is_floating_point() and not isinstance(p, UninitializedTensorMixin):
            return p.dtype
    return None


#: Per-thread overrides pushed by the context managers of :mod:`bayesian_layers.sampling`:
#: ``modes`` maps ``id(layer)`` to a list of ``(token, mode, frozen_noise)`` entries and
#: ``samples`` to a list of ``(token, K)``; the last entry wins. A context removes only
#: its own entry at exit, so contexts in different threads (or exiting out of order in
#: one thread) never restore each other's state.
class _Overrides(threading.local):
    def __init__(self) -> None:
        # both tables exist in every thread from its first look: a compiled call is
        # then traced against an empty table, as it finds it after any context exits
        # (no recompilation the first time a context is used)
        self.modes: dict[int, list[tuple]] = {}
        self.samples: dict[int, list[tuple]] = {}


_OVERRIDES = _Overrides()


def _thread_table(kind: str) -> dict[int, list[tuple]]:
    table: dict[int, list[tuple]] = getattr(_OVERRIDES, kind)  # made per thread in __init__
    return table


def push_override(layers: Iterable[BayesianLayer], kind: str, token: object, value: Any) -> None:
    """Give ``layers`` a ``"modes"`` or ``"samples"`` override in the calling thread only.

    A ``"modes"`` entry carries its own frozen-noise store, so a frozen-sample context
    is its own function sample, forgotten when the entry is removed.
    """
    table = _thread_table(kind)
    for layer in layers:
        entry = (token, value, {}) if kind == "modes" else (token, value)
        table.setdefault(id(layer), []).append(entry)


def pop_override(layers: Iterable[BayesianLayer], kind: str, token: object) -> None:
    """Remove the override entries of ``token`` (wherever they are in each stack)."""
    table = _thread_table(kind)
    for layer in layers:
        entries = table.get(id(layer))
        if not entries:
            continue
        entries[:] = [e for e in entries if e[0] is not token]
        if not entries:
            del table[id(layer)]


def _top(layer: BayesianLayer, kind: str) -> tuple | None:
    entries = _thread_table(kind).get(id(layer))
    return entries[-1] if entries else None


def _strict_load() -> bool:
    """Whether the running ``nn.Module.load_state_dict`` is strict (torch passes every
    module ``strict=True`` whatever the caller asked; the caller's flag is a local of
    that frame). Unknown callers count as not strict."""
    code = nn.Module.load_state_dict.__code__
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", False))
        frame = frame.f_back
    return False


def _forget_withheld_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Load post-hook: keys a layer held back from its submodules after a failed check
    are not "missing" (the real error is already reported)."""
    withheld = module.__dict__.pop("_withheld_keys", None)
    if withheld:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k not in withheld]


class BayesianLayer(nn.Module):
    """Base class of layers whose parameters are random variables.

    A subclass declares each parameter with :meth:`add_param`. A random parameter
    ``name`` is read as ``layer.<name>``: a :class:`RandomVariable` whose
    distribution is the current posterior and whose value is the most recent
    whole draw (the posterior mean before any draw, or for estimators that never
    draw whole weights). A deterministic one is a plain ``nn.Parameter``.

    Attributes:
        sampling: one of :data:`SAMPLING_MODES`; set it for a whole model with
            :func:`bayesian_layers.set_sampling` or the context managers
            :func:`bayesian_layers.posterior_mean` and
            :func:`bayesian_layers.frozen_sample`.
        num_function_samples: K > 1 while inside
            :func:`bayesian_layers.vectorized_samples`: inputs then carry K
            function samples folded into their first dimension, sample-major
            (``(K * B, ...)``), and the layer draws K parameter samples at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._inits: dict[str, TrainableInitializer] = {}
        self._random: dict[str, torch.Size] = {}
        self._own_frozen_noise: dict[str, Any] = {}
        # one key per random parameter from the start: a compiled call that stores a
        # draw then finds the keys it was traced with (no recompilation)
        self._last_sample: dict[str, Tensor | None] = {}
        self._noise_hooks: OrderedDict[int, NoiseHook] = OrderedDict()
        self.sampling = "sample"
        self.num_function_samples = 1
        self.register_load_state_dict_post_hook(_forget_withheld_keys)

    def __getstate__(self) -> dict[str, Any]:
        # Draws hold autograd graphs, which neither deepcopy nor pickle accept; a
        # copy starts without them (frozen noise is kept).
        state = self.__dict__.copy()
        state["_last_sample"] = dict.fromkeys(self._last_sample)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_noise_hooks", OrderedDict())  # modules pickled before noise hooks
        # modules pickled before sampling modes became per-thread overridable
        for old, new in (
            ("sampling", "_sampling"),
            ("num_function_samples", "_num_function_samples"),
            ("_frozen_noise", "_own_frozen_noise"),
        ):
            if old in state:
                state.setdefault(new, state.pop(old))
        super().__setstate__(state)

    # ----------------------------------------------------------------- state
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # All or nothing per layer: every key of this layer and its submodules
        # (initializers, regularizers, nested layers) is checked before any is copied.
        problems = self._state_dict_problems(state_dict, prefix)
        own = self.state_dict(keep_vars=True)
        absent = [prefix + k for k in own if prefix + k not in state_dict]
        if not problems and not (absent and _strict_load()):
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs,
            )  # fmt: skip
            return
        error_msgs.extend(problems)
        own_keys = {prefix + k for k in {**self._parameters, **self._buffers}}
        missing_keys.extend(k for k in absent if k in own_keys)  # submodules add theirs
        withheld = {k for k in state_dict if k.startswith(prefix)}
        for k in withheld:  # this dict is torch's copy; submodules then find nothing to load
            del state_dict[k]
        self.__dict__["_withheld_keys"] = withheld

    def _state_dict_problems(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        """Messages for every entry of ``state_dict`` this layer would refuse."""
        owner = type(self).__name__
        problems = []
        for name, current in self.state_dict(keep_vars=True).items():
            key = prefix + name
            if key not in state_dict:
                continue
            value = state_dict[key]
            if not torch.overrides.is_tensor_like(value):
                problems.append(
                    f"{owner} expected a tensor for {key} (so nothing in it was loaded), "
                    f"got {type(value).__name__}"
                )
                continue
            if not isinstance(current, Tensor) or torch.nn.parameter.is_lazy(current):
                continue
            shape = value.shape
            if current.dim() == 0 and tuple(shape) == (1,):  # torch's 0.3 compatibility
                continue
            if shape != current.shape:
                problems.append(
                    f"size mismatch for {key}: copying a param with shape {shape} from "
                    f"checkpoint, the shape in current model is {current.shape} ({owner}: "
                    "nothing in it was loaded)"
                )
        return problems

    @property
    def sampling(self) -> str:
        """The sampling mode, one of :data:`SAMPLING_MODES`.

        Assigning it (or :func:`bayesian_layers.set_sampling`) sets the layer's mode
        for every thread. The contexts :func:`bayesian_layers.posterior_mean` and
        :func:`bayesian_layers.frozen_sample` instead override it in the thread that
        entered them only, until they exit (in any order); inside one, the
        innermost context's mode wins over an assignment.
        """
        top = _top(self, "modes")
        return self._sampling if top is None else top[1]

    @sampling.setter
    def sampling(self, mode: str) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(
                f"{type(self).__name__} expected `sampling` in {SAMPLING_MODES}, got {mode!r}"
            )
        self._sampling = mode
        if mode == "frozen":
            self._draw_frozen()

    @property
    def num_function_samples(self) -> int:
        """K, the function samples drawn per call (> 1 inside
        :func:`bayesian_layers.vectorized_samples`, in the thread that entered it)."""
        top = _top(self, "samples")
        return self._num_function_samples if top is None else top[1]

    @num_function_samples.setter
    def num_function_samples(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"{type(self).__name__} expected `num_function_samples` >= 1, got {k!r}"
            )
        self._num_function_samples = k

    @property
    def _frozen_noise(self) -> dict[str, Any]:
        """The store of the frozen function sample in effect: the innermost
        frozen-sample context's own (per thread), else the layer's."""
        top = _top(self, "modes")
        return self._own_frozen_noise if top is None else top[2]

    def _draw_frozen(self) -> None:
        """Draw the frozen function sample now (entering ``"frozen"`` mode, or at
        :meth:`resample` in it) for every random parameter that has none, so that a
        compiled frozen call only reads it: one graph, whether or not it is the first
        call. Subclasses with draws of their own extend it."""
        for name, init in self._inits.items():
            if name in self._random:
                self._noise(name, init, next(iter(init.params(self, name).values())))

    # ------------------------------------------------------------ parameters
    def add_param(
        self,
        name: str,
        shape: Sequence[int],
        initializer: str | TrainableInitializer,
        regularizer: str | Regularizer | None,
        *,
        fan_in: int | None = None,
        fan_out: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TrainableInitializer:
        """Create the parameters of ``name`` on this layer and remember its penalty."""
        owner = type(self).__name__
        init = get_initializer(initializer, owner=f"{owner}({name}_initializer)")
        reg = get_regularizer(regularizer, owner=f"{owner}({name}_regularizer)")
        init.build(self, name, shape, fan_in=fan_in, fan_out=fan_out, device=device, dtype=dtype)
        setattr(self, f"{name}_initializer", init)
        if reg is not None:
            reg = reg.to(device=device, dtype=dtype) if dtype is not None else reg.to(device)
        setattr(self, f"{name}_regularizer", reg)
        self._inits[name] = init
        if not init.is_deterministic:
            self._random[name] = torch.Size(shape)
            self._last_sample[name] = None
        return init

    def __getattr__(self, name: str) -> Any:
        random = self.__dict__.get("_random")
        if random is not None and name in random:
            return self.random_variable(name)
        return super().__getattr__(name)

    def random_variable(self, name: str) -> RandomVariable:
        """``name`` as a random variable: posterior distribution, latest draw as value."""
        init = self._inits[name]
        q = init.distribution(self, name)
        value = self._last_sample.get(name)
        if value is None:
            return RandomVariable(q, value=init.point(self, name), name=name)
        sample_shape = value.shape[: value.dim() - len(self._random[name])]
        return RandomVariable(q, value=value, sample_shape=sample_shape, name=name)

    def load_point_estimates(self, values: dict[str, Tensor | None]) -> None:
        """Set posterior means (deterministic parameters: the values) from point estimates.

        ``values`` maps parameter names to tensors, e.g. a torch layer's trained
        weights; ``None`` entries are skipped. Normal and deterministic families
        only (elsewhere a mean is not a free parameter).
        """
        with torch.no_grad():
            for name, value in values.items():
                if value is None:
                    continue
                init = self._inits[name]
                if not (init.is_normal or init.is_deterministic):
                    raise ValueError(
                        f"{type(self).__name__}: copying point estimates needs normal or "
                        f"deterministic posteriors, got {type(init).__name__} for {name}"
                    )
                self.point(name).copy_(value)

    def point(self, name: str) -> Tensor:
        """The posterior mean of ``name`` (the parameter itself when deterministic)."""
        return self._inits[name].point(self, name)

    # ------------------------------------------------------------ the seam
    def _init_of(self, name: str) -> TrainableInitializer:
        init = self._inits.get(name)
        if init is None:
            raise ValueError(
                f"{type(self).__name__} has no parameter {name!r}; its parameters are "
                f"{list(self._inits)}"
            )
        return init

    def parameter_spec(self, name: str) -> ParameterSpec:
        """What this layer declares about parameter ``name``.

        Raises:
            ValueError: ``name`` is not a parameter of this layer (the message names
                the layer and lists its parameters).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> spec = layer.parameter_spec("bias")  # a point estimate by default
            >>> spec.shape, type(spec.initializer).__name__, spec.is_random
            (torch.Size([2]), 'TrainableDeterministic', False)
            >>> layer.parameter_spec("kernel")
            Traceback (most recent call last):
            ...
            ValueError: LinearReparameterization has no parameter 'kernel'; its parameters are ...
        """
        init = self._init_of(name)
        reg = self._modules.get(f"{name}_regularizer")
        random = name in self._random
        shape = self._random[name] if random else init.point(self, name).shape
        return ParameterSpec(
            name=name,
            shape=torch.Size(shape),
            initializer=init,
            regularizer=reg if isinstance(reg, Regularizer) else None,
            is_random=random,
        )

    def named_random_parameters(
        self, *, include_deterministic: bool = False
    ) -> Iterator[tuple[str, ParameterSpec]]:
        """``(name, spec)`` of this layer's random parameters, in declaration order.

        Only the layer's own (as ``named_parameters(recurse=False)``); a nested
        Bayesian layer lists its own.

        Args:
            include_deterministic: list the point-estimate parameters declared with
                :meth:`add_param` as well (``spec.is_random`` is then ``False``).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)  # a deterministic bias by default
            >>> [(n, tuple(s.shape)) for n, s in layer.named_random_parameters()]
            [('weight', (2, 3))]
            >>> [n for n, _ in layer.named_random_parameters(include_deterministic=True)]
            ['weight', 'bias']
        """
        for name in self._inits:
            if include_deterministic or name in self._random:
                yield name, self.parameter_spec(name)

    def posterior(self, name: str) -> torch.distributions.Distribution:
        """The current posterior ``q`` of parameter ``name`` (a
        :class:`bayesian_layers.DeterministicDistribution` for a point estimate).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> q = layer.posterior("weight")
            >>> torch.equal(q.mean, layer.weight_loc), q.batch_shape
            (True, torch.Size([2, 3]))
        """
        return self._init_of(name).distribution(self, name)

    def posterior_loc_scale(self, name: str) -> tuple[Tensor, Tensor | None]:
        """``(loc, scale)`` of the normal posterior of ``name``; ``(value, None)`` for a
        point estimate.

        Raises:
            ValueError: the posterior of ``name`` is neither normal nor deterministic.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)
            >>> loc, scale = layer.posterior_loc_scale("weight")
            >>> torch.allclose(scale, torch.nn.functional.softplus(layer.weight_rho))
            True
        """
        init = self._init_of(name)
        if init.is_deterministic:
            return init.point(self, name), None
        if not init.is_normal:
            raise ValueError(
                f"{type(self).__name__}.posterior_loc_scale needs a normal or deterministic "
                f"posterior, got {type(init).__name__} for {name!r}"
            )
        return init.loc_scale(self, name)

    def set_initializer(self, name: str, initializer: str | TrainableInitializer) -> None:
        """Replace the posterior family object of ``name``, keeping its parameters.

        The new family must hold the same parameters (same suffixes, e.g.
        ``loc``/``rho``); use it to record how the parameters were set (e.g. a
        pretrained posterior), not to change the family. The attribute
        ``<name>_initializer`` and the layer's tables stay consistent.

        Raises:
            ValueError: unknown ``name``, or a family with other parameters.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)
            >>> layer.set_initializer("weight", bl.initializers.TrainableHeNormal())
            >>> type(layer.weight_initializer).__name__
            'TrainableHeNormal'
        """
        old = self._init_of(name)
        owner = type(self).__name__
        init = get_initializer(initializer, owner=f"{owner}({name}_initializer)")
        if init.suffixes != old.suffixes or init.is_deterministic != old.is_deterministic:
            raise ValueError(
                f"{owner}.set_initializer expected a family with the parameters of "
                f"{type(old).__name__} for {name!r} (suffixes {old.suffixes}), got "
                f"{type(init).__name__} (suffixes {init.suffixes})"
            )
        setattr(self, f"{name}_initializer", init)
        self._inits[name] = init

    def param_dtype(self) -> torch.dtype | None:
        """The dtype of this layer's floating parameters (``None`` when it has none)."""
        return parameter_dtype(self)

    def check_input(self, x: Any, argument: str = "input", *, floating: bool = True) -> Tensor:
        """``x`` as a plain tensor, checked against this layer's parameter dtype.

        Call it first in ``forward`` on every tensor argument. A random variable
        gives its value; a non-tensor, or (with ``floating=True``) a tensor whose
        dtype is not the parameters' dtype (nor the autocast dtype under
        ``torch.autocast``), raises ``TypeError`` naming the layer, ``argument``,
        the expected and the received dtype. Pass ``floating=False`` for index
        inputs (embeddings): then only the tensor check runs.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> layer.check_input(torch.zeros(1, 3, dtype=torch.float64), "x")
            Traceback (most recent call last):
            ...
            TypeError: LinearReparameterization expected `x` of dtype torch.float32, got ...
        """
        dtype = self.param_dtype() if floating else None
        return check_input(x, type(self).__name__, argument, dtype=dtype)

    # -------------------------------------------------------------- sampling
    def noise(
        self, name: str, shape: Sequence[int], like: Tensor, *, kind: str = "normal"
    ) -> Tensor:
        """Standard noise for a draw: the one place where this layer's randomness is made.

        Every estimator asks for its noise here, so a noise hook
        (:meth:`register_noise_hook`) sees all of it: tensor parallelism draws the
        noise of the whole weight and keeps its shard, a test substitutes fixed noise.

        Args:
            name: what the noise is for: a random parameter's name (``"weight"``), or
                a name of the estimator's own (``"weight_sign_in"``, ``"output"``).
            shape: the noise's shape (a leading K in vectorised mode included).
            like: a tensor whose dtype and device the noise takes.
            kind: ``"normal"`` (standard normal), ``"sign"`` (Rademacher ±1), or
                ``"parameter"`` (the noise of ``name``'s posterior family, e.g.
                standard normal for a normal posterior).

        Returns:
            A tensor of ``shape``: the first hook's answer that is not ``None``, else
            a fresh draw.
        """
        shape = torch.Size(shape)
        if kind == "normal":
            make = _normal_maker(like)
        elif kind == "sign":
            make = _sign_maker(like)
        elif kind == "parameter":
            init = self._inits[name]

            def make(s: torch.Size) -> Tensor:
                return init.noise(s, like)
        else:
            raise ValueError(
                f"{type(self).__name__}.noise expected `kind` in ('normal', 'sign', "
                f"'parameter'), got {kind!r}"
            )
        for hook in self._noise_hooks.values():
            value = hook(self, name, kind, shape, make)
            if value is not None:
                return value
        return make(shape)

    def register_noise_hook(self, hook: NoiseHook) -> RemovableHandle:
        """Register ``hook(layer, name, kind, shape, make) -> Tensor | None``, called
        by :meth:`noise` for every draw of this layer (in registration order).

        ``make(shape)`` draws default noise of the requested kind for any shape (a
        tensor-parallel hook calls it with the full shape and slices its shard);
        return ``None`` to leave the draw to the next hook or the default.

        Returns:
            a handle whose ``remove()`` unregisters the hook.

        Example:
            >>> import torch, bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> zeros = lambda layer, name, kind, shape, make: torch.zeros(shape)
            >>> handle = layer.register_noise_hook(zeros)
            >>> x = torch.randn(4, 3)
            >>> torch.equal(layer(x), layer(x))  # the posterior means, as with zero noise
            True
            >>> handle.remove()
        """
        handle = RemovableHandle(self._noise_hooks)
        self._noise_hooks[handle.id] = hook
        return handle

    def _noise(self, name: str, init: TrainableInitializer, like: Tensor) -> Tensor | None:
        shape = self._random[name]
        if self.num_function_samples > 1:
            shape = torch.Size((self.num_function_samples,)) + shape
        if self.sampling != "frozen":
            return self.noise(name, shape, like, kind="parameter")
        cached = self._frozen_noise.get(name)
        if cached is None or cached.shape != shape:
            cached = self.noise(name, shape, like, kind="parameter")
            self._frozen_noise[name] = cached
        return cached

    def sample_param(self, name: str) -> Tensor:
        """A whole draw of parameter ``name`` under the current sampling mode.

        While a tracer is active (:func:`bayesian_layers.trace`) the draw is the
        random variable :func:`bayesian_layers.tracing.layer_parameter` named by
        module path, and the value the tracers leave is used.

        Shape: the parameter's shape, with a leading K in vectorised mode.
        """
        init = self._inits[name]
        if init.is_deterministic or self.sampling == "mean":
            return init.point(self, name)
        if _tracing._active and _tracing.is_tracing():
            return self._traced_draw(name, None)
        like = next(iter(init.params(self, name).values()))
        value = init.transform(self, name, self._noise(name, init, like))
        self._last_sample[name] = value
        return value

    def draw_param(self, name: str, noise: Tensor) -> Tensor:
        """The draw of random parameter ``name`` made from standard ``noise`` (traced
        like :meth:`sample_param` while a tracer is active)."""
        if _tracing._active and _tracing.is_tracing():
            return self._traced_draw(name, noise)
        value = self._inits[name].transform(self, name, noise)
        self._last_sample[name] = value
        return value

    def per_example_noise(self) -> bool:
        """Whether an estimator may skip whole weight draws (Flipout, local
        reparameterization): only in ``"sample"`` mode with no tracer active, since a
        tracer must see each weight as one random variable."""
        return self.sampling == "sample" and not (_tracing._active and _tracing.is_tracing())

    def _traced_draw(self, name: str, noise: Tensor | None) -> Tensor:
        path = _tracing.module_path(self, name)
        rv = _tracing.layer_parameter(self, name, name=path, noise=noise)
        value = rv.value if isinstance(rv, RandomVariable) else rv
        self._last_sample[name] = value
        return value

    def param_draw(
        self, name: str, value: Tensor | None = None, *, noise: Tensor | None = None
    ) -> tuple[torch.distributions.Distribution, Tensor, torch.Size]:
        """``(q, value, sample_shape)`` of one draw of ``name`` (for tracing).

        Without ``value`` the draw is made from standard ``noise`` when given, else it
        follows the sampling mode (fresh noise, or the frozen sample); a given value
        must have the parameter's shape (then shared by all K function samples) or
        ``(K, *shape)``.
        """
        init = self._inits[name]
        shape = self._random[name]
        k = self.num_function_samples
        like = next(iter(init.params(self, name).values()))
        if value is None:
            if noise is None:
                noise = self._noise(name, init, like)
            value = init.transform(self, name, noise)
        else:
            if isinstance(value, RandomVariable):
                value = value.value
            value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
            full = torch.Size((k,)) + shape if k > 1 else shape
            if value.shape == shape and k > 1:
                value = value.expand(full)
            if value.shape != full:
                raise ValueError(
                    f"{type(self).__name__} expected a value for {name!r} of shape "
                    f"{tuple(full)}, got {tuple(value.shape)}"
                )
        lead = value.shape[: value.dim() - len(shape)]
        return init.distribution(self, name), value, lead

    def resample(self) -> None:
        """Forget the frozen function sample; in ``"frozen"`` mode draw the next one now."""
        self._frozen_noise.clear()
        if self.sampling == "frozen":
            self._draw_frozen()

    def check_samples(self, x: Tensor) -> int:
        """K, the function samples of this call, after checking that ``x`` carries them
        folded into its first dimension (sample-major, ``(K * B, ...)``).

        Raises:
            ValueError: K > 1 and ``x``'s first dimension is not a multiple of K.

        Example:
            >>> import torch, bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)
            >>> with bl.vectorized_samples(layer, 4):
            ...     layer.check_samples(torch.zeros(8, 3))
            4
        """
        k = self.num_function_samples
        if k > 1 and (x.dim() == 0 or x.shape[0] % k):
            raise ValueError(
                f"{type(self).__name__} is drawing {k} function samples at once and expected "
                f"an input whose first dimension is a multiple of {k} (samples folded into the "
                f"batch, sample-major), got shape {tuple(x.shape)}"
            )
        return k

    _check_samples = check_samples  # the old private name, until every caller moved

    # ---------------------------------------------------------------- losses
    def _normal_penalty(
        self, reg: Regularizer, init: TrainableInitializer, name: str
    ) -> Tensor | None:
        # from the raw rho (stable log-scale) when scale = softplus(rho), as for every
        # TrainableNormal that keeps its loc_scale; a family computing its scale
        # otherwise goes through its own loc_scale
        if type(init).loc_scale is TrainableNormal.loc_scale:
            return reg.softplus_normal_penalty(*init.loc_rho(self, name))
        return reg.normal_penalty(*init.loc_scale(self, name))

    def kl_terms(self) -> dict[str, Tensor]:
        """The regularizer term (a scalar, usually a KL) of every parameter that has a
        regularizer, by parameter name, from the current posteriors.

        A Monte Carlo regularizer uses the latest draw of the parameter (divided by its
        number of samples), or draws afresh when there is none. A draw whose shape no
        longer fits the parameter (parameters resharded since) is not used.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> terms = layer.kl_terms()  # the default bias is a point estimate: no term
            >>> list(terms), terms["weight"].shape
            (['weight'], torch.Size([]))
        """
        out: dict[str, Tensor] = {}
        for name, init in self._inits.items():
            reg = self._modules.get(f"{name}_regularizer")
            if not isinstance(reg, Regularizer):
                continue
            if init.is_normal:
                term = self._normal_penalty(reg, init, name)
                if term is not None:
                    out[name] = term
                    continue
            q = init.distribution(self, name)
            value = self._last_sample.get(name) if name in self._random else None
            shape = next(iter(init.params(self, name).values())).shape
            if value is not None and value.shape[value.dim() - len(shape) :] != shape:
                value = None  # drawn before the parameters were resharded
            samples = 1
            if not reg.needs_sample:
                rv = RandomVariable(q, value=init.point(self, name))
            elif value is not None:
                lead = value.shape[: value.dim() - len(shape)]
                samples = max(1, lead.numel())
                rv = RandomVariable(q, value=value, sample_shape=lead)
            else:
                rv = RandomVariable(q)
            term = reg(rv)
            out[name] = term / samples if samples > 1 else term
        return out

    @property
    def losses(self) -> list[Tensor]:
        """Regularizer terms (scalars) of the current parameter distributions:
        ``list(self.kl_terms().values())``."""
        return list(self.kl_terms().values())
