"""Monte Carlo predictive distributions, K function samples in one vectorised call.

When the model ends in a stochastic output layer (it returns a
:class:`~bayesian_layers.RandomVariable`), :func:`predict` also keeps the output
distribution's moments under each function sample, and :class:`Predictive`
splits the predictive uncertainty into an aleatoric part (the noise the output
layer models) and an epistemic part (disagreement between function samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from math import lcm

import torch
from torch import Tensor, nn

from . import metrics
from ._function_space import is_function_space
from ._model_parts import batch_statistics_layers, normalization_in_eval
from ._predictive_moments import fold_moments, output_moments, output_tensor, stack_moments
from ._prefix import Prefix, folded_copy
from ._prefix import fold_samples as _fold
from ._trunk import Split, TrunkError, split_model
from .layers._base.overrides import PredictiveCall, overriding
from .layers.base import BayesianLayer
from .random_variables.variable import RandomVariable
from .sampling import bayesian_modules
from .uncertainty import entropy, entropy_decomposition

__all__ = ["Predictive", "predict", "auto_chunk_size", "CHUNK_BYTES"]

#: Budget for the temporaries of one vectorised call (see :func:`auto_chunk_size`).
CHUNK_BYTES = 32 * 2**20


class Predictive:
    r"""K predictive samples, their moments, and the uncertainty decomposition.

    ``samples``, ``mean`` and ``variance`` describe the model's output (for a
    stochastic output layer: its sampled value). The ``output_*`` fields are
    filled when the model returns a :class:`~bayesian_layers.RandomVariable`:
    they hold the output *distribution's* moments under each of the K function
    samples, from which the properties below decompose the uncertainty.

    Regression (an output distribution with a mean and a variance, e.g.
    ``layers.Normal``), with :math:`\mu_k, \sigma^2_k` the output moments under
    function sample :math:`k` (law of total variance,
    :func:`~bayesian_layers.metrics.variance_decomposition`):

    .. math:: \underbrace{\mathrm{Var}[y]}_{\texttt{total}}
        = \underbrace{\tfrac1K\textstyle\sum_k \sigma^2_k}_{\texttt{aleatoric}}
        + \underbrace{\tfrac1K\textstyle\sum_k (\mu_k - \bar\mu)^2}_{\texttt{epistemic}}

    Classification (``Categorical``, ``OneHotCategorical`` or ``Bernoulli``
    outputs), with :math:`p^{(k)}` the class probabilities under sample :math:`k`:
    ``predictive_entropy`` :math:`= \mathbb H[\bar p]` (total) ``=
    expected_entropy`` :math:`= \frac1K\sum_k \mathbb H[p^{(k)}]` (aleatoric)
    ``+ mutual_information`` (epistemic, BALD).

    When the output is a distribution over function values (a Gaussian-process
    layer's output, marked by it: ``function_space``), its whole variance is
    uncertainty about the function: ``epistemic = total`` and ``aleatoric = 0``.

    Attributes:
        samples: ``(K, B, *out)``: the model's output under K function samples
            (after ``transform``); for a random-variable output, its value.
        mean: ``(B, *out)``: mean over the samples (integer samples, such as class
            labels, are averaged as floats); computed on first use unless given.
        variance: ``(B, *out)``: variance over the samples (divisor K: the
            plug-in estimate of the predictive variance of the mean function; for
            a random-variable output, a Monte Carlo estimate of ``total``); computed
            on first use unless given.
        output_mean: ``(K, B, *event)``: mean of the output distribution under
            each function sample, or ``None`` (a tensor output, or a distribution
            without a mean, such as ``Categorical``).
        output_variance: ``(K, B, *event)``: variance of the output distribution
            under each function sample, or ``None``.
        output_probs: ``(K, B, *, C)``: class probabilities of a
            ``Categorical``/``OneHotCategorical`` output under each function
            sample; for a ``Bernoulli`` output the two classes ``(1 - p, p)``
            stacked on a new last dimension, so ``C = 2``; ``None`` otherwise.
        function_space: the output random variable is over function values (its
            variance is epistemic).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> pred = bl.Predictive(torch.zeros(2, 1), torch.zeros(1), torch.zeros(1),
        ...                      output_mean=torch.tensor([[0.0], [2.0]]),
        ...                      output_variance=torch.tensor([[1.0], [3.0]]))
        >>> pred.aleatoric, pred.epistemic, pred.total
        (tensor([2.]), tensor([1.]), tensor([3.]))
    """

    samples: Tensor
    _mean: Tensor | None
    _variance: Tensor | None
    output_mean: Tensor | None
    output_variance: Tensor | None
    output_probs: Tensor | None
    function_space: bool

    def __init__(
        self,
        samples: Tensor,
        mean: Tensor | None = None,
        variance: Tensor | None = None,
        output_mean: Tensor | None = None,
        output_variance: Tensor | None = None,
        output_probs: Tensor | None = None,
        function_space: bool = False,
    ) -> None:
        self.samples, self._mean, self._variance = samples, mean, variance
        self.output_mean, self.output_variance = output_mean, output_variance
        self.output_probs, self.function_space = output_probs, function_space

    @property
    def mean(self) -> Tensor:
        """``(B, *out)``: mean over the samples (computed on first use unless given)."""
        if self._mean is None:
            self._mean = _floats(self.samples).mean(0)
        return self._mean

    @property
    def variance(self) -> Tensor:
        """``(B, *out)``: variance over the samples, divisor K (computed on first use
        unless given; no warning on an empty batch)."""
        if self._variance is None:
            self._variance = (_floats(self.samples) - self.mean).square().mean(0)
        return self._variance

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    def __repr__(self) -> str:
        fields = [f"num_samples={self.num_samples}"]
        for name in ("samples", "mean", "variance", "output_mean", "output_variance"):
            value = getattr(self, name)
            if value is not None:
                fields.append(f"{name}={tuple(value.shape)}")
        if self.output_probs is not None:
            fields.append(f"output_probs={tuple(self.output_probs.shape)}")
            fields.append("uncertainty=predictive_entropy/expected_entropy/mutual_information")
        elif self.output_mean is not None and self.output_variance is not None:
            space = " (function space: all epistemic)" if self.function_space else ""
            fields.append(f"uncertainty=aleatoric/epistemic/total{space}")
        return f"{type(self).__name__}({', '.join(fields)})"

    # ------------------------------------------------------------ regression
    def _moments(self, what: str) -> tuple[Tensor, Tensor]:
        if self.output_mean is None or self.output_variance is None:
            raise ValueError(
                f"Predictive.{what} needs the mean and variance of the output distribution "
                "under each function sample: the model must return a RandomVariable whose "
                "distribution has both (e.g. end in layers.Normal); this model returned "
                + ("a Tensor" if self.output_probs is None else "class probabilities")
            )
        return self.output_mean, self.output_variance

    @property
    def aleatoric(self) -> Tensor:
        r"""``(B, *event)``: :math:`\frac1K\sum_k \sigma^2_k`, the expected output variance
        (0 for a distribution over function values)."""
        parts = metrics.variance_decomposition(*self._moments("aleatoric"))
        if self.function_space:
            return torch.zeros_like(parts.total)
        return parts.aleatoric

    @property
    def epistemic(self) -> Tensor:
        r"""``(B, *event)``: :math:`\frac1K\sum_k(\mu_k - \bar\mu)^2`, variance of the mean
        (``total`` for a distribution over function values)."""
        parts = metrics.variance_decomposition(*self._moments("epistemic"))
        return parts.total if self.function_space else parts.epistemic

    @property
    def total(self) -> Tensor:
        """``(B, *event)``: ``aleatoric + epistemic``, the predictive variance (total variance)."""
        return metrics.variance_decomposition(*self._moments("total")).total

    # -------------------------------------------------------- classification
    def _probs(self, what: str) -> Tensor:
        if self.output_probs is None:
            raise ValueError(
                f"Predictive.{what} needs class probabilities under each function sample: the "
                "model must return a RandomVariable with a Categorical, OneHotCategorical or "
                "Bernoulli distribution (e.g. end in layers.Categorical); for a model returning "
                "logits use bayesian_layers.metrics on predict(..., transform=softmax).samples"
            )
        return self.output_probs

    @property
    def predictive_probs(self) -> Tensor:
        r"""``(B, *, C)``: :math:`\bar p = \frac1K\sum_k p^{(k)}`, the predictive probabilities."""
        return self._probs("predictive_probs").mean(0)

    @property
    def predictive_entropy(self) -> Tensor:
        r"""``(B, *)``: :math:`\mathbb H[\bar p]`, total uncertainty in nats
        (:func:`~bayesian_layers.metrics.predictive_entropy`)."""
        return entropy(self._probs("predictive_entropy").mean(0))  # a distribution's: no check

    @property
    def expected_entropy(self) -> Tensor:
        r"""``(B, *)``: :math:`\frac1K\sum_k \mathbb H[p^{(k)}]`, the aleatoric part in nats
        (:func:`~bayesian_layers.metrics.expected_entropy`)."""
        return entropy(self._probs("expected_entropy")).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        r"""``(B, *)``: ``predictive_entropy - expected_entropy`` (BALD), the epistemic part
        in nats (:func:`~bayesian_layers.metrics.mutual_information`)."""
        return entropy_decomposition(self._probs("mutual_information"))[2]


def _floats(samples: Tensor) -> Tensor:
    """``samples`` as floats (integer samples, such as class labels, in the default dtype)."""
    return samples if samples.is_floating_point() else samples.to(torch.get_default_dtype())


def _split(total: int, chunk: int) -> list[int]:
    chunk = max(1, min(chunk, total))
    sizes = [chunk] * (total // chunk)
    if total % chunk:
        sizes.append(total % chunk)
    return sizes


def _largest_random_parameter(bayesian: list[BayesianLayer]) -> int:
    return max(
        (spec.shape.numel() for m in bayesian for _, spec in m.named_random_parameters()),
        default=0,
    )


def auto_chunk_size(model: nn.Module, x: Tensor, *, largest: int | None = None) -> int:
    """Function samples per vectorised call so one call's temporaries fit :data:`CHUNK_BYTES`.

    Per sample, a layer holds its weight draw and an activation about the size of
    the input batch, so the estimate is ``itemsize · (largest random parameter +
    4 · x.numel())`` bytes (``largest``: that size, when the caller knows it). An
    integer input (token ids) is not an activation: each id becomes a vector as wide as
    the model's widest layer (``out_features``, ``embedding_dim``, ``embed_dim``), so
    the activation is ``x.numel()`` times that width, in the default float dtype.
    """
    if largest is None:
        largest = _largest_random_parameter(list(bayesian_modules(model)))
    if x.is_floating_point() or x.is_complex():
        itemsize, activation = x.element_size(), x.numel()
    else:
        itemsize = torch.empty((), dtype=torch.get_default_dtype()).element_size()
        activation = x.numel() * _widest(model)
    per_sample = itemsize * (largest + 4 * activation)
    return max(1, CHUNK_BYTES // max(per_sample, 1))


def _widest(model: nn.Module) -> int:
    """The largest per-position width of ``model``'s layers (1 if none says)."""
    widths = [
        w
        for m in model.modules()
        for attr in ("out_features", "embedding_dim", "embed_dim")
        if isinstance(w := getattr(m, attr, None), int)
    ]
    return max(widths, default=1)


def _explain_failure(model: nn.Module, x: Tensor, err: Exception) -> None:
    """After the folded call failed: if ``model(x)`` works, raise an error about the
    batch convention in the user's shapes; if it fails too, that error names them."""
    if isinstance(err, torch.OutOfMemoryError):
        return
    model(x)  # raises the model's own error, on the input as the user passed it
    raise ValueError(
        f"predict reads the first dimension of x as the batch and folds the function "
        f"samples into it; the model runs on x of shape {tuple(x.shape)} but not on the "
        f"folded batch, so it does not treat that dimension as the batch. For one example "
        f"pass x[None] (shape {(1, *tuple(x.shape))}); for a model that moves the batch "
        f"pass vectorized=False"
    ) from err


def _joint_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Those of ``modules`` (a model's ``modules()``) whose class says
    ``joint_over_batch = True``."""
    return [m for m in modules if getattr(type(m), "joint_over_batch", False)]


@contextmanager
def _marginal_samples(modules: list[nn.Module]) -> Iterator[None]:
    """Joint-over-the-batch layers draw each row from its marginal meanwhile."""
    previous = [m.marginal_samples for m in modules]  # type: ignore[attr-defined]
    for m in modules:
        m.marginal_samples = True  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        for m, p in zip(modules, previous, strict=True):
            m.marginal_samples = p  # type: ignore[attr-defined]


def _members_per_call(modules: Iterable[nn.Module]) -> int:
    """The least common multiple of the ``ensemble_size`` of those of ``modules`` (a
    model's ``modules()``) whose class sets ``members_as_samples = True`` (each member is
    one function sample; 1 if none)."""
    sizes = [m.ensemble_size for m in modules if getattr(type(m), "members_as_samples", False)]
    return lcm(*sizes) if sizes else 1  # type: ignore[arg-type]


@contextmanager
def _folded_samples(modules: list[nn.Module], k: int) -> Iterator[None]:
    """Ensemble modules that hold whole member models (their class sets
    ``members_as_samples = True`` and they have a ``folded_samples`` attribute, e.g.
    :class:`~bayesian_layers.ensemble.Ensemble`) get ``folded_samples = k`` meanwhile: they
    read the folded ``(k B, ...)`` batch as one block per member and keep its shape
    (``modules``: the model's ``modules()``)."""
    modules = [
        m
        for m in modules
        if getattr(type(m), "members_as_samples", False) and hasattr(m, "folded_samples")
    ]
    previous = [m.folded_samples for m in modules]
    for m in modules:
        m.folded_samples = k  # type: ignore[assignment]
    try:
        yield
    finally:
        for m, p in zip(modules, previous, strict=True):
            m.folded_samples = p


def _call(
    model: nn.Module, split: Split | None, x: Tensor, h: Tensor | Prefix | None, k: int
) -> object:
    """One call for ``k`` function samples: the whole model on ``x`` folded, or the head
    of ``split`` on the trunk's output ``h`` (its first layer drawing the K samples at the
    shared ``h`` where it can)."""
    if split is None or h is None:
        return model(_fold(x, k))
    if isinstance(h, Prefix):  # any model: its recorded prefix answers, folded
        return h.call(model, x, k)
    if split.cached is not None:  # a declared submodule: the model runs on the folded input
        split.cached[:] = [folded_copy(h, k)]  # new memory: a head may change it in place
        return split.head(_fold(x, k))
    if split.first is not None and split.rest is not None:
        y = split.first.shared_input_samples(h, k)  # type: ignore[operator]
        if y is not None:
            return split.rest(y)
    return split.head(folded_copy(h, k))


def _vectorized(
    model: nn.Module,
    x: Tensor,
    num_samples: int,
    chunk_size: int | None,
    members: int,
    split: Split | None,
    h: Tensor | Prefix | None,
    modules: list[nn.Module],
) -> tuple[Tensor, dict[str, Tensor], bool]:
    """K samples in chunks of folded calls: ``(K, B, *out)``, the output moments, and
    whether every output was marked as over function values. Chunks hold a multiple of
    ``members`` samples."""
    folded = x if h is None or isinstance(h, Prefix) else h
    first = None if split is None else split.first
    if isinstance(h, Tensor) and first is not None and first.draws_at_shared_input(h):  # type: ignore[operator]
        # the first layer draws at the shared h: per sample, only its output is folded
        width = getattr(first, "out_features", h.shape[-1])
        folded = h.new_empty(*h.shape[:-1], width)
    bayesian = [m for m in modules if isinstance(m, BayesianLayer)]
    largest = _largest_random_parameter(bayesian)
    if chunk_size is not None:
        chunk = chunk_size
    elif isinstance(h, Prefix) and h.outputs:
        chunk = h.chunk_size(largest, CHUNK_BYTES)
    else:
        chunk = auto_chunk_size(model, folded, largest=largest)
    chunk = max(members, chunk - chunk % members)
    if any(m.sampling == "frozen" for m in bayesian):
        # frozen draws are kept per call shape: a second chunk of the same size would
        # repeat the first one's functions, so the K frozen functions come in one call
        chunk = num_samples
    parts, moment_parts, marked = [], [], True
    for k in _split(num_samples, chunk):
        try:
            with overriding(bayesian, "samples", k), _folded_samples(modules, k):
                rv = _call(model, split, x, h, k)
        except TrunkError:
            raise
        except (ValueError, TypeError, IndexError, RuntimeError) as err:
            _explain_failure(model, x, err)
            raise
        out = output_tensor(rv)
        parts.append(out.reshape(k, x.shape[0], *out.shape[1:]))  # (k, B, *out)
        moment_parts.append(fold_moments(output_moments(rv), k, x.shape[0]))
        marked = marked and is_function_space(rv)
    samples = parts[0] if len(parts) == 1 else torch.cat(parts)
    return samples, stack_moments(moment_parts, dim_cat=True), marked


def _sampled_value(out: object) -> bool:
    """Whether a model's output is a random variable whose value is a draw of ``y`` (not a
    distribution over function values, whose value is its mean)."""
    return isinstance(out, RandomVariable) and not is_function_space(out)


def _repeated(out: object, k: int) -> tuple[Tensor, dict[str, Tensor], bool]:
    """The output of a model with nothing stochastic as K equal samples, with its
    distribution's moments likewise."""

    def repeat(t: Tensor) -> Tensor:
        return t.unsqueeze(0).expand(k, *t.shape).contiguous()

    moments = {n: repeat(t) for n, t in output_moments(out).items()}
    return repeat(output_tensor(out)), moments, is_function_space(out)


def _normalizes_folded_batch(
    batch_norms: list[nn.Module], split: Split | None, h: object, members: int
) -> bool:
    """Whether one of ``batch_norms`` (the model's batch norms without running statistics:
    they normalise with the statistics of the batch they see) runs outside the trunk,
    where the folded call would normalise the K samples as one batch; a ``ValueError`` if
    the model's ensemble layers need the folded call."""
    if not batch_norms:
        return False
    inside: set[int] = set()
    parts = tuple(m for m, _ in h.outputs) if isinstance(h, Prefix) else ()
    for part in parts + (() if split is None else split.parts):
        inside.update(id(m) for m in part.modules())
    outside = [m for m in batch_norms if id(m) not in inside]
    if outside and members > 1:
        raise ValueError(
            f"predict: a {type(outside[0]).__name__} without running statistics "
            "(track_running_stats=False) after the first stochastic layer would normalise "
            "the K function samples as one batch, and this model's ensemble layers draw "
            "their members in that one vectorised call; give it running statistics"
        )
    return bool(outside)


def predict(
    model: nn.Module,
    x: Tensor,
    num_samples: int = 32,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    vectorized: bool = True,
    chunk_size: int | None = None,
    grad: bool = False,
    trunk: nn.Module | str | None = "auto",
    joint: bool = True,
) -> Predictive:
    """Draw ``num_samples`` function samples of ``model`` at ``x``.

    Vectorised (default): one call of ``model`` on the input repeated K times
    along its first dimension, with every Bayesian layer drawing K parameter
    samples at once (:func:`bayesian_layers.vectorized_samples`); the model must
    treat the first dimension as the batch (true of ``nn.Sequential`` models of
    dense, convolutional, dropout, normalisation-in-eval and activation layers).
    ``vectorized=False`` loops K calls instead, for any model.

    Layers with running statistics (batch norm; any ``torch.nn`` ``_NormBase``) run in
    eval mode for the duration of the call and get their mode back afterwards, so
    ``predict`` in training mode leaves their statistics untouched; one without running
    statistics (``track_running_stats=False``) normalises with the batch's own, so where
    one runs after the trunk ``predict`` loops K calls (as ``vectorized=False``). Layers whose
    class sets ``joint_over_batch = True`` (one draw over the whole batch, e.g.
    :class:`~bayesian_layers.layers.GaussianProcess`) get ``marginal_samples = True``
    meanwhile, so each row is drawn from its own marginal, which is all the
    per-row predictive needs (such a layer without that attribute makes ``predict``
    loop K separate calls); ``samples`` then keep no correlation across the batch.

    When the model returns a :class:`~bayesian_layers.RandomVariable` (it ends
    in a stochastic output layer), the moments of its distribution under each
    function sample are kept too: ``.mean``/``.variance`` for regression,
    ``.probs`` for ``Categorical``, ``OneHotCategorical`` and ``Bernoulli``.
    In the vectorised call that distribution has ``K * B`` batch rows; they are
    read as ``(K, B, ...)``. The returned :class:`Predictive` then decomposes
    the uncertainty (``aleatoric``/``epistemic``/``total``, or
    ``predictive_entropy``/``expected_entropy``/``mutual_information``).

    Ensemble layers whose class sets ``members_as_samples = True`` (BatchEnsemble, rank-1
    layers) compute each function sample with one member: ``num_samples`` must then be a
    multiple of their ``ensemble_size`` (sample ``k`` of ``K = E`` is member ``k``), the
    call is vectorised, and chunks hold a multiple of it. A deep ensemble
    (:class:`~bayesian_layers.ensemble.Ensemble`) is such a module: within a chunk of ``k``
    samples, sample ``j`` is member ``j * n // k``.

    Args:
        model: the model; its sampling mode applies (``"mean"`` gives K equal samples).
        x: input batch ``(B, *)``.
        num_samples: K.
        transform: applied to each output sample before the moments (e.g.
            ``lambda z: z.softmax(-1)`` for class probabilities); it does not
            touch the output distribution's moments.
        vectorized: batched calls (True) or a Python loop of K calls.
        chunk_size: function samples per batched call; ``None`` picks the largest
            count whose per-call temporaries (K weight draws, K activations) stay
            under :data:`CHUNK_BYTES`: past that, allocating and faulting in fresh
            memory costs more than vectorising saves. With ``trunk="prefix"`` the
            activations are read from the recorded outputs (each is copied per sample
            of a chunk; a chunk of one sample hands them over without copying). A model
            in ``"frozen"`` mode draws its K frozen functions in one call.
        grad: keep the autograd graph (default: run under ``torch.no_grad()``).
        trunk: the deterministic part of the model that runs once on ``x`` while the K
            samples fold only through the rest. ``"auto"`` (default): for an
            ``nn.Sequential``, its leading children that hold nothing stochastic (no
            Bayesian layer, no dropout or ``RReLU`` in training mode, no ensemble or
            Gaussian-process layer); another model with nothing stochastic runs once
            unless its own code draws from torch's default generator (then, and for
            other models, no trunk). A submodule (e.g.
            ``model.features``) declares the trunk of any model: its forward is
            called once on ``x`` and its output handed to the model's forward (which
            must call it exactly once per call, on ``x``); for an ``nn.Sequential`` a slice
            ``model[:i]`` works too. ``"prefix"``: any model (a ``transformers``
            model, one adapted by :func:`~bayesian_layers.lora`, a loop over
            ``nn.ModuleList`` blocks): one call on ``x`` runs until the first module
            that draws and records the outputs of the largest modules that finished
            before it (each called once, answering a ``(B, ...)`` tensor); the folded
            call finds them answering those outputs, so the K samples cost only the
            modules from the first draw on, and equal ``trunk=None``'s for a fixed seed.
            Not the default for models other than ``nn.Sequential``: a module of the
            prefix that draws noise in its own code would give all K samples its one
            draw. ``None``: no trunk. A trunk must be a deterministic function of its
            input: a module with randomness of its own that the checks above do not
            see (a custom noise layer) must not be in it.
        joint: keep each sample one function jointly over the batch where the
            estimator does (default). ``False`` asks only for each example's law, which
            is all that ``mean``, ``variance`` and the uncertainty decompositions read:
            a reparameterization or Kronecker-Laplace dense layer that is the first
            stochastic layer then draws output-space noise at the trunk's output (the
            examples of one sample become independent), about half the cost of K whole
            draws at a shared input of more rows than ``out_features``. Keep the default
            for anything that reads ``samples`` across examples (plots of function draws,
            joint acquisition functions such as BatchBALD, Thompson sampling).

    **Cost and exactness.** With the trunk run once, the K samples cost only the rest of
    the model; a model whose Bayesian part is its last layer predicts at close to one
    deterministic forward. Where the first stochastic layer of an ``nn.Sequential`` is
    dense, it draws the K samples at its shared input in a cheaper form with the same
    law. What one sample is:

    * reparameterization (and every whole-draw layer: convolutions, rank-1 members,
      ensembles, Laplace posteriors, frozen mode): an exact function sample, jointly over
      the batch. At a shared input of ``B <= in_features`` rows with ``B² <= 32 K``, the
      first dense layer draws its outputs from their exact joint law over the batch
      (:func:`~bayesian_layers.layers.estimators.shared_input.batch_joint_samples`)
      instead of K whole weights. With ``joint=False`` a first dense layer with a normal
      or Kronecker posterior draws each example's output from its exact law instead
      (:func:`~bayesian_layers.layers.estimators.shared_input.marginal_samples`): correct
      per example only;
    * Flipout and local reparameterization: correct per example only (dependence
      between the examples of one sample is not that of one function). For dense
      layers on 2-D inputs each example's output has its exact law under the
      posterior; for convolutions and sequences each output element has its exact
      marginal. In the predictive, Flipout's dense layers on 2-D inputs of fewer rows
      per sample than features draw output-space noise (that law, fewer numbers than
      K shared perturbations);
    * Gaussian-process layers with ``joint_over_batch``: each row from its marginal.

    Returns:
        A :class:`Predictive` with ``samples`` of shape ``(K, B, *out)`` and, for a
        random-variable output, ``output_mean``/``output_variance`` or
        ``output_probs`` of shape ``(K, B, ...)``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(bl.layers.LinearFlipout(3, 8), torch.nn.ReLU(),
        ...                             bl.layers.LinearFlipout(8, 2))
        >>> pred = bl.predict(model, torch.randn(5, 3), num_samples=16)
        >>> pred.samples.shape, pred.mean.shape
        (torch.Size([16, 5, 2]), torch.Size([5, 2]))

        A deterministic feature extractor runs once, whatever K is:

        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(),
        ...                             bl.layers.LinearReparameterization(8, 2))
        >>> bl.predict(model, torch.randn(5, 3), num_samples=64).samples.shape
        torch.Size([64, 5, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"predict expected `model` an nn.Module, got {type(model).__name__} (post-process "
            "the output with transform=)"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"predict expected `num_samples` an int >= 1, got {num_samples!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"predict expected `chunk_size` an int >= 1 or None, got {chunk_size!r}")
    if not isinstance(joint, bool):
        raise TypeError(f"predict expected `joint` a bool, got {type(joint).__name__}")
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise TypeError(f"predict expected a batched Tensor input, got {type(x).__name__}")
    modules = list(model.modules())
    members = _members_per_call(modules)
    if num_samples % members:
        raise ValueError(
            f"predict: each function sample of this model is one member of its ensemble "
            f"layers (ensemble_size {members}); expected `num_samples` a multiple of "
            f"{members}, got {num_samples}"
        )
    joint_layers = _joint_modules(modules)
    if vectorized and any(not hasattr(m, "marginal_samples") for m in joint_layers):
        vectorized = False  # a joint draw would tie the K folded copies into one function
    if not vectorized and members > 1:
        raise ValueError(
            "predict: a model with ensemble layers draws its members as function samples in "
            "one vectorised call; vectorized=False (or a joint-over-the-batch layer without "
            "marginal samples) cannot"
        )
    split = split_model(model, trunk)
    bayesian = [m for m in modules if isinstance(m, BayesianLayer)]
    # under torch.inference_mode the call runs in no-grad mode instead: the trunk's
    # recorded outputs and the per-call moments store check tensors' in-place versions,
    # which inference tensors do not keep; an inference input is copied out of it once
    grad = grad and torch.is_grad_enabled()
    with (
        torch.inference_mode(False),  # a no-op outside inference mode
        torch.set_grad_enabled(grad),
        _marginal_samples(joint_layers if vectorized else []),
        normalization_in_eval(model),
        overriding(bayesian, "predictive", PredictiveCall(marginal=not joint, store={})),
    ):
        if x.is_inference():
            x = x.clone()
        h = None if split is None else split.trunk(x)  # the deterministic part, once
        if isinstance(h, Prefix):  # trunk="prefix": the model ran until its first draw
            if h.output is not None:  # ... and finished without one
                split, h = Split(model, model, whole=True), h.output
            elif not h.outputs:
                split, h = None, None
        # no cut for a trunk answering a tuple or a distribution, nor for a model with
        # nothing stochastic that we know of returning a sampled value (a module of its own)
        if split is not None and (
            _sampled_value(h) if split.whole else not isinstance(h, (Tensor, Prefix))
        ):
            split, h = None, None
        if vectorized and not (split is not None and split.whole):
            batch_norms = batch_statistics_layers(modules)
            vectorized = not _normalizes_folded_batch(batch_norms, split, h, members)
        if split is not None and split.whole:
            samples, moments, marked = _repeated(h, num_samples)
        elif vectorized:
            samples, moments, marked = _vectorized(
                model, x, num_samples, chunk_size, members, split, h, modules
            )
        else:
            outs = [_call(model, split, x, h, 1) for _ in range(num_samples)]
            samples = torch.stack([output_tensor(o) for o in outs])
            moments = stack_moments([output_moments(o) for o in outs], dim_cat=False)
            marked = all(is_function_space(o) for o in outs)
        if transform is not None:
            samples = transform(samples)
    # mean and variance on first use: a caller reading only the samples or the output
    # moments does not pay for them
    return Predictive(samples, **moments, function_space=marked and bool(moments))
