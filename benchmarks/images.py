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
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.layers.registry import counterparts
from bayesian_layers.metrics import (
    accuracy,
    auroc,
    brier_score,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
)

ANGLES = tuple(range(0, 181, 15))
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


@dataclass(frozen=True)
class Method:
    """One row of the table: how to build the model, and its defaults."""

    build: Callable[[], nn.Module]
    epochs: int = 25  # uncertainty-baselines: 5000 steps of 256 on 50 000 images
    num_samples: int = 1  # function samples in the predictive (1: deterministic)


def _hand_built(estimator: str) -> Callable[[], nn.Module]:
    conv, linear = (
        dict(counterparts(nn.Conv2d))[estimator],
        dict(counterparts(nn.Linear))[estimator],
    )
    return lambda: lenet5(conv, linear)


def _converted(estimator: str) -> Callable[[], nn.Module]:
    return lambda: bl.to_bayesian(lenet5(), estimator=estimator)


#: name -> Method. Later issues add one entry each; ``ensemble_<k>`` is built from the
#: deterministic runs (see :func:`evaluate_ensemble`), not trained.
METHODS: dict[str, Method] = {
    "deterministic": Method(lenet5),
    "mc_dropout": Method(lambda: lenet5(dropout=0.1), num_samples=10),
}
for _est in ("reparameterization", "flipout", "local_reparameterization"):
    METHODS[f"vi_{_est}"] = Method(_hand_built(_est), epochs=50, num_samples=10)
    METHODS[f"vi_{_est}_converted"] = Method(_converted(_est), epochs=50, num_samples=10)
ENSEMBLES = ("ensemble_5", "ensemble_10")


def aupr(scores: Tensor, is_positive: Tensor) -> Tensor:
    """Area under the precision-recall curve as average precision (scikit-learn's
    ``average_precision_score``): ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds.
    (Belongs in ``bl.metrics``.)"""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, pos = scores.double()[order], is_positive.to(torch.bool)[order].double()
    tp, fp = pos.cumsum(0), (1 - pos).cumsum(0)
    last = torch.ones_like(s, dtype=torch.bool)  # last index of each tied threshold
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / pos.sum()
    return (torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum()


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
    return out


@torch.no_grad()
def prob_samples(model: nn.Module, x: Tensor, num_samples: int, chunk: int = 500) -> Tensor:
    """Softmax outputs of ``num_samples`` function samples, ``(K, N, C)``."""
    model.eval()
    parts = [
        bl.predict(model, xb, num_samples=num_samples, transform=lambda z: z.softmax(-1)).samples
        for xb in x.split(chunk)
    ]
    return torch.cat(parts, dim=1)


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, batch_size: int, lr: float) -> float:
    """Adam on the per-example ELBO, NLL + KL/N (the KL is 0 for non-Bayesian models);
    returns seconds per epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx]) + sum(bl.losses(model)) / n
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (time.perf_counter() - start) / max(epochs, 1)


def evaluate(samples: dict[str, Tensor], data: dict[str, Tensor]) -> dict:
    """Every metric from probability samples of the test, OOD and rotated test sets."""
    y = data["y_test"]
    return {
        "test": classification_metrics(samples["test"].mean(0), y),
        "ood": ood_metrics(samples["test"], samples["ood"]),
        "rotation": {str(a): classification_metrics(samples[f"rot{a}"].mean(0), y) for a in ANGLES},
    }


def predict_all(model: nn.Module, data: dict[str, Tensor], k: int) -> tuple[dict, float]:
    """Probability samples on every evaluation set; milliseconds per test image."""
    start = time.perf_counter()
    samples = {"test": prob_samples(model, data["x_test"], k)}
    ms = 1e3 * (time.perf_counter() - start) / len(data["x_test"])
    samples["ood"] = prob_samples(model, data["x_ood"], k)
    for a in ANGLES:
        samples[f"rot{a}"] = (
            samples["test"] if a == 0 else prob_samples(model, rotate(data["x_test"], a), k)
        )
    return samples, ms


def run_one(name: str, seed: int, data: dict[str, Tensor], args: argparse.Namespace) -> dict:
    """Train and evaluate one (method, seed); deterministic runs also save their probs."""
    method = METHODS[name]
    epochs = args.epochs if args.epochs is not None else method.epochs
    k = args.num_samples if (args.num_samples and method.num_samples > 1) else method.num_samples
    torch.manual_seed(seed)
    model = method.build()
    sec = train(model, data["x_train"], data["y_train"], epochs, args.batch_size, args.lr)
    samples, ms = predict_all(model, data, k)
    val = classification_metrics(prob_samples(model, data["x_val"], k).mean(0), data["y_val"])
    if name == "deterministic":
        torch.save(
            {key: v.half() for key, v in samples.items()},
            args.out_dir / f"deterministic_seed{seed}_probs.pt",
        )
    return {
        "method": name, "seed": seed, "epochs": epochs, "num_samples": k,
        "batch_size": args.batch_size, "lr": args.lr, "num_train": len(data["x_train"]),
        "validation": val, **evaluate(samples, data),
        "timing": {"train_s_per_epoch": sec, "predict_ms_per_image": ms},
        "threads": torch.get_num_threads(),
    }  # fmt: skip


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
        "timing": timing,
    }


#: uncertainty-baselines, baselines/mnist/README.md, Fashion-MNIST: NLL, accuracy %, ECE.
PUBLISHED = (
    ("deterministic (published)", 0.321, 91.0, None),
    ("deep ensemble, 10 (published)", 0.200, 93.2, 0.010),
    ("refined VI (published)", 0.259, 90.6, 0.011),
    ("VI (published)", 0.292, 89.5, 0.011),
)


OOD_KEYS = ("auroc_entropy", "auroc_mutual_information", "aupr_entropy", "aupr_mutual_information")


def _mean_se(values: list[float], digits: int = 3) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return f"{t.mean():.{digits}f}"
    return f"{t.mean():.{digits}f} ± {t.std() / len(values) ** 0.5:.{digits}f}"


def write_table(out_dir: Path, path: Path) -> str:
    """Merge ``<method>_seed<s>.json`` in ``out_dir`` into a Markdown table at ``path``:
    mean ± standard error over seeds; cost as ratios to the deterministic runs' means."""
    runs: dict[str, list[dict]] = {}
    for f in sorted(out_dir.glob("*_seed*.json")):
        r = json.loads(f.read_text())
        runs.setdefault(r["method"], []).append(r)
    if not runs:
        raise FileNotFoundError(f"write_table: no <method>_seed<s>.json in {out_dir}")
    det = runs.get("deterministic", [])
    keys = ("train_s_per_epoch", "predict_ms_per_image")
    base = {k: sum(r["timing"][k] for r in det) / len(det) for k in keys} if det else None
    cols = ["method", "seeds", "NLL", "accuracy %", "ECE", "Brier", "AUROC H", "AUROC MI",
            "AUPR H", "AUPR MI", "NLL at 90°", "train ×det", "predict ×det"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, rs in runs.items():

        def col(get: Callable[[dict], float], rs: list[dict] = rs, digits: int = 3) -> str:
            return _mean_se([get(r) for r in rs], digits)

        cost = ["—", "—"]
        if base:
            cost = [f"{sum(r['timing'][k] for r in rs) / len(rs) / base[k]:.2f}" for k in base]
        lines.append("| " + " | ".join([
            name, str(len(rs)), col(lambda r: r["test"]["nll"]),
            col(lambda r: 100 * r["test"]["accuracy"], digits=1), col(lambda r: r["test"]["ece"]),
            col(lambda r: r["test"]["brier"]),
            *(col(lambda r, k=k: r["ood"][k]) for k in OOD_KEYS),
            col(lambda r: r["rotation"]["90"]["nll"]), *cost]) + " |")  # fmt: skip
    for name, nll, acc, ece in PUBLISHED:
        cells = [name, "—", f"{nll:.3f}", f"{acc:.1f}", "—" if ece is None else f"{ece:.3f}"]
        lines.append("| " + " | ".join(cells + ["—"] * (len(cols) - len(cells))) + " |")
    text = (
        "# Image benchmark: LeNet-5 on Fashion-MNIST (benchmarks/images.py)\n\n"
        "Mean ± standard error over seeds. OOD: MNIST digits as positives, scored by predictive "
        "entropy (H) or mutual information (MI). Cost: ratio to the deterministic runs' mean. "
        "Protocol: docs/images.md.\n\n" + "\n".join(lines) + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


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
        "--methods", default="deterministic", help=f"comma-separated: {', '.join(names)}"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated integers")
    parser.add_argument("--epochs", type=int, default=None, help="default: the method's")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=None, help="K for sampled methods")
    parser.add_argument("--quick", action="store_true", help="1 epoch, K=4, <= 2000 train images")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="merge the JSONs in --out-dir")
    parser.add_argument("--table-path", type=Path, default=HERE / "results" / "images.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_samples, args.batch_size = 1, 4, 32
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS and not m.startswith("ensemble_")]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {names}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    results = []
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
                (args.out_dir / f"{name}_seed{seed}.json").write_text(json.dumps(r, indent=1))
                t, o = r["test"], r["ood"]
                print(
                    f"{name:<38} seed {seed}: acc {t['accuracy']:.3f} NLL {t['nll']:.3f} "
                    f"ECE {t['ece']:.3f} Brier {t['brier']:.3f} "
                    f"AUROC H {o['auroc_entropy']:.3f} MI {o['auroc_mutual_information']:.3f} "
                    f"{r['timing']['train_s_per_epoch']:.1f} s/epoch",
                    flush=True,
                )  # fmt: skip
                results.append(r)
    if args.table:
        print(write_table(args.out_dir, args.table_path))
    return results


if __name__ == "__main__":
    main()
