"""Bayesian Layers for PyTorch: layers that are distributions over functions.

``import bayesian_layers as bl`` and ``from bayesian_layers import layers``.
"""

from . import (
    _moved,
    adapters,
    initializers,
    laplace,
    layers,
    metrics,
    optim,
    random_variables,
    regularizers,
    swag,
    tracing,
)
from .adapters import (
    LoRALinear,
    load_lora_state_dict,
    lora,
    lora_state_dict,
    merge_lora,
)
from .calibration import TemperatureScaled, calibrate
from .convert import to_bayesian
from .diagnostics import Diagnosis, diagnose
from .distributions import Deterministic as DeterministicDistribution
from .ensemble import Ensemble
from .generation import Generation, generate
from .inference import make_log_joint_fn, program_elbo
from .kl_schedule import kl_warmup
from .objectives import KLScalingWarning, elbo_loss, losses
from .predictive import Predictive, predict
from .random_variables import *  # noqa: F403 - the constructors, listed in its __all__
from .random_variables.variable import RandomVariable
from .sampling import (
    bayesian_modules,
    frozen_sample,
    posterior_mean,
    resample,
    set_sampling,
    vectorized_samples,
)
from .sngp import sngp
from .tracing import condition, name_scope, tape, trace, traceable

__version__ = "0.1.0"

_moved.install()


def __getattr__(name: str) -> object:
    # `bl.distributed` imports torch.distributed.tensor on first use (slow; absent on some builds)
    if name == "distributed":
        import importlib

        return importlib.import_module(f"{__name__}.distributed")
    raise AttributeError(f"module 'bayesian_layers' has no attribute {name!r}")


__all__ = [
    "RandomVariable",
    *random_variables.__all__,
    "DeterministicDistribution",
    "initializers",
    "regularizers",
    "metrics",
    "optim",
    "layers",
    "losses",
    "to_bayesian",
    "adapters",
    "lora",
    "LoRALinear",
    "lora_state_dict",
    "load_lora_state_dict",
    "merge_lora",
    "sngp",
    "swag",
    "laplace",
    "Ensemble",
    "elbo_loss",
    "kl_warmup",
    "KLScalingWarning",
    "predict",
    "Predictive",
    "generate",
    "Generation",
    "calibrate",
    "diagnose",
    "Diagnosis",
    "TemperatureScaled",
    "bayesian_modules",
    "set_sampling",
    "posterior_mean",
    "frozen_sample",
    "resample",
    "vectorized_samples",
    "tracing",
    "trace",
    "traceable",
    "tape",
    "condition",
    "name_scope",
    "make_log_joint_fn",
    "program_elbo",
]
