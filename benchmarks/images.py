"""Image benchmark: LeNet-5 on Fashion-MNIST, MNIST as out-of-distribution, rotation shift.

The protocol of uncertainty-baselines' ``baselines/mnist`` (LeNet-5, Adam 1e-3, batch 256,
first 50 000 training images; docs/images.md lists every choice) with the metrics of
Ovadia et al. (2019). Each (method, seed) writes ``<out-dir>/<method>_seed<seed>.json``, so
runs split across processes merge; ``--table`` merges them into a Markdown table beside
the published rows. Deterministic runs also keep their predictive probabilities
(``deterministic_seed<s>_probs.pt``): ``ensemble_<k>`` at seed ``s`` averages the
deterministic seeds ``s*k .. s*k+k-1`` (run those first).

    python benchmarks/images.py --methods deterministic,vi_flipout --seeds 0,1,2
    python benchmarks/images.py --methods ensemble_5,ensemble_10 --seeds 0
    python benchmarks/images.py --table
    python benchmarks/images.py --quick --data-dir tests/data/images --out-dir /tmp/img
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from image_data import (
    load_fashion_mnist,
    load_mnist_ood,
    rotate,
    to_float,
    train_validation_split,
)
from images_report import write_figures, write_table
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.calibration import fit_temperature
from bayesian_layers.layers.registry import counterparts
from bayesian_layers.metrics import (
    accuracy,
    aupr,
    auroc,
    brier_score,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
    roc_curve,
)

ANGLES = tuple(range(0, 181, 15))
#: The rotation curves use every 5th test image (2 000 of 10 000; the same images at
#: every angle): K = 10 samples of 13 rotated copies of the whole set would cost more
#: than training a VI network.
ROTATION_STRIDE = 5
#: False-positive rates at which the OOD ROC curve is stored.
FPR_GRID = torch.linspace(0, 1, 101, dtype=torch.float64)
HERE = Path(__file__).resolve().parent


def lenet5(
    conv: Callable[..., nn.Module] = nn.Conv2d,
    linear: Callable[..., nn.Module] = nn.Linear,
    dropout: float = 0.0,
) -> nn.Sequential:
    """uncertainty-baselines' LeNet-5: three 'same' 5x5 convolutions (6, 16, 120), two 2x2
    max-pools, dense 84, dense 10; ReLU. ``dropout > 0`` adds MC dropout before the dense
    layers. Input ``(B, 1, 28, 28)``, output logits ``(B, 10)``."""
    drop = [bl.layers.MCDropout(dropout)] if dropout > 0 else []
    return nn.Sequential(
        conv(1, 6, 5, padding="same"),  # (B, 6, 28, 28)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 6, 14, 14)
        conv(6, 16, 5, padding="same"),  # (B, 16, 14, 14)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, 7, 7)
        conv(16, 120, 5, padding="same"),  # (B, 120, 7, 7)
        nn.ReLU(),
        nn.Flatten(),  # (B, 5880)
        *drop,
        linear(120 * 7 * 7, 84),
        nn.ReLU(),
        *drop,
        linear(84, 10),
    )


def logits_loss(out: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of logits (an SNGP head's random variable acts as its logits)."""
    return F.cross_entropy(out, y)


def output_loss(out: bl.RandomVariable, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of a stochastic output layer's random variable."""
    return -out.log_prob(y).mean()


def sampled_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """Softmax outputs of ``k`` function samples of a logits model, ``(k, B, C)``."""
    # A loop of K calls: on CPU it is about 2x faster than the vectorised call for these
    # convolutions (measured on LeNet-5, batch 500, one thread).
    softmax = partial(torch.softmax, dim=-1)
    return bl.predict(model, x, num_samples=k, transform=softmax, vectorized=False).samples


def member_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """As :func:`sampled_probs` for rank-1 / BatchEnsemble models: ``bl.predict`` gives
    each member ``k / E`` of the ``k`` samples (its vectorised call; members share it)."""
    softmax = partial(torch.softmax, dim=-1)
    return bl.predict(model, x, num_samples=k, transform=softmax).samples


def output_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """The class probabilities of a stochastic output layer's distribution, ``(1, B, C)``
    (a deterministic network: one function)."""
    return model(x).distribution.probs.unsqueeze(0)


def mean_field_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """An SNGP model's mean-field predictive, ``softmax(m / sqrt(1 + λ v))``, ``(1, B, C)``."""
    head = sngp_head(model)
    return head.mean_field_logits(model(x)).softmax(-1).unsqueeze(0)


def sngp_head(model: nn.Module) -> bl.layers.SNGPHead:
    """The model's :class:`~bayesian_layers.layers.SNGPHead`."""
    return next(m for m in model.modules() if isinstance(m, bl.layers.SNGPHead))


class AdamTrainer:
    """Adam (``lr``) on the per-example ELBO, one :meth:`step` per batch."""

    def __init__(
        self, model: nn.Module, method: Method, config: dict, num_train: int, total_steps: int,
        lr: float,
    ) -> None:  # fmt: skip
        self.model, self.method, self.num_train = model, method, num_train
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(self, x: Tensor, y: Tensor) -> None:
        loss = train_step(self.model, self.method, x, y, self.num_train)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def finish(self) -> None:
        """Called once after the last step."""


class IVONTrainer(AdamTrainer):
    """``bl.optim.IVON`` (ess = N, one draw per step) on the data term alone, its learning
    rate ``ivon_lr`` annealed to 0 by a cosine over the run, the model in posterior-mean
    mode; :meth:`finish` writes the posterior ``N(m, 1/(N(h + δ)))`` into the layers."""

    def __init__(
        self, model: nn.Module, method: Method, config: dict, num_train: int, total_steps: int,
        lr: float,
    ) -> None:  # fmt: skip
        self.model, self.method, self.num_train = model, method, num_train
        params = bl.optim.ivon_parameters(model)
        self.ivon = bl.optim.IVON(
            params, lr=config["ivon_lr"], ess=num_train, hess_init=config["hess_init"]
        )
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.ivon, total_steps)

    def step(self, x: Tensor, y: Tensor) -> None:
        with bl.posterior_mean(self.model), self.ivon.sampled_params(train=True):
            self.ivon.zero_grad()
            self.method.loss(self.model(x), y).backward()
        self.ivon.step()
        self.schedule.step()

    def finish(self) -> None:
        self.ivon.write_posterior(self.model)


@dataclass(frozen=True)
class Method:
    """One row of the table: how to build, train and predict with the model, its defaults."""

    build: Callable[..., nn.Module]  # takes the options as keyword arguments
    epochs: int = 25  # uncertainty-baselines: 5000 steps of 256 on 50 000 images
    num_samples: int = 1  # function samples in the predictive (1: deterministic)
    #: hyperparameters with their defaults (chosen on the validation split); each has a
    #: command-line flag (``--prior-scale`` for ``prior_scale``) and is kept in the JSON
    options: dict[str, float] = field(default_factory=dict)
    #: the per-example data term of the loss, from the model's output and the labels
    loss: Callable[..., Tensor] = logits_loss
    #: probabilities of ``k`` function samples on a chunk of images, ``(k, B, C)``
    probs: Callable[[nn.Module, Tensor, int], Tensor] = sampled_probs
    #: called at the start of every training epoch (SNGP resets its precision matrix)
    on_epoch: Callable[[nn.Module], None] | None = None
    #: training batches are cut to a multiple of this (ensemble layers split the batch)
    batch_multiple: int = 1
    #: after training, fits predictive-only settings on the validation split (SNGP's
    #: mean-field factor); returns them for the JSON
    tune: Callable[[nn.Module, Tensor, Tensor], dict[str, float]] | None = None
    #: how the model is trained (:class:`AdamTrainer` or :class:`IVONTrainer`)
    trainer: type[AdamTrainer] = AdamTrainer
    #: after training, a post-hoc posterior fitted on the training data (Laplace): returns
    #: the model to evaluate and its settings for the JSON
    posthoc: Callable[[nn.Module, Tensor, Tensor], tuple[nn.Module, dict]] | None = None


#: The VI posterior and prior, chosen on the validation split (docs/images.md): weight
#: posteriors start at scale ``scale_init``, the prior is N(0, ``prior_scale``²).
VI_DEFAULTS = {"prior_scale": 1.0, "scale_init": 1e-2}


def vi_layer_kwargs(prior_scale: float, scale_init: float) -> dict[str, object]:
    """Keyword arguments of every Bayesian layer of the VI methods."""
    return {
        "weight_initializer": bl.initializers.TrainableHeNormal(scale_init=scale_init),
        "weight_regularizer": bl.regularizers.NormalKLDivergence(scale=prior_scale),
    }


def _hand_built(estimator: str) -> Callable[..., nn.Module]:
    conv, linear = (
        dict(counterparts(nn.Conv2d))[estimator],
        dict(counterparts(nn.Linear))[estimator],
    )

    def build(prior_scale: float, scale_init: float) -> nn.Module:
        kw = vi_layer_kwargs(prior_scale, scale_init)
        return lenet5(partial(conv, **kw), partial(linear, **kw))

    return build


def _converted(estimator: str) -> Callable[..., nn.Module]:
    def build(prior_scale: float, scale_init: float) -> nn.Module:
        return bl.to_bayesian(lenet5(), estimator, **vi_layer_kwargs(prior_scale, scale_init))

    return build


#: Members of the rank-1 and BatchEnsemble networks (uncertainty-baselines: 4).
ENSEMBLE_SIZE = 4
#: SNGP's mean-field factors tried on the validation split (uncertainty-baselines tunes
#: λ; π/8 is the probit approximation's, 0 the MAP logits).
MEAN_FIELD_GRID = (0.0, math.pi / 8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


def members(estimator: str) -> Callable[..., nn.Module]:
    """LeNet-5 of rank-1 (``"rank1"``) or BatchEnsemble layers, ``ENSEMBLE_SIZE`` members."""
    conv, linear = {
        "rank1": (bl.layers.Conv2dRank1, bl.layers.LinearRank1),
        "batch_ensemble": (bl.layers.Conv2dBatchEnsemble, bl.layers.LinearBatchEnsemble),
    }[estimator]

    def build() -> nn.Module:
        kw = {"ensemble_size": ENSEMBLE_SIZE}
        return lenet5(partial(conv, **kw), partial(linear, **kw))

    return build


def heteroscedastic(temperature: float) -> nn.Module:
    """LeNet-5 whose last layer is a heteroscedastic categorical output (10 factors,
    1000 MC logit draws, Edward2's defaults)."""
    model = lenet5()
    model[-1] = bl.layers.HeteroscedasticCategorical(10, in_features=84, temperature=temperature)
    return model


def sngp_lenet5(norm_bound: float) -> nn.Module:
    """LeNet-5 made an SNGP: spectral norm ``<= norm_bound`` on the hidden layers, a GP
    head of 1024 random features on the 84 hidden units."""
    return bl.sngp(lenet5(), norm_bound=norm_bound)


def reset_precision(model: nn.Module) -> None:
    sngp_head(model).reset_precision()


@torch.no_grad()
def tune_mean_field(model: nn.Module, x_val: Tensor, y_val: Tensor) -> dict[str, float]:
    """Set the SNGP head's mean-field factor to the one of :data:`MEAN_FIELD_GRID` with the
    lowest validation NLL."""
    model.eval()
    head = sngp_head(model)
    outs = [model(xb) for xb in x_val.split(500)]
    logits = torch.cat([o.value for o in outs])
    variance = torch.cat([o.distribution.variance for o in outs])
    nll = {
        lam: F.cross_entropy(bl.layers.mean_field_logits(logits, variance, mean_field_factor=lam),
                             y_val).item()
        for lam in MEAN_FIELD_GRID
    }  # fmt: skip
    head.mean_field_factor = min(nll, key=nll.__getitem__)
    return {"mean_field_factor": head.mean_field_factor}


#: name -> Method. Later issues add one entry each; ``ensemble_<k>`` is built from the
#: deterministic runs (see :func:`evaluate_ensemble`), not trained.
METHODS: dict[str, Method] = {
    "deterministic": Method(lenet5),
    # the control for the methods trained 10 epochs: the same network, stopped there
    "deterministic_10_epochs": Method(lenet5, 10),
    "mc_dropout": Method(lambda dropout: lenet5(dropout=dropout), 25, 10, {"dropout": 0.5}),
}
for _est in ("reparameterization", "flipout", "local_reparameterization"):
    METHODS[f"vi_{_est}"] = Method(_hand_built(_est), 10, 10, VI_DEFAULTS)
    METHODS[f"vi_{_est}_converted"] = Method(_converted(_est), 10, 10, VI_DEFAULTS)
for _est, _k in (("rank1", 2 * ENSEMBLE_SIZE), ("batch_ensemble", ENSEMBLE_SIZE)):
    # rank-1: two draws of every member's factors; BatchEnsemble: each member once
    METHODS[_est] = Method(members(_est), 10, _k, probs=member_probs, batch_multiple=ENSEMBLE_SIZE)


def laplace_last_layer(model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, dict]:
    """Post-hoc Kronecker-factored Laplace over the last layer of the trained network
    (laplace-torch's default for classification), its prior precision maximising the
    Laplace evidence on the training data."""
    loader = list(zip(x.split(256), y.split(256), strict=True))
    post = bl.laplace.fit(model, loader, "classification", hessian="kron", subset="last_layer")
    tau = bl.laplace.optimize_prior_precision(post)
    return post, {"prior_precision": float(tau)}


#: SWAG from the trained network: SGD (momentum 0.9, lr 0.01) for 5 epochs, an iterate
#: every 40 steps (24 in all), rank 20; uncertainty-baselines has no SWAG row to copy
SWAG_EPOCHS, SWAG_LR, SWAG_EVERY = 5, 0.01, 40


def swag_posterior(model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, dict]:
    """SWAG (diagonal + rank 20) from the trained deterministic network, its weights first
    converted to reparameterization layers (posterior means = the trained weights)."""
    post = bl.to_bayesian(model, "reparameterization")
    loader = [(x[i], y[i]) for i in torch.randperm(len(x)).split(256)]
    every = max(1, min(SWAG_EVERY, SWAG_EPOCHS * len(loader) // 20))  # >= 20 iterates
    moments = bl.swag.collect(
        post, loader, F.cross_entropy, lr=SWAG_LR, epochs=SWAG_EPOCHS, momentum=0.9,
        collect_every=every, collect_unit="step", max_rank=20,
    )  # fmt: skip
    return post, {"swag_rank": int(moments.rank), "swag_epochs": SWAG_EPOCHS}


def swag_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """``k`` joint SWAG draws (diagonal + low rank across the whole network), ``(k, B, C)``."""
    with bl.swag.joint_low_rank(model):
        return sampled_probs(model, x, k)


def glm_probs(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """The linearised (GLM) predictive with the probit approximation, ``(1, B, C)``."""
    return bl.laplace.glm_predictive(model, x).unsqueeze(0)


METHODS["laplace_last_layer"] = Method(lenet5, 25, 1, posthoc=laplace_last_layer, probs=glm_probs)


def laplace_kron(
    model: nn.Module, x: Tensor, y: Tensor, structure: str = "scalar"
) -> tuple[nn.Module, dict]:
    """Post-hoc Kronecker-factored Laplace over every layer of the trained network (the
    three convolutions and two hidden linear layers too), the prior precision (one for
    all, or one per parameter tensor: ``structure="layerwise"``) maximising the Laplace
    evidence; predicted with the linearised (GLM) predictive, as Laplace Redux recommends
    for a full-network posterior."""
    loader = list(zip(x.split(256), y.split(256), strict=True))
    post = bl.laplace.fit(model, loader, "classification", hessian="kron", subset="all")
    tau = bl.laplace.optimize_prior_precision(post, structure=structure)
    return post, {"prior_precision": float(tau) if tau.dim() == 0 else tau.tolist()}


METHODS["laplace_kron"] = Method(lenet5, 25, 1, posthoc=laplace_kron, probs=glm_probs)
#: one prior precision per parameter tensor: chosen on the validation split of seed 0
#: (docs/images.md) but without test rows yet
METHODS["laplace_kron_layerwise"] = Method(
    lenet5, 25, 1, posthoc=partial(laplace_kron, structure="layerwise"), probs=glm_probs
)
METHODS["swag"] = Method(lenet5, 25, 10, posthoc=swag_posterior, probs=swag_probs)

#: IVON's options (chosen on the validation split, docs/images.md); weight decay δ = 1e-4
#: (the prior N(0, 1/(N δ))), β₂ = 0.99999, one draw per step: the reference's defaults
IVON_DEFAULTS = {"ivon_lr": 0.5, "hess_init": 1.0}
METHODS["ivon"] = Method(
    lambda ivon_lr, hess_init: bl.to_bayesian(lenet5(), "reparameterization"), 10, 10,
    IVON_DEFAULTS, trainer=IVONTrainer,
)  # fmt: skip
METHODS["heteroscedastic"] = Method(
    heteroscedastic, 10, 1, {"temperature": 1.0}, loss=output_loss, probs=output_probs
)
METHODS["sngp"] = Method(
    sngp_lenet5, 10, 1, {"norm_bound": 6.0}, probs=mean_field_probs,
    on_epoch=reset_precision, tune=tune_mean_field,
)  # fmt: skip
ENSEMBLES = ("ensemble_5", "ensemble_10")


#: ``bl.Ensemble`` of this many LeNet-5s, trained side by side with one Adam optimizer
#: (the sum of the members' losses: each member gets its own gradient) for the epochs
#: the validation split chose for the 10-epoch rows
DEEP_ENSEMBLE_SIZE = 5


def deep_ensemble() -> nn.Module:
    """``DEEP_ENSEMBLE_SIZE`` independently initialised LeNet-5s in one ``bl.Ensemble``
    (members looped: on CPU the loop beats vmap for these convolutions)."""
    return bl.Ensemble(lenet5, DEEP_ENSEMBLE_SIZE, vectorize=False)


def members_loss(out: Tensor, y: Tensor) -> Tensor:
    """The sum over members of each member's mean cross-entropy; ``out`` ``(n, B, C)``."""
    n = out.shape[0]
    return F.cross_entropy(out.flatten(0, 1), y.repeat(n), reduction="sum") / y.shape[0]


METHODS["deep_ensemble"] = Method(
    deep_ensemble, 10, DEEP_ENSEMBLE_SIZE, loss=members_loss, probs=member_probs
)


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 equal-width bins) and Brier of mean probabilities (N, C)."""
    return {
        "accuracy": accuracy(probs, labels).item(),
        "nll": negative_log_likelihood(probs, labels).item(),
        "ece": expected_calibration_error(probs, labels, num_bins=15).item(),
        "brier": brier_score(probs, labels).item(),
    }


def ood_metrics(in_samples: Tensor, ood_samples: Tensor) -> dict[str, float]:
    """AUROC/AUPR with the OOD inputs as positives, scored by predictive entropy and by
    mutual information; ``*_samples`` are probabilities ``(K, N, C)``."""
    out = {}
    for name, score in (
        ("entropy", lambda p: predictive_entropy(p.mean(0))),
        ("mutual_information", mutual_information),
    ):
        s = torch.cat([score(in_samples), score(ood_samples)])
        positive = torch.cat([torch.zeros(in_samples.shape[1]), torch.ones(ood_samples.shape[1])])
        out[f"auroc_{name}"] = auroc(s, positive.bool()).item()
        out[f"aupr_{name}"] = aupr(s, positive.bool()).item()
        curve = roc_curve(s, positive.bool())  # the true-positive rate on a grid, for plots
        at = torch.searchsorted(curve.false_positive_rate, FPR_GRID, right=True) - 1
        out[f"roc_{name}"] = curve.true_positive_rate[at].tolist()
    return out


def reliability(probs: Tensor, labels: Tensor) -> dict[str, list]:
    """The 15 bins of a reliability diagram (empty bins: confidence and accuracy None)."""
    bins = reliability_bins(probs, labels, num_bins=15)
    empty = (bins.counts == 0).tolist()

    def values(t: Tensor) -> list[float | None]:
        return [None if e else v for e, v in zip(empty, t.tolist(), strict=True)]

    return {
        "confidence": values(bins.confidence),
        "accuracy": values(bins.accuracy),
        "counts": bins.counts.tolist(),
    }


@torch.no_grad()
def prob_samples(
    model: nn.Module, method: Method, x: Tensor, num_samples: int, chunk: int = 500
) -> Tensor:
    """Probabilities of ``num_samples`` function samples (the method's predictive),
    ``(K, N, C)``, in chunks of ``chunk`` images."""
    model.eval()
    return torch.cat([method.probs(model, xb, num_samples) for xb in x.split(chunk)], dim=1)


def train_step(model: nn.Module, method: Method, x: Tensor, y: Tensor, num_train: int) -> Tensor:
    """The per-example ELBO on one batch, data term + KL/N (the KL is 0 for non-Bayesian
    models; an SNGP head's is its MAP weight penalty)."""
    cut = len(x) - len(x) % method.batch_multiple
    return method.loss(model(x[:cut]), y[:cut]) + sum(bl.losses(model)) / num_train


def train(
    model: nn.Module, method: Method, config: dict, x: Tensor, y: Tensor, epochs: int,
    batch_size: int, lr: float,
) -> float:  # fmt: skip
    """The method's trainer (Adam on the per-example ELBO, :func:`train_step`, by default)
    over ``epochs``; returns seconds per epoch."""
    n = len(x)
    steps = epochs * -(-n // batch_size)
    trainer = method.trainer(model, method, config, n, steps, lr)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        if method.on_epoch is not None:
            method.on_epoch(model)
        for idx in torch.randperm(n).split(batch_size):
            trainer.step(x[idx], y[idx])
    trainer.finish()
    return (time.perf_counter() - start) / max(epochs, 1)


def evaluate(samples: dict[str, Tensor], data: dict[str, Tensor]) -> dict:
    """Every metric from probability samples of the test, OOD and rotated test sets."""
    y = data["y_test"]
    y_sub = y[::ROTATION_STRIDE]  # predict_all rotates every ROTATION_STRIDE-th image
    return {
        "test": classification_metrics(samples["test"].mean(0), y),
        "reliability": reliability(samples["test"].mean(0), y),
        "ood": ood_metrics(samples["test"], samples["ood"]),
        "rotation": {
            str(a): classification_metrics(samples[f"rot{a}"].mean(0), y_sub) for a in ANGLES
        },
    }


def predict_all(
    model: nn.Module, method: Method, data: dict[str, Tensor], k: int
) -> tuple[dict, float]:
    """Probability samples on every evaluation set; milliseconds per test image."""
    start = time.perf_counter()
    samples = {"test": prob_samples(model, method, data["x_test"], k)}
    ms = 1e3 * (time.perf_counter() - start) / len(data["x_test"])
    samples["ood"] = prob_samples(model, method, data["x_ood"], k)
    x_sub = data["x_test"][::ROTATION_STRIDE]
    for a in ANGLES:
        samples[f"rot{a}"] = (
            samples["test"][:, ::ROTATION_STRIDE]
            if a == 0
            else prob_samples(model, method, rotate(x_sub, a), k)
        )
    return samples, ms


def build_model(name: str, args: argparse.Namespace) -> tuple[nn.Module, dict[str, float]]:
    """The untrained model of method ``name`` and its options (defaults unless ``args``
    sets them)."""
    method = METHODS[name]
    config = {
        key: default if getattr(args, key, None) is None else getattr(args, key)
        for key, default in method.options.items()
    }
    return method.build(**config), config


def measure_cost(names: list[str], data: dict[str, Tensor], args: argparse.Namespace) -> dict:
    """Training seconds per step (batch ``args.batch_size``) and predictive milliseconds per
    image (batch 500, the method's K) of every method, side by side in this process:
    ``rounds`` interleaved rounds, medians, as ratios to ``deterministic``. An ensemble of
    k costs k deterministic networks."""
    trained = [n for n in dict.fromkeys(["deterministic", *names]) if n in METHODS]
    x, y = data["x_train"][: args.batch_size], data["y_train"][: args.batch_size]
    x_eval = data["x_test"][:500]
    models, trainers = {}, {}
    num_train, steps = len(data["x_train"]), 5  # steps per round
    for n in trained:
        torch.manual_seed(0)
        models[n], config = build_model(n, args)
        total = args.cost_rounds * steps
        trainers[n] = METHODS[n].trainer(models[n], METHODS[n], config, num_train, total, args.lr)
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "predict": []} for n in trained}
    for _ in range(args.cost_rounds):
        for n, model in models.items():
            model.train()
            start = time.perf_counter()
            for _ in range(steps):
                trainers[n].step(x, y)
            times[n]["train"].append((time.perf_counter() - start) / steps)
            posthoc = METHODS[n].posthoc
            if posthoc is not None:  # predict with the post-hoc posterior (fit not timed)
                model = posthoc(copy.deepcopy(model), x, y)[0]
            start = time.perf_counter()
            prob_samples(model, METHODS[n], x_eval, METHODS[n].num_samples)
            times[n]["predict"].append(1e3 * (time.perf_counter() - start) / len(x_eval))
    median = {
        n: {k: float(torch.tensor(v).median()) for k, v in t.items()} for n, t in times.items()
    }
    base = median["deterministic"]
    out = {
        n: {
            "train_s_per_step": m["train"], "predict_ms_per_image": m["predict"],
            "train_ratio": m["train"] / base["train"],
            "predict_ratio": m["predict"] / base["predict"],
        }
        for n, m in median.items()
    }  # fmt: skip
    for name in names:
        if name.startswith("ensemble_"):
            k = int(name.rsplit("_", 1)[1])
            out[name] = {
                "train_s_per_step": k * base["train"], "predict_ms_per_image": k * base["predict"],
                "train_ratio": float(k), "predict_ratio": float(k),
            }  # fmt: skip
    for entry in out.values():
        entry["threads"] = torch.get_num_threads()
    return out


def rescore(out_dir: Path, data: dict[str, Tensor]) -> list[Path]:
    """Recompute the metrics of the deterministic runs from their saved probabilities (after
    a change of :func:`evaluate`), keeping their timings and validation metrics."""
    done = []
    for f in sorted(out_dir.glob("deterministic_seed*_probs.pt")):
        path = f.with_name(f.name.replace("_probs.pt", ".json"))
        if not path.exists():
            continue
        samples = {k: v.float() for k, v in torch.load(f, weights_only=True).items()}
        r = json.loads(path.read_text())
        r.update(evaluate(samples, data))
        if "val" in samples:
            cal = calibrated_metrics(samples["val"], data["y_val"], samples["test"], data)
            r["calibrated"] = cal
        path.write_text(json.dumps(r, indent=1))
        done.append(path)
    return done


def run_one(name: str, seed: int, data: dict[str, Tensor], args: argparse.Namespace) -> dict:
    """Train and evaluate one (method, seed); deterministic runs also save their probs."""
    method = METHODS[name]
    epochs = args.epochs if args.epochs is not None else method.epochs
    k = args.num_samples if (args.num_samples and method.num_samples > 1) else method.num_samples
    torch.manual_seed(seed)
    model, config = build_model(name, args)
    x, y = data["x_train"], data["y_train"]
    sec = train(model, method, config, x, y, epochs, args.batch_size, args.lr)
    if method.posthoc is not None:
        start = time.perf_counter()
        model, fitted = method.posthoc(model, x, y)
        config = {**config, **fitted, "posthoc_s": time.perf_counter() - start}
    if method.tune is not None:
        config = {**config, **method.tune(model, data["x_val"], data["y_val"])}
    val_samples = prob_samples(model, method, data["x_val"], k)
    val = classification_metrics(val_samples.mean(0), data["y_val"])
    common = {
        "method": name, "seed": seed, "epochs": epochs, "num_samples": k, **config,
        "batch_size": args.batch_size, "lr": args.lr, "num_train": len(data["x_train"]),
        "validation": val, "threads": torch.get_num_threads(),
    }  # fmt: skip
    if args.validation_only:  # model selection: the test sets stay unseen
        return {**common, "timing": {"train_s_per_epoch": sec}}
    samples, ms = predict_all(model, method, data, k)
    if name == "deterministic":
        torch.save(
            {**samples, "val": val_samples},
            args.out_dir / f"deterministic_seed{seed}_probs.pt",
        )
    return {
        **common, **evaluate(samples, data),
        "calibrated": calibrated_metrics(val_samples, data["y_val"], samples["test"], data),
        "timing": {"train_s_per_epoch": sec, "predict_ms_per_image": ms},
    }  # fmt: skip


def calibrated_metrics(
    val_samples: Tensor, y_val: Tensor, test_samples: Tensor, data: dict[str, Tensor]
) -> dict:
    """Test metrics after temperature scaling (``bl.calibrate``'s fit): one temperature
    ``T`` for the method's predictive, fitted on the validation split's probability
    samples ``(K, N, C)`` (their logs are logits up to a per-row constant, so
    ``softmax(log p / T)`` is each sample's tempered softmax) and applied to the test
    samples before averaging them."""
    fit = fit_temperature(val_samples.double().clamp_min(1e-30).log(), y_val)
    tempered = (test_samples.double().clamp_min(1e-30).log() / fit.temperature).softmax(-1)
    return {
        "temperature": fit.temperature,
        "test": classification_metrics(tempered.mean(0).float(), data["y_test"]),
    }


class MissingMembers(FileNotFoundError):
    """An ensemble's deterministic members have not been run (yet)."""


def evaluate_ensemble(name: str, seed: int, data: dict[str, Tensor], out_dir: Path) -> dict:
    """``ensemble_<k>`` at ``seed``: the deterministic seeds ``seed*k .. seed*k+k-1``."""
    k = int(name.rsplit("_", 1)[1])
    members = range(seed * k, seed * k + k)
    files = [out_dir / f"deterministic_seed{m}_probs.pt" for m in members]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise MissingMembers(
            f"{name} seed {seed} needs {missing}: run deterministic seeds {list(members)} first"
        )
    loaded = [torch.load(f, weights_only=True) for f in files]
    samples = {key: torch.cat([m[key].float() for m in loaded]) for key in loaded[0]}
    dets = [json.loads((out_dir / f"deterministic_seed{m}.json").read_text()) for m in members]
    timing = {
        "train_s_per_epoch": sum(d["timing"]["train_s_per_epoch"] for d in dets),
        "predict_ms_per_image": sum(d["timing"]["predict_ms_per_image"] for d in dets),
    }
    return {
        "method": name,
        "seed": seed,
        "members": list(members),
        **evaluate(samples, data),
        **(
            {"calibrated": calibrated_metrics(samples["val"], data["y_val"], samples["test"], data)}
            if "val" in samples  # members run before calibration existed kept no validation
            else {}
        ),
        "timing": timing,
    }


def _summary(r: dict) -> str:
    """One printed line per run (validation metrics for a model-selection run)."""
    if "test" not in r:
        v = r["validation"]
        options = " ".join(f"{k}={r[k]}" for k in METHODS[r["method"]].options)
        return (
            f"{r['method']:<38} seed {r['seed']} {options}: validation acc "
            f"{v['accuracy']:.3f} NLL {v['nll']:.3f} ECE {v['ece']:.3f} "
            f"{r['timing']['train_s_per_epoch']:.1f} s/epoch"
        )
    t, o = r["test"], r["ood"]
    return (
        f"{r['method']:<38} seed {r['seed']}: acc {t['accuracy']:.3f} NLL {t['nll']:.3f} "
        f"ECE {t['ece']:.3f} Brier {t['brier']:.3f} AUROC H {o['auroc_entropy']:.3f} "
        f"MI {o['auroc_mutual_information']:.3f} {r['timing']['train_s_per_epoch']:.1f} s/epoch"
    )


def load_data(args: argparse.Namespace) -> dict[str, Tensor]:
    """Fashion-MNIST train/validation/test and MNIST OOD, floats (N, 1, 28, 28) in [0, 1]."""
    x, y = load_fashion_mnist("train", args.data_dir)
    x_te, y_te = load_fashion_mnist("test", args.data_dir)
    x_ood, _ = load_mnist_ood(args.data_dir)
    if args.quick:  # a few hundred images: the test suite's budget
        x, y, x_te, y_te, x_ood = x[:2000], y[:2000], x_te[:500], y_te[:500], x_ood[:500]
    (x_tr, y_tr), (x_val, y_val) = train_validation_split(x, y)
    return {
        "x_train": to_float(x_tr), "y_train": y_tr, "x_val": to_float(x_val), "y_val": y_val,
        "x_test": to_float(x_te), "y_test": y_te, "x_ood": to_float(x_ood),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*METHODS, *ENSEMBLES]
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated: {', '.join(names)} (default: deterministic, unless only "
        "--table, --figures or --rescore is asked for)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated integers")
    parser.add_argument("--epochs", type=int, default=None, help="default: the method's")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=None, help="K for sampled methods")
    parser.add_argument("--prior-scale", type=float, default=None, help="VI methods' prior")
    parser.add_argument("--scale-init", type=float, default=None, help="VI posterior init")
    parser.add_argument("--dropout", type=float, default=None, help="MC dropout's rate")
    parser.add_argument("--temperature", type=float, default=None, help="heteroscedastic τ")
    parser.add_argument("--norm-bound", type=float, default=None, help="SNGP's spectral bound")
    parser.add_argument("--ivon-lr", type=float, default=None, help="IVON's learning rate")
    parser.add_argument("--hess-init", type=float, default=None, help="IVON's initial Hessian")
    parser.add_argument(
        "--validation-only", action="store_true", help="model selection: skip the test sets"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    parser.add_argument("--quick", action="store_true", help="1 epoch, K=4, <= 2000 train images")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="merge the JSONs in --out-dir")
    parser.add_argument("--figures", action="store_true", help="draw the figures (matplotlib)")
    parser.add_argument(
        "--cost", action="store_true", help="time --methods side by side into <out-dir>/cost.json"
    )
    parser.add_argument("--cost-rounds", type=int, default=7)
    parser.add_argument(
        "--rescore", action="store_true", help="recompute deterministic runs from saved probs"
    )
    parser.add_argument(
        "--table-path", type=Path, default=None,
        help="default: benchmarks/results/images.md (with --quick: <out-dir>/images.md)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_samples, args.batch_size = 1, 4, 32
    if args.table_path is None:  # figures go beside the table
        args.table_path = (args.out_dir if args.quick else HERE / "results") / "images.md"
    only_report = args.table or args.figures or args.rescore
    if args.methods is None:
        args.methods = "" if only_report else "deterministic"
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS and not m.startswith("ensemble_")]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {names}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    results: list[dict] = []
    if args.cost:
        cost = measure_cost(methods, load_data(args), args)
        (args.out_dir / "cost.json").write_text(json.dumps(cost, indent=1))
        for name, c in cost.items():
            print(f"{name:<38} train x{c['train_ratio']:.2f} predict x{c['predict_ratio']:.2f}")
        return results
    if methods:
        data = load_data(args)
        # trained methods first: the ensembles read the deterministic runs' files
        for name in sorted(methods, key=lambda m: m.startswith("ensemble_")):
            for seed in seeds:
                if name.startswith("ensemble_"):
                    try:
                        r = evaluate_ensemble(name, seed, data, args.out_dir)
                    except MissingMembers as error:
                        print(f"skipped: {error}", file=sys.stderr)
                        continue
                else:
                    r = run_one(name, seed, data, args)
                path = args.out_dir / f"{name}{args.tag}_seed{seed}.json"
                path.write_text(json.dumps(r, indent=1))
                print(_summary(r), flush=True)
                results.append(r)
    if args.rescore:
        for path in rescore(args.out_dir, load_data(args)):
            print(f"rescored {path}")
    if args.table:
        print(write_table(args.out_dir, args.table_path))
    if args.figures:
        for path in write_figures(args.out_dir, args.table_path.parent):
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
