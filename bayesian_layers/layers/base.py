"""Shared machinery of layers with uncertain parameters: parameters as random
variables, sampling modes, vectorised function samples and ``losses``.

The parts live in private modules and meet in :class:`BayesianLayer`: the parameter
seam (:mod:`._seam`: specs, posteriors, KL terms), the noise source and its hooks
(:mod:`._noise`), all-or-nothing state loading (:mod:`._state`), the per-thread
sampling overrides (:mod:`._overrides`) and the input checks (:mod:`._input`, whose
``as_tensor``, ``check_input`` and ``parameter_dtype`` are importable from here).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import tracing as _tracing
from ..initializers import TrainableInitializer, get_initializer
from ..random_variables.variable import RandomVariable
from ..regularizers import Regularizer, get_regularizer
from ._base.input import as_tensor, check_input, parameter_dtype
from ._base.noise import NoiseHook, NoiseSource
from ._base.overrides import pop_override, push_override
from ._base.overrides import top_override as _top
from ._base.seam import ParameterSeam, ParameterSpec
from ._base.state import AllOrNothingLoading
from ._base.state import forget_withheld_keys as _forget_withheld_keys  # noqa: F401 - old pickles name it here

__all__ = [
    "BayesianLayer",
    "NoiseHook",
    "ParameterSpec",
    "SAMPLING_MODES",
    "as_tensor",
    "check_input",
    "parameter_dtype",
    "pop_override",
    "push_override",
]


#: ``"sample"``: a fresh function sample at every call (default, train and eval);
#: ``"mean"``: posterior means, no sampling; ``"frozen"``: one function sample kept
#: across calls until :meth:`BayesianLayer.resample`.
SAMPLING_MODES = ("sample", "mean", "frozen")


def _check_prior_shapes(owner: str, reg: Regularizer, shape: torch.Size) -> None:
    """The prior tensors of ``reg`` (its ``prior_*`` buffers and parameters) must
    broadcast to the parameter's ``shape`` without growing it: a larger one would sum
    the penalty over copies of the parameter, a mismatched one fail at ``losses``."""
    for key, t in (*reg.named_buffers(), *reg.named_parameters()):
        if not key.rpartition(".")[2].startswith("prior_"):
            continue
        try:  # leading 1s are harmless: the penalty still sums each element once
            ok = torch.broadcast_shapes(t.shape, shape).numel() == shape.numel()
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{owner} expected {type(reg).__name__}'s `{key}` (shape {tuple(t.shape)}) "
                f"to broadcast to the parameter's shape {tuple(shape)} without growing it "
                "(e.g. (out_features, 1) for one value per output unit)"
            )


class BayesianLayer(ParameterSeam, NoiseSource, AllOrNothingLoading):
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

    # -------------------------------------------------------------- sampling
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
            self.draw_frozen()

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
    def in_predictive(self) -> bool:
        """Whether this call is inside :func:`bayesian_layers.predict` (in the thread that
        entered it). Only the per-example law of a predictive sample is promised there
        for estimators without exact function samples, so they may draw a cheaper noise
        with that law (Flipout on a dense input draws output-space noise)."""
        return _top(self, "predictive") is not None

    @property
    def predictive_store(self) -> dict[Any, Any] | None:
        """Inside :func:`bayesian_layers.predict` (in the thread that entered it), a store
        that lives for that one call, shared by the model's Bayesian layers; ``None``
        elsewhere. Layers keep there what the call's chunks may reuse (the output moments
        at an input tensor that every one-sample chunk hands over again)."""
        top = _top(self, "predictive")
        return None if top is None else top[1].store

    @property
    def marginal_predictive(self) -> bool:
        """Whether this call is inside :func:`bayesian_layers.predict` with ``joint=False``
        (in the thread that entered it): only each example's law is asked for, so a
        whole-draw layer may draw output-space noise at a shared input."""
        top = _top(self, "predictive")
        return top is not None and top[1].marginal

    @property
    def frozen_state(self) -> dict[str, Any]:
        """The store of the frozen function sample in effect: the innermost
        :func:`bayesian_layers.frozen_sample` context's own (per thread), else the
        layer's. Random parameters keep their noise here under their names (the K
        draws of the last vectorised call under ``"name@K"``, apart from it); a subclass
        with draws of its own (a dropout mask's seed, a GP's function draw) keeps them
        under keys of its own. :meth:`resample` empties it.

        Example:
            >>> import torch, bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> layer.sampling = "frozen"
            >>> list(layer.frozen_state), layer.frozen_state["weight"].shape
            (['weight'], torch.Size([2, 3]))
        """
        top = _top(self, "modes")
        return self._own_frozen_noise if top is None else top[2]

    def draw_frozen(self) -> None:
        """Draw the frozen function sample now (entering ``"frozen"`` mode, or at
        :meth:`resample` in it) for every random parameter that has none, so that a
        compiled frozen call only reads it: one graph, whether or not it is the first
        call. Subclasses with draws of their own extend it."""
        for name, init in self._inits.items():
            if name in self._random:
                self._noise(name, init, self._like(init, name))

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
        shape = torch.Size(int(d) for d in shape)  # sizes given as numpy integers too
        init = get_initializer(initializer, owner=f"{owner}({name}_initializer)")
        reg = get_regularizer(regularizer, owner=f"{owner}({name}_regularizer)")
        if reg is not None:
            _check_prior_shapes(f"{owner}({name}_regularizer)", reg, torch.Size(shape))
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

    # ---------------------------------------------------------------- inputs
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

    # ----------------------------------------------------------------- draws
    def _like(self, init: TrainableInitializer, name: str) -> Tensor:
        """A raw parameter of ``name``: its dtype and device are the noise's."""
        return next(iter(init.params(self, name).values()))

    def _noise(self, name: str, init: TrainableInitializer, like: Tensor) -> Tensor | None:
        k = self.num_function_samples
        lead = torch.Size((k,) if k > 1 else ())
        if self.sampling != "frozen":
            return self.noise(name, lead + self._random[name], like, kind="parameter")
        # K frozen functions (``bl.predict`` in frozen mode) are kept apart from the one
        # frozen function of plain calls, so that neither replaces the other; one entry
        # for the vectorised draws (another K redraws them), so the store stays bounded
        key = name if k == 1 else f"{name}@K"
        cached = self.frozen_state.get(key)
        # ``like``'s shape, not the declared one: a noise hook may answer with another
        # (a tensor-parallel shard's), which is then the frozen sample of that shard
        if cached is None or cached.shape != lead + like.shape:
            cached = self.noise(name, lead + self._random[name], like, kind="parameter")
            self.frozen_state[key] = cached
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
        if _tracing.is_tracing():
            return self._traced_draw(name, None)
        value = init.transform(self, name, self._noise(name, init, self._like(init, name)))
        self._last_sample[name] = value
        return value

    def draw_param(self, name: str, noise: Tensor) -> Tensor:
        """The draw of random parameter ``name`` made from standard ``noise`` (traced
        like :meth:`sample_param` while a tracer is active)."""
        if _tracing.is_tracing():
            return self._traced_draw(name, noise)
        value = self._inits[name].transform(self, name, noise)
        self._last_sample[name] = value
        return value

    def forget_draw(self, *names: str | None) -> None:
        """Record that this call draws no whole value of the random parameters ``names``
        (``None`` entries are skipped): ``layer.<name>`` reads the posterior mean again,
        and a Monte Carlo regularizer draws afresh instead of reusing an older draw
        (whose autograd graph a backward pass may have freed). Estimators that skip
        whole draws (Flipout, local reparameterization) call it.

        Example:
            >>> import torch, bayesian_layers as bl
            >>> layer = bl.layers.LinearLocalReparameterization(3, 2)
            >>> with bl.frozen_sample(layer):
            ...     _ = layer(torch.zeros(1, 3))  # one whole draw
            >>> _ = layer(torch.zeros(1, 3))  # per-example noise: no whole draw
            >>> torch.equal(layer.weight.value, layer.weight_loc)
            True
        """
        for name in names:
            if name is not None and name in self._random:
                self._last_sample[name] = None

    def per_example_noise(self) -> bool:
        """Whether an estimator may skip whole weight draws (Flipout, local
        reparameterization): only in ``"sample"`` mode with no tracer active, since a
        tracer must see each weight as one random variable."""
        return self.sampling == "sample" and not _tracing.is_tracing()

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
        like = self._like(init, name)
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
        self.frozen_state.clear()
        if self.sampling == "frozen":
            self.draw_frozen()

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
