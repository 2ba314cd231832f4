"""One noise for the whole full-covariance Laplace posterior (private).

:class:`~bayesian_layers.initializers.full_normal.FullNormal` tensors draw
``loc + factor · z`` with ``z`` asked of their layer under SWAG's low-rank noise name
(``<param>_swag_low_rank``). The noise hook here, registered on every layer that holds
one, answers all of them with the same ``z`` per function sample, as
:func:`bayesian_layers.swag.joint_low_rank` does, but for the model's lifetime: so
``bl.predict``, ``bl.frozen_sample`` and vectorised samples draw from the joint posterior
without a context. A parameter asking a second time starts the next function sample.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..initializers.full_normal import FullNormal
from ..layers.base import BayesianLayer
from ..swag._predict import SharedLowRankNoise

__all__ = ["JointNoise", "share_joint_noise"]


class JointNoise(SharedLowRankNoise):
    """The hook: one ``z`` shared by every joint tensor of a function sample (SWAG's
    :class:`~bayesian_layers.swag._predict.SharedLowRankNoise`, kept registered).

    Attributes:
        handles: the registrations (``remove()`` each to detach it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.handles: list = []

    def remove(self) -> None:
        """Unregister the hook from every layer."""
        for h in self.handles:
            h.remove()
        self.handles = []


def share_joint_noise(model_or_layers: nn.Module | Iterable[nn.Module]) -> JointNoise | None:
    """Register one :class:`JointNoise` on every layer holding a ``FullNormal``
    posterior (``None`` when there is none)."""
    modules = (
        model_or_layers.modules() if isinstance(model_or_layers, nn.Module) else model_or_layers
    )
    layers = []
    for m in modules:
        if (
            isinstance(m, BayesianLayer)
            and m not in layers
            and any(isinstance(s.initializer, FullNormal) for _, s in m.named_random_parameters())
        ):
            layers.append(m)
    if not layers:
        return None
    hook = JointNoise()
    hook.handles = [layer.register_noise_hook(hook) for layer in layers]
    return hook
