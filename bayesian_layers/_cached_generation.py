"""The key-value-cache path of :func:`bayesian_layers.generate` (private): K frozen
function samples of a ``transformers`` causal language model folded into the batch, and,
with ``trunk="prefix"``, the layers before the first stochastic module run once per step
for all K samples, their key-value cache kept once (``B`` rows, not ``K B``).

How the sharing works, per step: one call on the ``B`` prompts runs until the first
module that draws (:func:`~bayesian_layers._prefix.record_prefix`); the cache layers it
grew are the shared ones. For the folded call of the K samples those layers show their
state before the step (so the model's own bookkeeping, the positions and the mask it
reads off the cache, sees the step's start), the recorded modules answer their outputs,
and afterwards the shared layers get their grown state back. The shared layers must be
the same at every step and the folded call must not touch them; if the first step finds
no prefix to share, nothing is shared. ``transformers``' ``DynamicCache`` of
``DynamicLayer``\\ s (full attention) is supported; any other cache runs unshared.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ._predictive_moments import output_tensor
from ._prefix import fold_samples, record_prefix
from .sampling import frozen_sample, vectorized_samples

__all__ = ["generate_cached", "cache_keyword", "parameters"]

#: one cache layer's state: (keys, values, is_initialized)
State = tuple[Any, Any, bool]


def parameters(model: nn.Module) -> set[str]:
    """The names ``model.forward`` takes (empty where it has no signature to read)."""
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # a builtin or C forward
        return set()


def cache_keyword(model: nn.Module) -> str | None:
    """The keyword that hands ``model.forward`` its key-value cache (``cache`` in
    ``transformers`` 5, ``past_key_values`` before), or ``None`` if it takes none."""
    params = parameters(model)
    if "use_cache" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


class _Step(nn.Module):
    """One call of the language model with its cache: token ids ``(B', T')`` -> the last
    position's logits ``(B', vocab)``; it keeps the cache the model returns."""

    def __init__(self, model: nn.Module, cache: object | None) -> None:
        super().__init__()
        self.model, self.cache = model, cache
        keyword = cache_keyword(model)
        assert keyword is not None  # generate checked
        self.keyword = keyword
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters(model) else {}

    def forward(self, ids: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {"use_cache": True, **self.extra}
        if self.cache is not None:
            kwargs[self.keyword] = self.cache
        out = self.model(ids, **kwargs)
        self.cache = _returned_cache(out)
        return output_tensor(out)[:, -1]  # (B', V)


def generate_cached(
    model: nn.Module, tokens: Tensor, k: int, n: int, pick: Callable[[Tensor], Tensor], share: bool
) -> None:
    """Run ``n`` steps: ``pick`` gets the K samples' last logits ``(K B, vocab)`` and
    returns the chosen tokens ``(B, 1)``. ``share``: the prefix of each step runs once."""
    cache = _shareable_cache(model) if share else None
    step, shared, ids = _Step(model, cache), None, tokens  # (B, T), then (B, 1)
    with frozen_sample(model), vectorized_samples(model, k):
        for _ in range(n):
            if cache is None:
                logits = step(fold_samples(ids, k))  # (K B, V), sample-major
            else:
                logits, shared = _shared_step(step, cache, ids, k, shared)
                if not shared:  # the first step found nothing to share
                    cache = None
            ids = pick(logits)


def _shared_step(
    step: _Step, cache: Any, ids: Tensor, k: int, shared: list[int] | None
) -> tuple[Tensor, list[int]]:
    """One step with the prefix run once: the logits ``(K B, V)`` and the indices of the
    shared cache layers (``[]``: nothing shared; the step then ran unshared)."""
    layers = cache.layers
    before = [_state(layer) for layer in layers]
    prefix = record_prefix(step, ids)
    grown = [i for i, layer in enumerate(layers) if layer.keys is not before[i][0]]
    if shared is None and prefix.output is None and not prefix.outputs:
        for i in grown:  # nothing to share: undo, run unshared from now on
            _set_state(layers[i], before[i])
        return step(fold_samples(ids, k)), []
    if shared is not None and (grown != shared or (prefix.output is None and not prefix.outputs)):
        raise RuntimeError(
            "generate(trunk='prefix'): the modules before the first draw grew other cache "
            f"layers at this step ({grown}) than at the first ({shared}), or left nothing to "
            "share (code drew from torch's generator before the first draw); pass trunk=None"
        )
    if prefix.output is not None:  # nothing drew: the whole model ran once on B rows
        return fold_samples(prefix.output, k), grown
    after = {i: _state(layers[i]) for i in grown}
    for i in grown:  # the model's bookkeeping reads the step's start off these
        _set_state(layers[i], before[i])
    try:
        logits = prefix.call(step, ids, k)
    finally:
        touched = [i for i in grown if layers[i].keys is not before[i][0]]
        for i in grown:
            _set_state(layers[i], after[i])
    if touched:
        raise RuntimeError(
            f"generate(trunk='prefix'): the folded call ran the shared cache layers {touched} "
            "again (a module before the first draw was not recorded); pass trunk=None"
        )
    return logits, grown


def _shareable_cache(model: nn.Module) -> object | None:
    """A fresh ``transformers`` ``DynamicCache`` for ``model`` if all its layers are plain
    ``DynamicLayer``\\ s (full attention), else ``None`` with a warning."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        reason = f"no transformers DynamicCache for it ({err})"
    else:
        if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            return cache
        reason = "its cache has no layers yet, or layers other than full-attention DynamicLayers"
    warnings.warn(
        f"generate(trunk='prefix'): {type(model).__name__} keeps one cache per function "
        f"sample: {reason}",
        stacklevel=4,
    )
    return None


def _state(layer: Any) -> State:
    return layer.keys, layer.values, layer.is_initialized


def _set_state(layer: Any, state: State) -> None:
    layer.keys, layer.values, layer.is_initialized = state


def _returned_cache(out: object) -> object:
    """The key-value cache a ``transformers`` output carries."""
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(
        f"generate(cache=True): the model's output ({type(out).__name__}) carries no "
        "`cache` or `past_key_values`; pass cache=False"
    )
