"""Figure 4 of the paper: one flag swaps a CNN's convolutions for Bayesian ones.

``Conv2D = layers.Conv2dReparameterization if bayesian else nn.Conv2d``; the
model (conv → BatchNorm → ReLU → strided conv → ... → pool → linear), the data
(scikit-learn's bundled 8×8 digits, one channel), the seed and the optimizer
stay the same, and the loss gains the KL divided by the number of training
examples. Both networks are trained in one run; the table gives test accuracy,
NLL and expected calibration error (ECE) of their predictives — K function
samples averaged for the Bayesian network, its single output for the
deterministic one. Only the convolutions are swapped, as in the figure; the
final ``nn.Linear`` stays deterministic.

    python examples/drop_in.py
    python examples/drop_in.py --estimator flipout --epochs 60
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.layers.registry import counterparts
from bayesian_layers.metrics import (
    accuracy,
    expected_calibration_error,
    negative_log_likelihood,
)

#: Estimator name -> the Bayesian class that stands in for ``nn.Conv2d`` (the registry
#: ``to_bayesian`` reads): Conv2dReparameterization, Conv2dFlipout, ...
ESTIMATORS = dict(counterparts(nn.Conv2d))


def build_cnn(bayesian: bool, estimator: str = "reparameterization") -> nn.Sequential:
    """The Figure 4 CNN for (B, 1, 8, 8) digits; ``bayesian`` picks the conv class."""
    # The whole change (Figure 4): which class builds the convolutions.
    Conv2D = ESTIMATORS[estimator] if bayesian else nn.Conv2d
    return nn.Sequential(
        Conv2D(1, 32, 5, padding="same"),  # (B, 32, 8, 8)
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Conv2D(32, 32, kernel_size=5, stride=2, padding=2),  # (B, 32, 4, 4)
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Conv2D(32, 64, kernel_size=3, stride=2, padding=1),  # (B, 64, 2, 2)
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (B, 64)
        nn.Linear(64, 10),
    )


def train_and_evaluate(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    epochs: int,
    num_samples: int,
    seed: int,
) -> dict[str, float]:
    """Adam on NLL + KL/N; returns test accuracy, NLL and ECE of the predictive."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)  # same minibatch order for both models
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = len(x_tr)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            nll = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss = nll + sum(bl.losses(model)) / n  # no losses for nn.Conv2d: just the NLL
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start

    model.eval()  # BatchNorm uses its running statistics
    k = num_samples if bl.bayesian_modules(model) else 1
    probs = bl.predict(model, x_te, num_samples=k, transform=lambda z: z.softmax(-1)).mean
    return {
        "accuracy": accuracy(probs, y_te).item(),
        "nll": negative_log_likelihood(probs, y_te).item(),
        "ece": expected_calibration_error(probs, y_te).item(),
        "kl_per_example": float(sum(bl.losses(model), torch.tensor(0.0)).item() / n),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="reparameterization")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=32, help="K for the predictive")
    parser.add_argument("--quick", action="store_true", help="a few epochs, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for a net this small")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, float]:
    epochs = 4 if args.quick else args.epochs

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.3, random_state=args.seed)
    # (N, 64) -> (N, 1, 8, 8)
    x_tr, x_te = (torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8) for a in (x_tr, x_te))
    data = (x_tr, torch.tensor(y_tr), x_te, torch.tensor(y_te))

    results: dict[str, dict[str, float]] = {}
    for bayesian in (False, True):
        torch.manual_seed(args.seed)
        model = build_cnn(bayesian, args.estimator)
        name = ESTIMATORS[args.estimator].__name__ if bayesian else "nn.Conv2d"
        results[name] = train_and_evaluate(model, data, epochs, args.samples, args.seed)

    print(f"digits 8x8: {len(x_tr)} train / {len(x_te)} test, {epochs} epochs, "
          f"K={args.samples} function samples for the Bayesian predictive")  # fmt: skip
    print(f"{'conv layer':<26} {'accuracy':>8} {'NLL':>7} {'ECE':>7} {'KL/N':>8} {'train s':>8}")
    for name, r in results.items():
        print(
            f"{name:<26} {r['accuracy']:>8.3f} {r['nll']:>7.3f} {r['ece']:>7.3f} "
            f"{r['kl_per_example']:>8.3f} {r['seconds']:>8.1f}"
        )
    (det_name, det), (bayes_name, bayes) = results.items()
    worse = [m for m in ("accuracy", "nll", "ece") if _worse(m, bayes[m], det[m])]
    if worse:
        print(f"{bayes_name} is worse than {det_name} on: {', '.join(worse)}.")
    else:
        print(f"{bayes_name} is at least as good as {det_name} on accuracy, NLL and ECE.")

    out = {f"det_{k}": v for k, v in det.items()}
    out.update({f"bayes_{k}": v for k, v in bayes.items()})
    return out


def _worse(metric: str, bayes: float, det: float) -> bool:
    return bayes < det if metric == "accuracy" else bayes > det


if __name__ == "__main__":
    main()
