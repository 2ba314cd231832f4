"""Settings and results of the demo: :class:`DemoConfig`, :class:`Row`, :class:`DemoResult`.

Needs only torch (no scikit-learn, no matplotlib): the ``bayesian-layers`` command reads
its defaults and choices from here before it knows whether the ``demo`` extra is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..convert import ESTIMATORS as _CONVERT_ESTIMATORS

__all__ = ["ESTIMATORS", "DemoConfig", "DemoResult", "Row", "class_suffix"]

#: Weight estimators the demo can use: the spellings of :func:`bayesian_layers.to_bayesian`
#: (``"flipout"`` uses ``layers.LinearFlipout``, and so on).
ESTIMATORS = tuple(_CONVERT_ESTIMATORS)


def class_suffix(estimator: str) -> str:
    """``"local_reparameterization"`` -> ``"LocalReparameterization"``."""
    return "".join(word.capitalize() for word in estimator.split("_"))


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the defaults are the tuned full run).

    Attributes:
        seed: seeds torch (initialisation, minibatch order, weight noise); the same
            seed gives the same table. The data split is fixed and does not depend on it.
        quick: a much shorter run (for tests): a sixth of the epochs.
        epochs: epochs for every model; ``None`` uses the per-data-set default.
        kl_weight: multiplies the KL term of the ELBO (1.0 = full KL).
        estimator: one of :data:`ESTIMATORS`.
        hidden_digits: widths of the hidden layers of the digits MLP.
        hidden_diabetes: widths of the hidden layers of the diabetes MLP.
        lr: Adam learning rate; ``None`` uses the per-data-set default.
        batch_size: minibatch size.
        num_samples: K, function samples for the Bayesian predictive on the test set.
        num_val_samples: K on the validation set, for early stopping.
        out_dir: where the PNG figures go.
        progress: show tqdm bars while training (when tqdm is installed).
        threads: torch's intra-op threads during the run (restored after). 1 by
            default: these matmuls are too small to gain from threads, and on a
            busy 2-core machine spinning workers made a step ~30x slower.
    """

    seed: int = 0
    quick: bool = False
    epochs: int | None = None
    lr: float | None = None
    kl_weight: float = 1.0
    estimator: str = "flipout"
    hidden_digits: tuple[int, ...] = (256,)
    hidden_diabetes: tuple[int, ...] = (50,)
    batch_size: int = 64
    num_samples: int = 64
    num_val_samples: int = 8
    out_dir: Path = Path("demo_output")
    progress: bool = True
    threads: int = 1

    def epochs_for(self, dataset: str) -> int:
        """``epochs`` if set, else the tuned budget of ``dataset`` (a sixth with ``quick``)."""
        if self.epochs is not None:
            return self.epochs
        full = _TUNED[dataset]["epochs"]
        return max(1, full // 6) if self.quick else full

    def lr_for(self, dataset: str) -> float:
        """``lr`` if set, else the tuned Adam learning rate of ``dataset``."""
        return self.lr if self.lr is not None else _TUNED[dataset]["lr"]


#: Per-data-set budgets chosen on the validation split (see the module docstring).
_TUNED: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 60, "lr": 3e-3},
    "diabetes": {"epochs": 200, "lr": 1e-2},
}


@dataclass
class Row:
    """One table row: a metric for both models. ``goal`` is "max", "min" or a target."""

    dataset: str
    metric: str
    goal: str
    deterministic: float | None
    bayesian: float | None

    @property
    def better(self) -> str:
        """``"bayesian"``, ``"deterministic"``, ``"tie"`` or ``"-"`` (one model only)."""
        d, b = self.deterministic, self.bayesian
        if d is None or b is None:
            return "-"
        if self.goal == "max":
            d, b = -d, -b
        elif self.goal not in ("min", "max"):
            target = float(self.goal.lstrip("≈~"))
            d, b = abs(d - target), abs(b - target)
        if math.isclose(d, b, rel_tol=1e-9, abs_tol=5e-4):
            return "tie"
        return "bayesian" if b < d else "deterministic"


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the rows, the figure paths and notes."""

    config: DemoConfig
    rows: list[Row]
    figures: list[Path]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    diagnosis: str = ""  # bl.diagnose's report of the Bayesian digits model
