"""Bayesian recurrent layers: cells (``nn.LSTMCell``, ``nn.GRUCell``) and ``nn.LSTM``.

The family in three files:

* :mod:`bayesian_layers.layers.recurrent.cells`: :class:`LSTMCellReparameterization`,
  :class:`LSTMCellFlipout`, :class:`GRUCellReparameterization`,
  :class:`GRUCellFlipout`, which draw their weights once per sequence and reuse them
  at every step;
* :mod:`bayesian_layers.layers.recurrent.sequence`: :class:`LSTMReparameterization`
  and :class:`LSTMFlipout`, drop-ins for ``nn.LSTM`` that draw once per call;
* :mod:`bayesian_layers.layers.recurrent.draw`: the per-sequence draw of the cells.

The math (noise passed in) is in :mod:`bayesian_layers.layers.functional.recurrent`.
This module re-exports the public classes.
"""

from __future__ import annotations

from .cells import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
)
from .sequence import LSTMFlipout, LSTMReparameterization

__all__ = [
    "LSTMCellReparameterization",
    "LSTMCellFlipout",
    "GRUCellReparameterization",
    "GRUCellFlipout",
    "LSTMReparameterization",
    "LSTMFlipout",
]
