"""Point processes: distributions over point sets, and the layer that returns them.

- :mod:`.distribution`: :class:`PoissonProcessDistribution`, an inhomogeneous Poisson
  process on a box in 1-3 dimensions (density by quadrature, sampling by thinning).
- :mod:`.process`: :class:`PoissonProcess`, the layer (paper Figure 9), and its
  output :class:`PointSetVariable`.
"""

from .distribution import PoissonProcessDistribution
from .process import PointSetVariable, PoissonProcess, point_set

__all__ = ["PoissonProcess", "PoissonProcessDistribution", "PointSetVariable", "point_set"]
