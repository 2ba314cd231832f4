"""Pure compute routines of the layers: every estimator's math with its noise passed
in, so that ``torch.autograd.gradcheck`` can test it. Named for what they compute.

- :mod:`.linear`: dense estimators (reparameterization, Flipout, local
  reparameterization) and K-sample batched matmuls.
- :mod:`.convolution`: the same estimators for ``convNd`` and ``conv_transposeNd``.
- :mod:`.recurrent`: LSTM and GRU cell updates and the Flipout projection of a step.
- :mod:`.attention`: scaled dot-product attention over K function samples and the
  Flipout projection.
"""

from . import attention, convolution, linear, recurrent

__all__ = ["linear", "convolution", "recurrent", "attention"]
