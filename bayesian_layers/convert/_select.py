"""Which modules :func:`~bayesian_layers.convert.to_bayesian` sees and selects: the
scan over a module tree, the ``include``/``exclude`` globs, and the registry lookup
of the torch class a module stands for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from ..layers.base import BayesianLayer
from ..layers.registry import registered_torch_classes

__all__ = ["Entry", "scan", "selected", "patterns", "check_patterns", "unsupported_reason"]


def torch_name(cls: type) -> str:
    """``nn.Linear`` for torch's own layers, the qualified name for anything else."""
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__qualname__


def supported_types() -> str:
    """The registered torch classes, for messages."""
    return ", ".join(torch_name(c) for c in registered_torch_classes())


def registered_base(module: nn.Module) -> type[nn.Module] | None:
    """The registered torch class ``module`` stands for: its own class, or the nearest
    registered base class when ``module`` keeps that class's forward (``None``
    otherwise)."""
    registered = set(registered_torch_classes())
    for cls in type(module).__mro__:
        if cls in registered:
            return cls if type(module).forward is cls.forward else None
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a module with parameters of its own is left alone (None: it has none)."""
    if next(module.parameters(recurse=False), None) is None:
        return None
    registered = set(registered_torch_classes())
    for cls in type(module).__mro__[1:]:
        if cls in registered:
            return f"subclass of {torch_name(cls)} with its own forward"
    return "no Bayesian counterpart"


@dataclass
class Entry:
    """A module of the tree: its first qualified ``name``, the registered ``torch_cls``
    it stands for (None: none), and whether it is a Bayesian layer already."""

    name: str
    module: nn.Module
    torch_cls: type[nn.Module] | None
    bayesian: bool


def scan(root: nn.Module) -> list[Entry]:
    """Every module reachable from ``root`` once, by first qualified name; never
    inside a registered torch layer (``nn.MultiheadAttention.out_proj``) or a
    Bayesian layer."""
    seen: set[int] = set()
    out: list[Entry] = []

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        bayesian = isinstance(module, BayesianLayer)
        torch_cls = None if bayesian else registered_base(module)
        out.append(Entry(name, module, torch_cls, bayesian))
        if torch_cls is None and not bayesian:
            for key, child in module.named_children():
                visit(child, f"{name}.{key}" if name else key)

    visit(root, "")
    return out


def selected(name: str, globs: Sequence[str]) -> bool:
    """Whether ``name`` or one of its ancestors matches a pattern (a subtree rule)."""
    parts = name.split(".") if name else []
    candidates = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(c, p) for c in candidates for p in globs)


def patterns(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    """The glob patterns of ``include``/``exclude`` as a tuple (None: no rule)."""
    if value is None:
        return None
    globs = (value,) if isinstance(value, str) else tuple(value)
    for p in globs:
        if not isinstance(p, str):
            raise TypeError(f"to_bayesian expected `{what}` patterns to be str, got {p!r}")
    return globs


def _describe(entries: Sequence[Entry], limit: int = 8) -> str:
    shown = [f"{e.name or '<root>'} ({type(e.module).__name__})" for e in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(shown) + more


def check_patterns(
    entries: list[Entry], include: tuple[str, ...] | None, exclude: tuple[str, ...] | None
) -> None:
    """Raise ``ValueError`` for a pattern that matches no module, or an include pattern
    that selects no layer to convert."""
    for what, globs in (("include", include), ("exclude", exclude)):
        for p in globs or ():
            if not any(fnmatchcase(e.name, p) for e in entries):
                raise ValueError(
                    f"to_bayesian: {what} pattern {p!r} matches no module; module names "
                    f"look like: {_describe(entries[1:] or entries)}"
                )
    for p in include or ():
        chosen = [e for e in entries if selected(e.name, (p,))]
        if not any(e.torch_cls is not None or e.bayesian for e in chosen):
            raise ValueError(
                f"to_bayesian: include pattern {p!r} selects no layer it can convert: "
                f"{_describe(chosen)}; supported types: {supported_types()} (subclasses only "
                "when they keep torch's forward)"
            )
