"""Figure 4 of the paper: Bayesian layers are drop-in replacements.

One flag switches every dense layer of an MLP between ``nn.Linear`` and a
Bayesian estimator; nothing else in the model or the training loop changes
except adding the KL to the loss. Trains on scikit-learn's bundled digits and
prints test accuracy and NLL of the posterior predictive.

    python examples/drop_in_swap.py --estimator flipout
    python examples/drop_in_swap.py --deterministic
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import bayesian_layers as bl
from bayesian_layers.layers.registry import counterparts

#: Estimator name -> the Bayesian class that stands in for ``nn.Linear`` (the registry
#: ``to_bayesian`` reads): LinearReparameterization, LinearFlipout, ...
ESTIMATORS = dict(counterparts(nn.Linear))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deterministic", action="store_true", help="use nn.Linear")
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="flipout")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a few epochs, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    epochs = 3 if args.quick else args.epochs

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.3, random_state=args.seed)
    x_tr, x_te = (torch.tensor(a, dtype=torch.float32) for a in (x_tr, x_te))
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)

    # The whole change: which class builds the dense layers.
    Linear = nn.Linear if args.deterministic else ESTIMATORS[args.estimator]
    model = nn.Sequential(Linear(64, 128), nn.ReLU(), Linear(128, 128), nn.ReLU(), Linear(128, 10))

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = len(x_tr)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            nll = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss = nll + sum(bl.losses(model)) / n  # no losses for nn.Linear: just the NLL
            opt.zero_grad()
            loss.backward()
            opt.step()

    pred = bl.predict(model, x_te, num_samples=32, transform=lambda z: z.softmax(-1))
    probs = pred.mean
    accuracy = (probs.argmax(-1) == y_te).float().mean().item()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y_te).item()
    name = "nn.Linear" if args.deterministic else Linear.__name__
    print(f"{name}: test accuracy {accuracy:.3f}, test NLL {nll:.3f} ({epochs} epochs)")
    return {"accuracy": accuracy, "nll": nll}


if __name__ == "__main__":
    main()
