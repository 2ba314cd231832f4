"""Appendix A of the paper: a Bayesian ResNet-50, block by block.

``build_resnet50(Conv2D, Linear)`` follows Figure 12 line by line: a 7×7/2 stem
(zero-pad 3, valid conv, BatchNorm, ReLU, zero-pad 1, 3×3/2 max pool), then
``conv_block``/``identity_block`` stages with filters [64, 64, 256] (stride 1),
[128, 128, 512], [256, 256, 1024] and [512, 512, 2048] (stride 2) and 3, 4, 6, 3
blocks, global average pooling and a dense layer. The convolutions are
``Conv2dReparameterization`` (the appendix's ``VariationalConv2D``) and the
dense layer ``LinearReparameterization`` (its ``VariationalDense``); the same
function with ``nn.Conv2d``/``nn.Linear`` builds the deterministic twin. As in
Keras, every convolution has a bias (a point estimate in the Bayesian layers) and
BatchNorm uses ``eps=1e-3``, ``momentum=0.01`` (Keras' 0.99).

The script prints parameter counts (the Bayesian network ≈ 2× its twin: a loc
and a rho per weight), runs a few Adam steps on NLL + KL/N with a small random
batch (N: ImageNet's 1,281,167 training images, so KL/N is the per-example
share of the KL), and builds the same Bayesian network by converting the twin
with ``bayesian_layers.convert.to_bayesian``: equal output shapes, equal
posterior-mean outputs (the converted means start at the twin's weights), and
both train. If ``torchvision`` is installed, ``torchvision.models.resnet50``
is converted too.

    python examples/bayesian_resnet50.py             # 2 x 3 x 64 x 64, 5 steps
    python examples/bayesian_resnet50.py --quick     # 2 x 3 x 32 x 32, 1 step
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers, to_bayesian

IMAGENET_TRAIN_SIZE = 1_281_167


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # Keras' defaults


class ConvBlock(nn.Module):
    """``conv_block``: 1×1/s → 3×3 → 1×1 with a projected (1×1/s conv) shortcut.

    Shape:
        (B, C_in, H, W) -> (B, filters[2], ceil(H / s), ceil(W / s)).
    """

    def __init__(
        self,
        Conv2D: Callable[..., nn.Module],
        in_channels: int,
        kernel_size: int,
        filters: tuple[int, int, int],
        stride: int = 2,
    ) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.branch = nn.Sequential(
            Conv2D(in_channels, f1, 1, stride=stride),
            _bn(f1),
            nn.ReLU(),
            Conv2D(f1, f2, kernel_size, padding="same"),
            _bn(f2),
            nn.ReLU(),
            Conv2D(f2, f3, 1),
            _bn(f3),
        )
        self.shortcut = nn.Sequential(Conv2D(in_channels, f3, 1, stride=stride), _bn(f3))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class IdentityBlock(nn.Module):
    """``identity_block``: 1×1 → 3×3 → 1×1 added to the input.

    Shape:
        (B, filters[2], H, W) -> (B, filters[2], H, W).
    """

    def __init__(
        self, Conv2D: Callable[..., nn.Module], kernel_size: int, filters: tuple[int, int, int]
    ) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.branch = nn.Sequential(
            Conv2D(f3, f1, 1),
            _bn(f1),
            nn.ReLU(),
            Conv2D(f1, f2, kernel_size, padding="same"),
            _bn(f2),
            nn.ReLU(),
            Conv2D(f2, f3, 1),
            _bn(f3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + x)


def build_resnet50(
    Conv2D: Callable[..., nn.Module] = layers.Conv2dReparameterization,
    Linear: Callable[..., nn.Module] = layers.LinearReparameterization,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> nn.Sequential:
    """ResNet-50 as Appendix A lists it; (B, 3, H, W) -> (B, num_classes) logits."""
    stages = [  # (filters, stride of the conv_block, identity blocks)
        ((64, 64, 256), 1, 2),
        ((128, 128, 512), 2, 3),
        ((256, 256, 1024), 2, 5),
        ((512, 512, 2048), 2, 2),
    ]
    body: list[nn.Module] = [
        nn.ZeroPad2d(3),
        Conv2D(in_channels, 64, 7, stride=2),  # padding VALID: (B, 64, H/2, W/2)
        _bn(64),
        nn.ReLU(),
        nn.ZeroPad2d(1),
        nn.MaxPool2d(3, stride=2),  # (B, 64, H/4, W/4)
    ]
    channels = 64
    for filters, stride, num_identity in stages:
        body.append(ConvBlock(Conv2D, channels, 3, filters, stride=stride))
        body.extend(IdentityBlock(Conv2D, 3, filters) for _ in range(num_identity))
        channels = filters[2]
    body += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), Linear(channels, num_classes)]  # (B, 2048)
    return nn.Sequential(*body)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_steps(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, num_examples: int
) -> list[tuple[float, float]]:
    """Adam steps on NLL + KL/N; returns (NLL, KL/N) before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()
    history = []
    for _ in range(steps):
        nll = F.cross_entropy(model(x), y)
        kl = sum(bl.losses(model), torch.zeros(())) / num_examples  # KL are layer side effects
        loss = nll + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((nll.item(), kl.item()))
    return history


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--num-examples", type=int, default=IMAGENET_TRAIN_SIZE, help="N in KL/N")
    parser.add_argument(
        "--threads", type=int, default=1, help="1 was 7x faster than 2 on a busy 2-core CPU"
    )
    parser.add_argument("--quick", action="store_true", help="32 x 32 input, 1 step, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps = 32, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, object]:
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size)  # (B, 3, H, W)
    y = torch.randint(0, args.num_classes, (args.batch,))

    bayes = build_resnet50(num_classes=args.num_classes)
    det = build_resnet50(nn.Conv2d, nn.Linear, num_classes=args.num_classes)
    n_bayes, n_det = num_parameters(bayes), num_parameters(det)
    n_conv = sum(isinstance(m, layers.Conv2dReparameterization) for m in bayes.modules())
    print(f"ResNet-50 (Appendix A), {n_conv} convolutions, {args.num_classes} classes")
    print(f"  deterministic twin (nn.Conv2d, nn.Linear):  {n_det:>11,} parameters")
    print(f"  Bayesian (Conv2d/LinearReparameterization): {n_bayes:>11,} parameters "
          f"({n_bayes / n_det:.3f}x)")  # fmt: skip

    out: dict[str, object] = {
        "params_bayesian": n_bayes,
        "params_deterministic": n_det,
        "param_ratio": n_bayes / n_det,
    }
    shapes: dict[str, tuple[int, ...]] = {}
    losses: dict[str, list[tuple[float, float]]] = {}

    converted, report = to_bayesian(copy.deepcopy(det), "reparameterization", return_report=True)
    # Posterior means start at the twin's weights: same function on the means.
    det.eval()
    converted.eval()
    with torch.no_grad(), bl.posterior_mean(converted):
        gap = (converted(x) - det(x)).abs().max().item()
    out["converted_mean_gap"] = gap
    out["params_converted"] = num_parameters(converted)
    print(f"  to_bayesian(twin):                          {num_parameters(converted):>11,} "
          f"parameters; posterior-mean output vs twin: max |diff| {gap:.1e}")  # fmt: skip
    print(f"    {len(report)} layers swapped, {len(report.unsupported)} left as they are "
          "(BatchNorm: point estimates)")  # fmt: skip

    models = {"Bayesian (block by block)": bayes, "deterministic twin": det}
    models["to_bayesian(twin)"] = converted
    try:
        import torchvision  # noqa: F401 - optional extra
    except ImportError:
        print("  torchvision not installed: torchvision.models.resnet50 not converted")
    else:
        tv = torchvision.models.resnet50(weights=None, num_classes=args.num_classes)
        models["to_bayesian(torchvision resnet50)"] = to_bayesian(tv)

    print(f"\n{args.steps} Adam step(s) on a random batch {tuple(x.shape)}, "
          f"loss = NLL + KL/N with N = {args.num_examples:,}")  # fmt: skip
    print(f"  {'model':<34} {'output':>12} {'NLL':>8} {'KL/N':>9}")
    for name, model in models.items():
        torch.manual_seed(args.seed)
        history = train_steps(model, x, y, args.steps, args.num_examples)
        with torch.no_grad():
            shapes[name] = tuple(model(x).shape)
        losses[name] = history
        for i, (nll, kl) in enumerate(history):
            label = name if i == 0 else ""
            shape = str(shapes[name]) if i == 0 else ""
            print(f"  {label:<34} {shape:>12} {nll:>8.3f} {kl:>9.4f}")

    out["shapes"] = shapes
    out["losses"] = losses
    out["seconds"] = time.perf_counter() - start
    print(f"\ntotal {out['seconds']:.1f} s on {torch.get_num_threads()} threads")
    return out


if __name__ == "__main__":
    main()
