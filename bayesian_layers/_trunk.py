"""The deterministic trunk of a model: the part before its first stochastic module, run
once by :func:`bayesian_layers.predict` while the K function samples fold only through
the rest (private: :func:`~bayesian_layers.predict`'s ``trunk`` argument is the API)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from .layers.base import BayesianLayer

__all__ = ["Split", "TrunkError", "is_stochastic", "split_model"]


class TrunkError(ValueError):
    """A declared trunk that the model's forward does not call exactly once."""


def is_stochastic(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule draws randomness that ``predict`` must fold:
    a Bayesian layer not in ``"mean"`` mode, torch dropout or ``RReLU`` in training mode,
    an ensemble whose members are function samples, or a layer drawing jointly over the
    batch. A
    module's class may say it with ``stochastic_forward``: ``True`` for a forward that
    samples (a stochastic output layer), ``False`` for one that draws nothing whatever it
    holds (:class:`~bayesian_layers.layers.SNGPHead`)."""
    declared = getattr(type(module), "stochastic_forward", None)
    if declared is not None:
        return bool(declared)
    return draws(module) or any(is_stochastic(child) for child in module.children())


def draws(module: nn.Module) -> bool:
    """Whether ``module`` itself (not counting its submodules) draws: the tests of
    :func:`is_stochastic` without the recursion."""
    cls = type(module)
    declared = getattr(cls, "stochastic_forward", None)
    if declared is not None:
        return bool(declared)
    if isinstance(module, BayesianLayer) and module.sampling != "mean":
        return True
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.RReLU)):  # AlphaDropout too
        return module.training  # dropout and RReLU draw in training mode
    return bool(
        getattr(cls, "members_as_samples", False) or getattr(cls, "joint_over_batch", False)
    )


def drawing_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that draw (:func:`draws`), skipping what a module whose
    class declares ``stochastic_forward`` holds."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if draws(m):
            out.append(m)
        if getattr(type(m), "stochastic_forward", None) is None:
            for child in m.children():
                visit(child)

    visit(model)
    return out


@dataclass
class Split:
    """A model cut into a trunk run once on the input and a head run on K folded copies
    of the trunk's output.

    Attributes:
        trunk: ``trunk(x) -> h`` on the ``(B, ...)`` input.
        head: ``head(h_folded) -> out`` on ``(K * B, ...)`` sample-major copies of ``h``.
        first: the head's first module when it is a dense Bayesian layer that can draw
            the K samples at the shared ``h`` itself (``shared_input_samples``); the
            head then starts after it (``rest``).
        rest: the head without ``first``.
        whole: nothing in the model is stochastic: ``trunk`` is the whole model, run
            once, and the K samples are its output repeated (``head`` is unused).
        cached: for a declared submodule, the folded trunk output its substituted
            forward answers (``cached[0]``); ``head`` then runs the whole model on the
            folded input. ``None`` for the parts of an ``nn.Sequential``.
        parts: the modules that ``trunk`` runs (only on the ``(B, ...)`` input).

    A ``trunk`` answering a :class:`~bayesian_layers._prefix.Prefix` (``trunk="prefix"``)
    recorded the modules that finish before the first draw; ``head`` is then the model,
    run on the folded input with them answering their outputs.
    """

    trunk: Callable[[Tensor], Any]
    head: Callable[[Any], Any]
    first: nn.Module | None = None
    rest: Callable[[Any], Any] | None = None
    whole: bool = False
    cached: list[Any] | None = None
    parts: tuple[nn.Module, ...] = ()


def _chain(modules: list[nn.Module]) -> Callable[[Any], Any]:
    """``modules`` applied in order, as ``nn.Sequential`` would (without building one)."""

    def run(x: Any) -> Any:
        for m in modules:
            x = m(x)
        return x

    return run


def _sequential_split(model: nn.Sequential, cut: int) -> Split:
    children = list(model)
    trunk, head = _chain(children[:cut]), _chain(children[cut:])
    first = children[cut] if cut < len(children) else None
    parts = tuple(children[:cut])
    if first is not None and _draws_shared(first):
        return Split(trunk, head, first, _chain(children[cut + 1 :]), parts=parts)
    return Split(trunk, head, parts=parts)


def _draws_shared(module: nn.Module) -> bool:
    """Whether ``module`` can draw K samples at a shared input itself (and no hook needs
    to see its call on the folded input)."""
    return hasattr(module, "shared_input_samples") and not _hooked(module)


def _plain_sequential(model: nn.Module) -> TypeGuard[nn.Sequential]:
    """An ``nn.Sequential`` whose call is its children in order: its own ``forward``, no
    hook on it (a subclass's forward, or a hook, would be skipped by running the parts)."""
    return (
        isinstance(model, nn.Sequential)
        and type(model).forward is nn.Sequential.forward
        and not _hooked(model)
    )


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would see ``module``'s call (the shared-input draw skips
    ``__call__``, so such a layer is called on the folded input instead)."""
    from torch.nn.modules import module as torch_module

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
    )


def _auto_cut(model: nn.Sequential) -> int:
    """The number of leading children with nothing stochastic."""
    for i, child in enumerate(model):
        if is_stochastic(child):
            return i
    return len(model)


def _prefix_length(model: nn.Sequential, trunk: nn.Sequential) -> int | None:
    children = list(model)
    part = list(trunk)
    if len(part) > len(children):
        return None
    same = all(a is b for a, b in zip(part, children[: len(part)], strict=True))
    return len(part) if same else None


@contextmanager
def _substituted(
    module: nn.Module,
    value: Callable[[], Any],
    check: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
) -> Iterator[list[int]]:
    """``module(...)`` answers ``value()`` meanwhile; the list counts the calls.
    ``check``, if given, sees the arguments of each call first (and may raise)."""
    calls = [0]

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise TrunkError(
                f"predict: the trunk ({type(module).__name__}) was called twice in one "
                "forward pass of the model; a trunk must be called once per call (pass "
                "trunk=None)"
            )
        if check is not None:
            check(args, kwargs)
        return value()

    own = module.__dict__.get("forward")  # an instance attribute of its own, kept
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def _declared_split(model: nn.Module, trunk: nn.Module) -> Split:
    if trunk is model:
        raise ValueError("predict expected `trunk` to be a part of the model, got the model")
    if is_stochastic(trunk):
        raise ValueError(
            f"predict expected a deterministic `trunk`, got a {type(trunk).__name__} that "
            "holds a stochastic module (a Bayesian layer, dropout or RReLU in training mode, an "
            "ensemble or a Gaussian-process layer)"
        )
    if not any(m is trunk for m in model.modules()):
        raise ValueError(
            f"predict expected `trunk` to be a submodule of the model (or, for an "
            f"nn.Sequential model, a slice of its first children), got a "
            f"{type(trunk).__name__} that is neither"
        )
    cached: list[Any] = []

    def head(x_folded: Any) -> Any:
        def is_x(value: Any) -> bool:
            if value is x_folded:
                return True
            if not isinstance(value, Tensor) or value.shape != x_folded.shape:
                return False
            if value.dtype == x_folded.dtype:
                return torch.allclose(value, x_folded, rtol=0, atol=0, equal_nan=True)
            # integer ids cast to another integer type (``emb(x.long())``) are still x; a
            # cast to or from a float changes what the trunk computes
            integers = not any(t.is_floating_point() or t.is_complex() for t in (value, x_folded))
            return integers and torch.equal(value.long(), x_folded.long())

        def on_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # the trunk ran once on x: its output stands for a call on x (folded)
            if any(is_x(a) for a in (*args, *kwargs.values())):
                return
            raise TrunkError(
                f"predict: the model calls the trunk ({type(trunk).__name__}) on something "
                "other than its input x (the output of an earlier module, say); a declared "
                "trunk must be the first module the model applies to x (pass "
                "trunk='prefix' or None)"
            )

        with _substituted(trunk, lambda: cached[0], on_input) as calls:
            out = model(x_folded)
        if calls[0] != 1:
            raise TrunkError(
                f"predict: the model did not call the trunk ({type(trunk).__name__}); "
                "pass a submodule that its forward calls once, or trunk=None"
            )
        return out

    return Split(trunk, head, cached=cached, parts=(trunk,))


def split_model(model: nn.Module, trunk: object) -> Split | None:
    """The split that ``predict(..., trunk=trunk)`` uses, or None for no trunk.

    Args:
        model: the model.
        trunk: ``"auto"`` (an ``nn.Sequential``'s leading children with nothing
            stochastic, the whole of it when nothing in it is; no trunk for other
            models), ``None`` (no trunk), a submodule of
            the model, or for an ``nn.Sequential`` a slice ``model[:i]``.
    """
    if trunk is None:
        return None
    if isinstance(trunk, str):
        if trunk not in ("auto", "prefix"):
            raise ValueError(
                f"predict expected `trunk` to be 'auto', 'prefix', None or an nn.Module, "
                f"got {trunk!r}"
            )
        if (trunk == "prefix" and not draws(model)) or (
            not _plain_sequential(model) and not is_stochastic(model)
        ):  # a model with nothing stochastic runs once, unless its own code draws
            from ._prefix import record_prefix

            return Split(lambda x: record_prefix(model, x), model)
        if not _plain_sequential(model):
            return None
        cut = _auto_cut(model)
        if cut == len(model):  # nothing stochastic: one call
            return Split(model, model, whole=True) if cut else None
        if cut == 0 and not _draws_shared(model[0]):
            return None
        return _sequential_split(model, cut)
    if not isinstance(trunk, nn.Module):
        raise TypeError(
            f"predict expected `trunk` to be 'auto', 'prefix', None or an nn.Module, got "
            f"{type(trunk).__name__}"
        )
    if _plain_sequential(model) and isinstance(trunk, nn.Sequential):
        prefix = _prefix_length(model, trunk)
        if prefix is not None:
            if is_stochastic(trunk):
                return _declared_split(model, trunk)  # raises the error of a stochastic trunk
            return _sequential_split(model, prefix)
    return _declared_split(model, trunk)
