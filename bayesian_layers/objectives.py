"""Collecting regularizers from a model and the ELBO convention, with the training-set
size ``N`` given as a count or read from the training data, and checked once per model."""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Sized
from numbers import Integral, Real
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SubsetRandomSampler

__all__ = ["losses", "elbo_loss", "KLScalingWarning", "KL_DOMINANCE_FACTOR"]

#: What ``num_examples`` may be: the training-set size ``N``, the training ``DataLoader``,
#: or the training data set (anything with ``len``).
NumExamples = int | DataLoader[Any] | Dataset[Any] | Sized

#: The scaled KL ``KL / N`` may exceed ``max(nll, 1)`` by this factor before
#: :func:`elbo_loss` warns. On scikit-learn's digits (MLP 64-256-10 of ``LinearFlipout``
#: layers, the library defaults, batches of 64) the ratio is 25-29 at initialisation and
#: at most 57 in 30 epochs with the right ``N = 1347``, and 520-613 at initialisation
#: (661-1196 later) with ``N = 64``, the batch size.
KL_DOMINANCE_FACTOR = 100.0
_MAX_CHECKS = 3  # distinct (N, batch size) pairs checked per model; later calls check nothing


class KLScalingWarning(UserWarning):
    """The ``N`` given to :func:`elbo_loss` looks wrong, or cannot be known for sure.

    Raised (as a warning, once per model and ``N``) when ``N`` is smaller than a batch,
    when the scaled KL ``KL / N`` exceeds the negative log-likelihood by more than
    :data:`KL_DOMINANCE_FACTOR` at the first call, or when data-parallel ranks make
    ``len(dataset)`` ambiguous. Silence a deliberate setup with
    ``warnings.filterwarnings("ignore", category=bl.KLScalingWarning)``.

    Example:
        >>> import bayesian_layers as bl
        >>> issubclass(bl.objectives.KLScalingWarning, UserWarning)
        True
    """


def losses(module: nn.Module) -> list[Tensor]:
    """Every regularizer term of every submodule of ``module`` (itself included).

    Any module whose class defines a ``losses`` property contributes; a module
    that appears several times in the tree is counted once.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 2)
        >>> model = torch.nn.Sequential(layer, torch.nn.ReLU(), layer)
        >>> len(bl.losses(model))
        1
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"losses expected an nn.Module, got {type(module).__name__}")
    out: list[Tensor] = []
    for m in module.modules():  # modules() visits each module once
        if isinstance(getattr(type(m), "losses", None), property):
            _refuse_sharded(m)
            out.extend(m.losses)  # type: ignore[arg-type]
    return out


def _refuse_sharded(module: nn.Module) -> None:
    """A module with sharded (DTensor) parameters has per-shard terms: name the fix."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    if dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters(False)):
        raise TypeError(
            f"losses found sharded (DTensor) parameters on {type(module).__name__} (FSDP2 "
            "or tensor parallelism), whose terms cannot join a plain loss; use "
            "bl.distributed.kl_divergence(model), which reduces the KL over the shards, "
            "or wrap the model in bl.distributed.WithKL"
        )


# ------------------------------------------------------------ N from the training data
class _DataSize(NamedTuple):
    """``num_examples`` resolved: the count, the batch size if known, and where it came from
    (``"int"``; ``"global"``: a loader with a DistributedSampler; ``"local"``: any other
    loader or a data set, the data this process sees)."""

    n: int
    batch_size: int | None
    origin: str


def _resolve_num_examples(value: object) -> _DataSize:
    """``N`` from an int, a ``DataLoader`` or a sized data set (see :func:`elbo_loss`)."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(
                f"elbo_loss expected `num_examples` to be a positive int, got {value!r}"
            )
        return _DataSize(int(value), None, "int")
    if isinstance(value, DataLoader):
        n = _dataset_len(value.dataset, "the DataLoader's dataset")
        samplers = (value.sampler, getattr(value.batch_sampler, "sampler", None))
        batch = value.batch_size or getattr(value.batch_sampler, "batch_size", None)
        batch = batch if isinstance(batch, int) else None
        if any(isinstance(s, DistributedSampler) for s in samplers):
            return _DataSize(n, batch, "global")  # the dataset is every rank's data
        subset = next((s for s in samplers if isinstance(s, SubsetRandomSampler)), None)
        if subset is not None:  # a loader over part of its dataset (a train/val split)
            n = _positive_len(_len(subset), "the DataLoader's SubsetRandomSampler")
        return _DataSize(n, batch, "local")
    if isinstance(value, (Tensor, np.ndarray, str, bytes, bool, float)) or not isinstance(
        value, (Dataset, Sized)
    ):
        raise TypeError(
            "elbo_loss expected `num_examples` to be an int (the training-set size N), the "
            "training DataLoader or a training data set with len(), got "
            f"{type(value).__name__} {value!r:.60}"
        )
    return _DataSize(_dataset_len(value, "the dataset"), None, "local")


@torch.compiler.assume_constant_result
def _len(sized: Any) -> int:
    """``len(sized)``, read once while ``torch.compile`` traces (Dynamo does not trace
    into ``torch.utils.data``) and kept as a constant of the graph."""
    return len(sized)


def _dataset_len(dataset: object, what: str) -> int:
    try:
        n = _len(dataset)
    except TypeError:
        raise TypeError(
            f"elbo_loss could not take len() of {what} ({type(dataset).__name__}, e.g. an "
            "IterableDataset without __len__); pass the training-set size N as an int: "
            "elbo_loss(nll, model, N)"
        ) from None
    return _positive_len(n, what)


def _positive_len(n: int, what: str) -> int:
    if n <= 0:
        raise ValueError(f"elbo_loss expected {what} to hold examples, got len() = {n}")
    return n


# ------------------------------------------------------------ the plausibility checks
class _NoModel:
    """The registry key of calls without a model (``bl.distributed.elbo_loss(kl=...)``)."""


_NO_MODEL = _NoModel()
_CHECKED: weakref.WeakKeyDictionary[object, set[tuple[int, int | None]]] = (
    weakref.WeakKeyDictionary()
)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _scalar(t: Tensor) -> float | None:
    """``t``'s mean as a float, or ``None`` where it cannot be read (meta, fake, vmapped)."""
    if t.device.type == "meta":
        return None
    try:
        return float(t.detach().float().mean())
    except (RuntimeError, NotImplementedError):
        return None


def _check_scaling(
    model: object,
    size: _DataSize,
    nll: Tensor,
    kl: Tensor | None,
    *,
    batch_size: int | None = None,
    data_parallel: int | Callable[[], int] | None = None,
    ambiguous: bool = False,
    fix: str = "pass the global N as an int, or use bl.distributed.elbo_loss with "
    "per_rank=True (shards) or per_rank=False (every rank reads all the data)",
) -> None:
    """Warn :class:`KLScalingWarning` for an implausible ``N`` (see :func:`elbo_loss`).

    Runs at the first call per ``(model, N, batch size)`` (at most ``_MAX_CHECKS`` per
    model): the KL check reads two scalars, one device sync per check. Skipped while
    ``torch.compile`` traces. ``data_parallel`` (the ranks, for an ambiguous ``N``) may be
    a function, called only when a check runs; ``None`` is the world size.
    """
    if torch.compiler.is_compiling():
        return
    seen = _CHECKED.setdefault(model if model is not None else _NO_MODEL, set())
    batch = batch_size if batch_size is not None else size.batch_size
    key = (size.n, batch)
    if key in seen or len(seen) >= _MAX_CHECKS:
        return
    seen.add(key)
    n = size.n
    if ambiguous and size.origin == "local":
        ranks = data_parallel() if callable(data_parallel) else data_parallel
        ranks = _world_size() if ranks is None else ranks
        if ranks > 1:
            _warn(
                f"elbo_loss took N = len(dataset) = {n} from a data set this process reads "
                f"without a DistributedSampler, over {ranks} data-parallel ranks: if each "
                f"rank reads its own shard the training set is about {ranks * n}; {fix}"
            )
    if batch is not None and n < batch:
        _warn(
            f"elbo_loss got N = {n} training examples, fewer than a batch ({batch}): N is "
            "the size of the whole training set, not of a batch; the KL is weighted "
            f"{batch / n:.3g}x too much or more"
        )
    if kl is None:
        return
    kl_value, nll_value = _scalar(kl), _scalar(nll)
    if kl_value is None or nll_value is None or not math.isfinite(kl_value + nll_value):
        return
    ratio = kl_value / n / max(nll_value, 1.0)
    if ratio > KL_DOMINANCE_FACTOR:
        _warn(
            f"elbo_loss: the KL per example, KL / N = {kl_value / n:.4g} with N = {n}, is "
            f"{ratio:.3g}x the negative log-likelihood (max(nll, 1) = "
            f"{max(nll_value, 1.0):.4g}); the posterior will be pulled to the prior. Is N "
            "the number of training examples (not the batch size)? If it is, consider "
            "kl_weight < 1 or a warm-up (kl_weight=bl.kl_warmup(step, steps))"
        )


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, KLScalingWarning, stacklevel=4)  # the caller of elbo_loss


def _kl_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"elbo_loss expected `kl_weight` to be a number, got {type(value).__name__}"
        )
    weight = float(value)
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(
            f"elbo_loss expected `kl_weight` to be a finite non-negative number, got {value!r}"
        )
    return weight


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"elbo_loss expected `{name}` to be an int >= {minimum}, got {value!r}")
    return int(value)


def _batch_size(value: object) -> int | None:
    return None if value is None else _count("batch_size", value, 1)


def elbo_loss(
    nll_mean: Tensor,
    model: nn.Module,
    num_examples: NumExamples,
    *,
    kl_weight: float = 1.0,
    batch_size: int | None = None,
) -> Tensor:
    r"""The negative ELBO per example: ``nll_mean + kl_weight * sum(losses(model)) / N``.

    .. math:: \mathcal{L} = \bar\ell_B + w \, \mathrm{KL}(q \,\|\, p) / N

    ``nll_mean`` is the mini-batch mean negative log-likelihood; dividing the KL by
    the training-set size ``N`` makes the sum over an epoch's batches the full
    negative ELBO divided by ``N``. ``kl_weight < 1`` tempers the KL (a "cold"
    posterior), which often helps small data sets where full-KL variational
    Bayes is underconfident; :func:`~bayesian_layers.kl_schedule.kl_warmup` ramps it up.

    ``N`` comes from ``num_examples``: an int; the training ``DataLoader``, whose
    ``len(loader.dataset)`` it takes (the global size with a ``DistributedSampler``,
    never multiplied; ``len(sampler)`` with a ``SubsetRandomSampler``); or the training
    data set (anything with ``len``). A data set without ``len`` (an ``IterableDataset``)
    raises ``TypeError``: pass ``N`` as an int. Under ``torch.distributed`` with several
    ranks, a loader without a ``DistributedSampler`` (or a bare data set) may be the
    whole training set or this rank's shard: ``N = len(dataset)`` is used and a
    :class:`KLScalingWarning` says so; pass the global ``N`` as an int, or use
    :func:`bayesian_layers.distributed.elbo_loss` with ``per_rank=True`` (shards) or
    ``per_rank=False`` (every rank reads all the data).

    Checks, once per model and ``N`` (at most 3 checks per model, and none while
    ``torch.compile`` traces), warning :class:`KLScalingWarning`: ``N`` smaller than the
    batch size (the loader's, or ``batch_size``); and, at the first call, ``KL / N``
    more than :data:`KL_DOMINANCE_FACTOR` (100) times ``max(nll_mean, 1)`` — the mark of
    the KL divided by the batch size instead of ``N``. The second check reads two
    scalars from the device once; ``kl_weight`` is left out of it (a warm-up starts at
    0, and a wrong ``N`` is wrong at any weight).

    Args:
        nll_mean: the mean negative log-likelihood over the batch, a scalar tensor.
        model: the model whose :func:`losses` (the KL terms) to add.
        num_examples: ``N``, the training-set size: an int > 0, the training
            ``DataLoader``, or the training data set.
        kl_weight: tempers the KL (1 is the ELBO); finite and >= 0.
        batch_size: the batch size, for the ``N >= batch size`` check when ``N`` is an
            int (a loader's own batch size is used otherwise).

    Returns:
        A scalar tensor, ``nll_mean`` itself when the model has no KL terms.

    :func:`bayesian_layers.distributed.elbo_loss` takes the same arguments, plus
    keywords for data and tensor parallelism (and ``global_batch_size`` for a sum of
    per-example NLLs).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.randn(500, 3), torch.randn(500, 1))
        >>> loader = DataLoader(data, batch_size=50, shuffle=True)
        >>> model = bl.layers.LinearReparameterization(3, 1)
        >>> x, y = next(iter(loader))
        >>> nll_mean = (model(x) - y).square().mean()
        >>> loss = bl.elbo_loss(nll_mean, model, loader)  # N = len(data) = 500
        >>> torch.equal(loss, bl.elbo_loss(nll_mean, model, 500))
        True
    """
    size = _resolve_num_examples(num_examples)
    weight = _kl_weight(kl_weight)
    batch = _batch_size(batch_size)
    terms = losses(model)
    kl = torch.stack(terms).sum() if terms else None
    _check_scaling(model, size, nll_mean, kl, batch_size=batch, ambiguous=True)
    if kl is None:
        return nll_mean
    return nll_mean + (weight / size.n) * kl
