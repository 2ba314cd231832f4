"""Figure 7 of the paper: a variational auto-encoder from stochastic output layers.

At the scale of scikit-learn's bundled 8×8 digits (pixel intensities 0..16): a
convolutional encoder ends in ``layers.Normal`` (the latent code), a decoder of
transposed convolutions ends in ``layers.Categorical`` over the 17 intensity
levels of every pixel, and the loss is the figure's, line for line::

    encoding = encoder(features)
    nll = -decoder(encoding).distribution.log_prob(features)
    kl = encoding.distribution.kl_divergence(bl.Normal(0.0, 1.0))
    loss = (nll + kl).mean()

The encoding is a random variable: the decoder consumes its value, a
reparameterised draw, so gradients reach the encoder. Prints the held-out
negative ELBO in nats per image and bits per dimension (64 pixels) next to two
references (a uniform and a per-pixel histogram model), and writes a PNG grid of
test images, reconstructions and samples from the prior.

    python examples/vae.py
    python examples/vae.py --quick   # a few epochs, for tests
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from _image_grid import save_image_grid
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

LEVELS = 17  # digits intensities 0..16
PIXELS = 64
LATENT = 8


class ChannelsLast(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H, W, C)``: class logits last, for ``layers.Categorical``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


def make_encoder() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),  # (B, 32, 8, 8)
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # (B, 64, 4, 4)
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),  # (B, 64, 2, 2)
        nn.Flatten(),  # (B, 256)
        layers.Normal(units=LATENT, in_features=256, name="latent_code"),  # (B, LATENT)
    )  # fmt: skip


def make_decoder() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(LATENT, 64 * 2 * 2), nn.ReLU(),
        nn.Unflatten(1, (64, 2, 2)),  # (B, 64, 2, 2)
        nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),  # (B, 64, 4, 4)
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, 8, 8)
        nn.Conv2d(32, LEVELS, 3, padding=1),  # (B, 17, 8, 8) logits
        ChannelsLast(),  # (B, 8, 8, 17)
        # event_dims=2: the 8×8 image is one event, log_prob is per image (B,)
        layers.Categorical(event_dims=2, name="image"),
    )  # fmt: skip


def negative_elbo(
    encoder: nn.Module, decoder: nn.Module, features: Tensor
) -> tuple[Tensor, Tensor]:
    """Per image ``-log p(x | z)`` and ``KL(q(z | x) || N(0, 1))`` in nats, one z draw."""
    encoding = encoder(features.unsqueeze(1) / (LEVELS - 1))  # (B, 1, 8, 8) in [0, 1]
    nll = -decoder(encoding).distribution.log_prob(features)  # (B,)
    kl = encoding.distribution.kl_divergence(bl.Normal(0.0, 1.0))  # (B,)
    return nll, kl


@torch.no_grad()
def held_out(encoder: nn.Module, decoder: nn.Module, features: Tensor, draws: int) -> Tensor:
    """Negative ELBO per image, averaged over ``draws`` latent draws: ``(N,)`` nats."""
    total = torch.zeros(len(features))
    for _ in range(draws):
        nll, kl = negative_elbo(encoder, decoder, features)
        total += nll + kl
    return total / draws


def histogram_baseline(train: Tensor, test: Tensor) -> float:
    """Nats per test image of independent per-pixel histograms (add-one smoothing)."""
    counts = torch.ones(8, 8, LEVELS).scatter_add_(
        -1, train.permute(1, 2, 0), torch.ones(8, 8, len(train))
    )  # (8, 8, 17)
    log_p = (counts / counts.sum(-1, keepdim=True)).log()
    return -log_p.gather(-1, test.permute(1, 2, 0)).sum((0, 1)).mean().item()


@torch.no_grad()
def expected_intensity(decoder: nn.Module, z: Tensor) -> Tensor:
    """``Σ_c c · p(c)`` per pixel: ``(B, 8, 8)``."""
    probs = decoder(z).distribution.probs  # (B, 8, 8, 17), read through to the Categorical
    return probs @ torch.arange(LEVELS, dtype=probs.dtype)


def write_grid(encoder: nn.Module, decoder: nn.Module, test: Tensor, path: Path) -> None:
    """Rows: test images, reconstructions (posterior mean code), prior samples (mean and a
    drawn image)."""
    n = 10
    with torch.no_grad():
        code = encoder(test[:n].unsqueeze(1) / (LEVELS - 1)).distribution.mean  # (n, LATENT)
        z = torch.randn(n, LATENT)
        drawn = decoder(z).value  # (n, 8, 8) integer intensities
    rows = [
        ("test image", test[:n].float()),
        ("reconstruction", expected_intensity(decoder, code)),
        ("prior sample (mean)", expected_intensity(decoder, z)),
        ("prior sample (drawn)", drawn.float()),
    ]
    save_image_grid(rows, path, vmax=LEVELS - 1, left=0.16)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a few epochs, for tests")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # 8×8 images: thread hand-off would dominate the convolutions
    epochs = 20 if args.quick else args.epochs

    images = torch.tensor(load_digits().images, dtype=torch.long)  # (1797, 8, 8) in 0..16
    train, test = train_test_split(images, test_size=0.2, random_state=args.seed)
    encoder, decoder = make_encoder(), make_decoder()
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        for idx in torch.randperm(len(train)).split(64):
            features = train[idx]  # (B, 8, 8) integer intensities
            nll, kl = negative_elbo(encoder, decoder, features)
            loss = (nll + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()

    bound = held_out(encoder, decoder, test, draws=16)
    nats = bound.mean().item()
    se = bound.std().item() / math.sqrt(len(bound))
    nll, kl = negative_elbo(encoder, decoder, test)
    bits = nats / (PIXELS * math.log(2))
    uniform = PIXELS * math.log(LEVELS)
    histogram = histogram_baseline(train, test)
    print(f"digits 8x8 VAE, latent {LATENT}, {epochs} epochs, {len(test)} held-out images:")
    print(
        f"  negative ELBO {nats:.1f} ± {se:.1f} nats per image = {bits:.3f} bits/dim "
        f"(KL {kl.mean().item():.1f} nats)"
    )
    print(
        f"  references: per-pixel histograms {histogram:.1f} nats "
        f"({histogram / (PIXELS * math.log(2)):.3f} bits/dim); uniform {uniform:.1f} nats "
        f"({math.log2(LEVELS):.3f} bits/dim)"
    )
    path = args.output_dir / "vae_digits.png"
    write_grid(encoder, decoder, test, path)
    print(f"reconstructions and samples written to {path}")
    return {"negative_elbo_nats": nats, "bits_per_dim": bits, "histogram_nats": histogram}


if __name__ == "__main__":
    main()
