"""What the demo needs beyond the library (torch and numpy): the ``demo`` extra.

The ``bayesian-layers`` command is installed with the base package, the demo's
dependencies only with ``pip install 'bayesian-layers[demo]'``; these helpers let the
command name the extra instead of failing with a traceback halfway through a run.
"""

from __future__ import annotations

import importlib

__all__ = [
    "EXTRA_MODULES",
    "INSTALL_COMMAND",
    "missing_modules",
    "missing_message",
    "require_extra",
]

#: Modules the demo cannot run without -> the distribution that provides each.
#: (tqdm, also in the extra, is optional: without it the demo trains without bars.)
EXTRA_MODULES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}

#: The command that installs them.
INSTALL_COMMAND = "pip install 'bayesian-layers[demo]'"


def missing_modules() -> list[str]:
    """The modules of :data:`EXTRA_MODULES` that do not import, in that order."""
    missing = []
    for module in EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def missing_message(missing: list[str]) -> str:
    """A one-line message naming the missing modules (with their distributions) and the fix.

    Example:
        >>> print(missing_message(["sklearn", "matplotlib"]).replace(". ", ".\\n"))
        the demo needs modules that are not installed: sklearn (scikit-learn), matplotlib.
        Install the demo extra: pip install 'bayesian-layers[demo]'
    """
    names = ", ".join(
        f"{m} ({EXTRA_MODULES[m]})" if EXTRA_MODULES.get(m, m) != m else m for m in missing
    )
    return (
        f"the demo needs modules that are not installed: {names}. "
        f"Install the demo extra: {INSTALL_COMMAND}"
    )


def require_extra() -> None:
    """Raise ``ModuleNotFoundError`` naming the extra when a demo dependency is missing.

    Raises:
        ModuleNotFoundError: its ``name`` is the first missing module.
    """
    missing = missing_modules()
    if missing:
        raise ModuleNotFoundError(missing_message(missing), name=missing[0])
