"""``bayesian-layers demo``: a deterministic MLP against the same MLP with Bayesian layers.

Not part of the library core: ``import bayesian_layers`` never imports this package,
and a run needs the ``demo`` extra (scikit-learn for the data, matplotlib for the
figures, tqdm for progress bars), ``pip install 'bayesian-layers[demo]'``. Importing the
package needs only torch and numpy.

The map:

* ``config``: :class:`DemoConfig` (the settings), :class:`Row`, :class:`DemoResult`,
  :data:`ESTIMATORS`.
* ``training``: :func:`make_mlp`, :class:`Regressor`, :func:`fit` (Adam with early
  stopping on the validation predictive NLL), the predictive summaries and
  :func:`mixture_quantile`.
* ``run``: the data, the two experiments, the table and notes: :func:`run_demo`.
* ``plots``: the two figures.
* ``_extra``: which of the extra's modules are missing, and the message that names it.

Example:
    >>> from bayesian_layers.demo import DemoConfig, make_mlp
    >>> model = make_mlp(4, (8,), 2, DemoConfig(estimator="flipout"), bayesian=True)
    >>> [type(m).__name__ for m in model]
    ['LinearFlipout', 'ReLU', 'LinearFlipout']
"""

from ._extra import (
    EXTRA_MODULES,
    INSTALL_COMMAND,
    missing_message,
    missing_modules,
    require_extra,
)
from .config import ESTIMATORS, DemoConfig, DemoResult, Row
from .plots import plot_intervals, plot_reliability
from .run import run_demo
from .training import (
    Regressor,
    class_predictive,
    fit,
    make_mlp,
    mixture_quantile,
    posterior_weight_scale,
    regression_locs,
)

__all__ = [
    "ESTIMATORS",
    "EXTRA_MODULES",
    "INSTALL_COMMAND",
    "DemoConfig",
    "DemoResult",
    "Regressor",
    "Row",
    "class_predictive",
    "fit",
    "make_mlp",
    "missing_message",
    "missing_modules",
    "mixture_quantile",
    "plot_intervals",
    "plot_reliability",
    "posterior_weight_scale",
    "regression_locs",
    "require_extra",
    "run_demo",
]
