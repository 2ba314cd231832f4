"""Figure 3 of the paper: a Bayesian layer is its deterministic layer with other defaults.

``VariationalDense`` in the paper is ``Dense`` whose kernel initializer is a
trainable normal and whose kernel regularizer is a KL to N(0, 1). Here the same
layer is written with every default spelled out, then with a different
posterior and prior, and the weight random variable is inspected.

    python examples/variational_dense.py
"""

from __future__ import annotations

import argparse

import torch

import bayesian_layers as bl
from bayesian_layers import initializers, layers, regularizers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for uniformity")
    parser.parse_args(argv)
    torch.manual_seed(0)

    # The defaults, written out: what `layers.LinearReparameterization(784, 10)` means.
    dense = layers.LinearReparameterization(
        784,
        10,
        bias=True,
        weight_initializer="trainable_normal",
        bias_initializer="zeros",
        weight_regularizer="normal_kl_divergence",
        bias_regularizer=None,
    )
    # Another posterior and prior: He-initialised means, a wider prior, a tempered KL.
    custom = layers.LinearReparameterization(
        784,
        10,
        weight_initializer=initializers.TrainableHeNormal(scale_init=0.05),
        weight_regularizer=regularizers.NormalKLDivergence(loc=0.0, scale=0.5, scale_factor=0.1),
    )
    x = torch.randn(32, 784)
    for name, layer in (("default", dense), ("custom", custom)):
        out = layer(x)
        w = layer.weight  # a RandomVariable: posterior + the draw this call used
        print(
            f"{name}: output {tuple(out.shape)}, q(W) = {type(w.distribution).__name__} "
            f"with mean |loc| {w.distribution.mean.abs().mean():.4f} and "
            f"mean stddev {w.distribution.stddev.mean():.4f}; KL term {layer.losses[0]:.1f}"
        )
    both = torch.nn.ModuleList([dense, custom])
    print(f"bl.losses over both layers: {[round(t.item(), 1) for t in bl.losses(both)]}")


if __name__ == "__main__":
    main()
