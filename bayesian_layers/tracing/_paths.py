"""Traced names of layer weights: module paths, :func:`name_scope`, :func:`module_names`.

Private: the public names are re-exported by :mod:`bayesian_layers.tracing`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ._state import thread_state as _local


# ``_local.frames``: the modules whose calls are open in the trace, outermost first;
# ``_local.frame_names``: the paths of every module under ``frames[0]``;
# ``_local.drawn``: traced weight name -> (layer, param), for the outermost trace.
def reset_frames() -> None:
    _local.frames = []
    _local.frame_names = {}
    _local.drawn = {}


def enter_module(module: nn.Module, args: Any) -> None:
    if not getattr(_local, "stack", None):
        return
    frames = getattr(_local, "frames", None)
    if not frames:  # the outermost module called in the trace names every module below it
        _local.frame_names = {m: n for n, m in module.named_modules()}
        frames = _local.frames = []
    frames.append(module)


def exit_module(module: nn.Module, args: Any, output: Any) -> None:
    frames = getattr(_local, "frames", None)
    if frames and frames[-1] is module:
        frames.pop()


def _relative_path(module: nn.Module) -> str | None:
    """``module``'s path in the innermost :func:`module_names` root holding it, else
    under the outermost module called in the trace; None when neither holds it."""
    for names in reversed(getattr(_local, "roots", ())):
        prefix = names.get(module)
        if prefix is not None:
            return prefix
    if getattr(_local, "frames", None):
        return _local.frame_names.get(module)
    return None


def module_path(module: nn.Module, param: str) -> str:
    """``param``'s traced name: the :func:`name_scope` prefixes, then the path of
    ``module`` (see :func:`module_names`), then ``param``, joined by dots.

    Within one trace a name belongs to one ``(module, param)``: a different layer's
    draw reaching a name already drawn raises ``ValueError`` (two random variables
    would be recorded and conditioned as one).
    """
    parts = list(getattr(_local, "scopes", ()))
    prefix = _relative_path(module)
    if prefix:
        parts.append(prefix)
    parts.append(param)
    name = ".".join(parts)
    drawn = getattr(_local, "drawn", None)
    if drawn is not None and getattr(_local, "stack", None):
        owner, owner_param = drawn.setdefault(name, (module, param))
        if owner is not module or owner_param != param:
            raise ValueError(
                f"{type(module).__name__} draws its {param!r} under the traced name {name!r}, "
                f"which another layer ({type(owner).__name__}, its {owner_param!r}) already "
                "drew in this trace: two random variables cannot share a name. Call the "
                'modules inside `with bl.tracing.name_scope("encoder"):`-style blocks, '
                "from one parent module, or under `bl.tracing.module_names(parent)`"
            )
    return name


@contextmanager
def name_scope(prefix: str) -> Iterator[None]:
    """Context: the traced names of layer weights drawn inside start with ``prefix.``.

    For programs that call several top-level modules whose module paths coincide
    (two ``nn.Sequential`` models both name their first weight ``"0.weight"``).
    Scopes nest (``"outer.inner.0.weight"``) and are thread-local; names given to
    random variables explicitly (``bl.Normal(..., name="z")``) are left as given.

    Args:
        prefix: a non-empty name, dots allowed inside (``"vae.encoder"``).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> enc = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2))
        >>> dec = torch.nn.Sequential(bl.layers.LinearReparameterization(2, 3))
        >>> with bl.tape() as t:
        ...     with bl.tracing.name_scope("enc"):
        ...         h = enc(torch.randn(1, 3))
        ...     with bl.tracing.name_scope("dec"):
        ...         _ = dec(h)
        >>> list(t)
        ['enc.0.weight', 'dec.0.weight']
    """
    if not isinstance(prefix, str):
        raise TypeError(
            f"name_scope expected `prefix` to be a non-empty str, got {type(prefix).__name__}"
        )
    if not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(
            "name_scope expected `prefix` to be a non-empty name without leading or "
            f"trailing dots, got {prefix!r}"
        )
    scopes = getattr(_local, "scopes", None)
    if scopes is None:
        scopes = _local.scopes = []
    saved = list(scopes)
    scopes.append(prefix)
    try:
        yield
    finally:
        scopes[:] = saved


@contextmanager
def module_names(root: nn.Module, prefix: str = "") -> Iterator[None]:
    """Context: name layer weights by their path in ``root`` (plus ``prefix``).

    For programs that call several top-level modules (an encoder, then a decoder),
    whose weights would otherwise each be named from their own root
    (``"0.weight"`` twice).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.ModuleDict({
        ...     "encoder": torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2)),
        ...     "decoder": torch.nn.Sequential(bl.layers.LinearReparameterization(2, 3))})
        >>> with bl.tracing.module_names(model), bl.tape() as t:
        ...     _ = model["decoder"](model["encoder"](torch.randn(1, 3)))
        >>> list(t)
        ['encoder.0.weight', 'decoder.0.weight']
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"module_names expected an nn.Module, got {type(root).__name__}")
    roots = getattr(_local, "roots", None)
    if roots is None:
        roots = _local.roots = []
    head = f"{prefix}." if prefix else ""
    names = {m: (head + n if n else prefix) for n, m in root.named_modules()}
    saved = list(roots)
    roots.append(names)
    try:
        yield
    finally:
        roots[:] = saved
