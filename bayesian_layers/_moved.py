"""Old module paths of moved modules, still importable (with a ``DeprecationWarning``).

Public names never moved (``bayesian_layers.layers.X``, ``bayesian_layers.X``); this
keeps code and whole-module pickles that name a module by its old path working: the
import returns the module at its new path. Installed once by ``bayesian_layers``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES"]

_PACKAGE = __name__.rsplit(".", 1)[0]

#: old module path -> new module path, both relative to the package.
MOVED_MODULES = {
    "layers.linear_kernels": "layers.functional.linear",
    "layers.conv_kernels": "layers.functional.convolution",
    "layers.recurrent_kernels": "layers.functional.recurrent",
    "layers.attention_kernels": "layers.functional.attention",
    "layers.sparse_gp_kernels": "layers.gp.sparse_variational",
    "layers.gaussian_process": "layers.gp.exact",
    "layers.sparse_gaussian_process": "layers.gp.sparse",
    "layers.random_fourier_features": "layers.gp.random_features",
    "layers.kernel_base": "layers.gp.kernels",
    "layers.kernels": "layers.gp.kernels",
    "layers.mean_functions": "layers.gp.means",
    "layers.gp_distribution": "layers.gp.distribution",
    "layers.gp_numerics": "layers.gp.linalg",
    "layers.gp_iterative": "layers.gp.iterative",
    "layers.gaussian_likelihood": "layers.gp.likelihood",
    "layers._gp_io": "layers.gp._util",
    "layers.output_base": "layers.outputs.base",
    "layers.output_distributions": "layers.outputs.distributions",
    "layers.stochastic_output": "layers.outputs.stochastic",
    "layers.mixtures": "layers.outputs.mixtures",
    "layers.logistic": "layers.outputs.logistic",
    "layers.binned": "layers.outputs.binned",
    "layers.recurrent_cells": "layers.recurrent.cells",
    "layers.flows": "layers.reversible.flows",
    "layers.made": "layers.reversible.made",
    "layers.actnorm": "layers.reversible.actnorm",
    "layers.discretize": "layers.reversible.discretize",
    "tensor_parallel": "distributed.tensor_parallel",
    "tensor_parallel_attention": "distributed.tensor_parallel_attention",
    "random_variable": "random_variables.variable",
    "demo_plots": "demo.plots",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module at its new path is already executed


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix = _PACKAGE + "."
        if not fullname.startswith(prefix):
            return None
        new = MOVED_MODULES.get(fullname[len(prefix) :])
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"{prefix}{new}"))


def install() -> None:
    """Add the finder to ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
