"""Bayesian LoRA on real text: calibrated fine-tuning of a pretrained character model.

The character transformer of ``examples/bayesian_transformer.py`` (deterministic:
torch's attention and linear layers) is pretrained on the source code of CPython's
standard library, then fine-tuned on English prose that ships with Python: the help
texts of ``pydoc_data.topics`` (a fixed split by topic: every fourth topic, in sorted
order, is held out). Nothing is downloaded. From the same pretrained weights, with the
same adapters, steps and batches, it fine-tunes

* plain LoRA (``bl.lora(model, posterior=None)``, Hu et al. 2022),
* Bayesian LoRA (``posterior="flipout"`` and ``"reparameterization"``: a mean-field
  normal posterior on the down projection ``A``, as in BLoB, Wang et al. 2024), trained
  on ``NLL + sum(bl.losses(model)) / N`` with ``N`` the number of training characters
  and predicting with ``bl.predict`` (K weight samples),
* Bayesian LoRA on the last feed-forward output only (``--methods tail``: the
  reparameterization posterior on the last block's ``ff.2``, plain adapters elsewhere),
  predicting with ``bl.predict(..., trunk="prefix")``: every module before that adapter
  runs once for the K samples, the cheapest exact predictive of the adapted model,
* Laplace-LoRA (Yang et al. 2024): plain LoRA's adapters (MAP), loaded into a
  ``posterior="laplace"`` model through ``bl.lora_state_dict``, then a Kronecker-factored
  Laplace posterior over the adapters only (``bl.laplace.fit(..., hessian="kron",
  subset="lora")``), its prior precision chosen on validation text, predicting with the
  linearised (GLM) predictive of the paper: K samples of the network linearised at the MAP
  adapters (``bl.laplace.linearized_samples``: Jacobian-vector products, no Jacobian),
  whose mean is the MAP logits,

on the attention output projections and both feed-forward layers of every block. It
reports held-out next-character NLL, expected calibration error (ECE, 15 bins) and
accuracy for each and for the base model, writes them to ``bayesian_lora.json`` and
draws the reliability diagram (confidence against accuracy) into
``bayesian_lora_reliability.png`` under ``--output-dir``. Last, Bayesian LoRA (Flipout)
continues the start of the held-out text with ``bl.generate`` (K samples mixed per
character), and the characters it was least sure of, by their epistemic uncertainty
(the mutual information between the character and the adapters), are printed.

    python examples/bayesian_lora.py            # about 8 minutes on one CPU core
    python examples/bayesian_lora.py --quick    # a tiny model, a few steps (tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bayesian_transformer import VOCAB, CharTransformer, batches, corpus, encode
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.adapters import load_lora_state_dict, lora, lora_state_dict

#: LoRA targets: attention output projection and both feed-forward linears of each block
TARGETS = ("out_proj", "ff.0", "ff.2")
TAIL_NAME = "Bayesian LoRA (last ff.2 only)"
NUM_BINS = 15


def prose_split() -> tuple[str, str]:
    """``(train, held_out)`` English text: ``pydoc_data.topics`` help texts, every fourth
    topic in sorted key order held out (19 of 79 topics, about 68k characters)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    held = [k for i, k in enumerate(keys) if i % 4 == 3]
    train = [k for k in keys if k not in held]
    return "\n\n".join(topics[k] for k in train), "\n\n".join(topics[k] for k in held)


def windows(tokens: Tensor, context: int, count: int) -> Tensor:
    """The first ``count`` non-overlapping windows of ``context + 1`` tokens:
    ``(count, context + 1)``; consecutive windows share their boundary token."""
    n = min(count, (len(tokens) - 1) // context)
    return torch.stack([tokens[i * context : i * context + context + 1] for i in range(n)])


def pretrain(
    sizes: dict[str, int], steps: int, chars: int, seed: int, log: Callable[[str], None]
) -> CharTransformer:
    """The deterministic character transformer, trained with AdamW on :func:`corpus`."""
    torch.manual_seed(seed)
    model = CharTransformer(
        len(VOCAB), sizes["dim"], sizes["heads"], sizes["hidden"], sizes["depth"],
        sizes["context"], bayesian=False,
    )  # fmt: skip
    data = encode(corpus(chars))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(1, steps + 1):
        chunk = batches(data, sizes["batch"], sizes["context"], gen)
        loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 4) == 0:
            log(f"  pretrain step {step:5d}  NLL {loss.item():.3f} nats/char")
    return model.eval()


def frozen_state(model: nn.Module) -> dict[str, Tensor]:
    """The base model's tensors inside an adapted model, under their pre-LoRA names."""
    return {
        k.replace(".base.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_A." not in k and ".lora_B." not in k
    }


def adapt(base: nn.Module, posterior: str | None, tail: bool, **kwargs: Any) -> nn.Module:
    """A copy of ``base`` with adapters on ``TARGETS`` of every block: all with
    ``posterior``, or (``tail``) plain adapters but on the last block's ``ff.2``."""
    model = copy.deepcopy(base)
    if not tail:
        return lora(model, target=list(TARGETS), posterior=posterior, **kwargs)
    names = [n for n, _ in model.named_modules() if n.endswith(TARGETS)]
    last = f"blocks.{len(model.blocks) - 1}.ff.2"
    lora(model, target=[n for n in names if n != last], posterior=None, **kwargs)
    return lora(model, target=[last], posterior=posterior, **kwargs)


def finetune(
    model: nn.Module,
    train: Tensor,
    *,
    steps: int,
    batch: int,
    context: int,
    lr: float,
    seed: int,
    kl_weight: float = 1.0,
) -> float:
    """Train the adapters of ``model`` for ``steps`` AdamW steps on random windows of
    ``train``; loss ``NLL + kl_weight * sum(bl.losses(model)) / N`` with ``N = len(train)``
    (no KL for plain adapters). Returns the mean step time in seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)  # the same batches for every method
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        chunk = batches(train, batch, context, gen)
        nll = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        kl = bl.losses(model)
        loss = nll + kl_weight * torch.stack(kl).sum() / len(train) if kl else nll
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return (time.perf_counter() - start) / steps


def laplace_lora(
    model: nn.Module,
    train: Tensor,
    valid: Tensor,
    *,
    context: int,
    batch: int,
    samples: int,
    mc_samples: int,
    log: Callable[[str], None],
) -> tuple[nn.Module, dict[str, float]]:
    """Kronecker Laplace over the adapters of ``model`` (trained, ``posterior="laplace"``),
    the curvature from every non-overlapping window of ``train`` (a GGN term per token;
    KFAC "expand", see :mod:`bayesian_layers.laplace.curvature`; ``mc_samples > 0``: its
    Monte Carlo estimate from that many sampled labels per token instead of one backward
    pass per vocabulary entry). The prior precision
    ``τ``: of the evidence maximiser ``τ_ml`` and ``τ_ml·10^(k/2)`` (k = 1..6), the one of best
    predictive NLL on ``valid`` windows (text of the training topics that fine-tuning did
    not see; never the held-out topics), under the linearised predictive. Returns the
    Bayesian language model and the precisions."""
    data = windows(train, context, len(train))
    loader = [(w[:, :-1], w[:, 1:]) for w in data.split(batch)]  # (B, T) targets
    post = bl.laplace.fit(
        model, loader, hessian="kron", subset="lora", mc_samples=mc_samples
    )  # in place
    curv = post.laplace_curvature
    tau_ml = float(bl.laplace.optimize_prior_precision(post, n_steps=100, write=False))
    scores = {}
    for tau in (tau_ml * 10.0 ** (k / 2) for k in range(7)):
        bl.laplace.write_posterior(curv, tau)
        torch.manual_seed(0)
        scores[tau] = evaluate(post, valid, samples, bayesian=True, linearized=True)[0]["nll"]
    best = min(scores, key=scores.__getitem__)
    bl.laplace.write_posterior(curv, best)
    log("  Laplace-LoRA: prior precision " + ", ".join(
        f"{t:.3g}{' (evidence)' if t == tau_ml else ''}: validation NLL {v:.4f}"
        for t, v in scores.items()) + f"; chosen {best:.3g}")  # fmt: skip
    return post, {"prior_precision": best, "evidence_prior_precision": tau_ml}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Tensor,
    samples: int,
    bayesian: bool,
    chunk: int = 32,
    *,
    linearized: bool = False,
    trunk: str | None = "auto",
) -> tuple[dict[str, float], Tensor, Tensor]:
    """Held-out next-character metrics of ``model`` on ``data`` windows ``(W, T + 1)``:
    the predictive ``bl.predict(model, x, samples, trunk=trunk)`` averaged over weight
    samples (a Bayesian model), the mean softmax of ``samples`` draws of the network linearised at
    the posterior means (``linearized``: ``bl.laplace.linearized_samples``, antithetic
    pairs, so the mean logits are the MAP's), or the model's softmax. Returns the
    metrics and the ``(W·T, V)`` probabilities with their ``(W·T,)`` labels."""
    model.eval()
    probs = []
    for w in data.split(chunk):
        x = w[:, :-1]
        if linearized:
            probs.append(bl.laplace.linearized_samples(model, x, samples).softmax(-1).mean(0))
        elif bayesian:
            pred = bl.predict(model, x, samples, transform=lambda z: z.softmax(-1), trunk=trunk)
            probs.append(pred.mean)
        else:
            probs.append(model(x).softmax(-1))
    p = torch.cat(probs).flatten(0, 1).double()
    y = data[:, 1:].flatten()
    metrics = {
        "nll": bl.metrics.negative_log_likelihood(p, y).item(),
        "ece": bl.metrics.expected_calibration_error(p, y, NUM_BINS).item(),
        "accuracy": bl.metrics.accuracy(p, y).item(),
        "mean_confidence": p.max(-1).values.mean().item(),
    }
    return metrics, p, y


def continue_text(
    model: nn.Module, prompt: str, n: int, samples: int, context: int, seed: int
) -> dict[str, Any]:
    """``n`` characters after ``prompt`` from ``model``'s posterior predictive
    (``bl.generate``: ``samples`` function samples mixed per character, temperature 0.8,
    the last ``context`` characters fed), with the per-character uncertainty in nats."""
    model.eval()
    torch.manual_seed(seed)
    out = bl.generate(model, encode(prompt)[None], n, samples, temperature=0.8,
                      context=context, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    text = "".join(VOCAB[i] for i in out.tokens[0, -n:].tolist())
    epistemic = out.epistemic[0]  # (n,)
    top = sorted(epistemic.topk(min(3, n)).indices.tolist())
    return {
        "prompt": prompt, "text": text,
        "mean_total": out.total[0].mean().item(),
        "mean_epistemic": epistemic.mean().item(),
        "least_sure": [{"at": i, "char": text[i], "epistemic": epistemic[i].item()}
                       for i in top],
    }  # fmt: skip


def correct(p: Tensor, y: Tensor) -> Tensor:
    """``1.0`` where the most probable character is the true one: ``(N,)``."""
    return (p.argmax(-1) == y).double()


def plot(curves: dict[str, tuple[Tensor, Tensor]], path: Path) -> None:
    """Reliability diagram: per-bin accuracy against per-bin confidence, one curve each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    for name, (p, y) in curves.items():
        bins = bl.metrics.reliability_bins(p, y, NUM_BINS)
        keep = bins.counts > 0
        ece = bl.metrics.expected_calibration_error(p, y, NUM_BINS).item()
        ax.plot(bins.confidence[keep], bins.accuracy[keep], marker="o", ms=3,
                label=f"{name}: ECE {ece:.3f}")  # fmt: skip
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy",
           xlim=(0, 1), ylim=(0, 1), title="held-out pydoc help texts: next character")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--finetune-chars", type=int, default=None,
                        help="characters of training prose (small: LoRA overfits)")  # fmt: skip
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--prior-std", type=float, default=1.0)
    parser.add_argument("--init-std", type=float, default=0.05)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--methods", default="flipout,reparameterization,tail,laplace",
                        help="comma-separated, besides the base model and plain LoRA")  # fmt: skip
    parser.add_argument("--laplace-mc-samples", type=int, default=16,
                        help="sampled labels per token, Laplace curvature (0: exact)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=8, help="K for bl.predict")
    parser.add_argument("--base-checkpoint", type=Path, default=None,
                        help="reuse the pretrained weights saved here (pretrain and save "
                             "them there if the file does not exist)")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    if args.quick:
        sizes = dict(dim=32, heads=4, hidden=64, depth=1, context=32, batch=16)
        pre_steps, ft_steps, pre_chars, ft_chars, eval_windows = 60, 30, 60_000, 6_000, 16
    else:
        sizes = dict(dim=128, heads=4, hidden=512, depth=2, context=64, batch=32)
        pre_steps, ft_steps, pre_chars, ft_chars, eval_windows = 1200, 400, 400_000, 16_000, 512
    pre_steps = args.pretrain_steps or pre_steps
    ft_steps = args.finetune_steps or ft_steps
    ft_chars = args.finetune_chars or ft_chars
    context, batch = sizes["context"], sizes["batch"]

    def log(line: str) -> None:
        print(line, flush=True)

    train_text, held_text = prose_split()
    train = encode(train_text[:ft_chars])
    # validation (Laplace's prior precision only): training topics' text past the fine-tune set
    valid = windows(encode(train_text[ft_chars:]), context, eval_windows // 4)
    held = windows(encode(held_text), context, eval_windows)
    start = time.perf_counter()
    ckpt = args.base_checkpoint
    if ckpt is not None and ckpt.exists():
        base = CharTransformer(
            len(VOCAB), sizes["dim"], sizes["heads"], sizes["hidden"], sizes["depth"],
            context, bayesian=False,
        ).eval()  # fmt: skip
        base.load_state_dict(torch.load(ckpt, weights_only=True))
        log(f"  loaded the pretrained weights from {ckpt}")
    else:
        log(f"pretraining on {pre_chars} characters of CPython's standard library "
            f"({pre_steps} steps)")  # fmt: skip
        base = pretrain(sizes, pre_steps, pre_chars, args.seed, log)
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(base.state_dict(), ckpt)
    pretrain_seconds = time.perf_counter() - start
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    results: dict[str, dict[str, float]] = {}
    curves: dict[str, tuple[Tensor, Tensor]] = {}
    metrics, p, y = evaluate(base, held, args.samples, bayesian=False)
    results["base (no fine-tune)"], curves["base (no fine-tune)"] = metrics, (p, y)
    base_unchanged, base_no_grad = True, True
    plain: nn.Module | None = None
    models: dict[str, nn.Module] = {}
    chosen = set(args.methods.split(",")) - {""}
    known = {"flipout", "reparameterization", "tail", "laplace"}
    if chosen - known:
        parser.error(f"--methods: unknown {sorted(chosen - known)}")
    methods = [("plain LoRA", None)] + [
        (f"Bayesian LoRA ({p})", p) for p in ("flipout", "reparameterization") if p in chosen
    ]
    if "tail" in chosen:
        methods.append((TAIL_NAME, "reparameterization"))
    log(f"fine-tuning on {len(train)} characters of pydoc help texts ({ft_steps} steps, "
        f"rank {args.rank}, targets {', '.join(TARGETS)})")  # fmt: skip
    for name, posterior in methods:
        torch.manual_seed(args.seed + 1)  # the same start of A for every method
        tail = name == TAIL_NAME
        model = adapt(base, posterior, tail, rank=args.rank, alpha=args.alpha,
                      prior_std=args.prior_std, init_std=args.init_std)  # fmt: skip
        step_time = finetune(
            model, train, steps=ft_steps, batch=batch, context=context, lr=args.lr,
            seed=args.seed + 2, kl_weight=args.kl_weight,
        )  # fmt: skip
        base_no_grad &= all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
        after = frozen_state(model)
        base_unchanged &= after.keys() == base_state.keys() and all(
            torch.equal(after[k], v) for k, v in base_state.items()
        )
        torch.manual_seed(args.seed + 3)  # the same predictive noise for every method
        metrics, p, y = evaluate(model, held, args.samples, bayesian=posterior is not None,
                                 trunk="prefix" if tail else "auto")  # fmt: skip
        metrics["step_seconds"] = step_time
        rho = [p for n, p in model.named_parameters() if n.endswith("lora_A.weight_rho")]
        if rho:  # the posterior standard deviation of A after training, averaged
            metrics["posterior_std_A"] = (
                torch.cat([F.softplus(r).flatten() for r in rho]).mean().item()
            )
        results[name], curves[name] = metrics, (p, y)
        models[name] = model
        if posterior is None:
            plain = model
        sd = f", mean posterior std of A {metrics['posterior_std_A']:.3g}" if rho else ""
        log(f"  {name}: {step_time * 1e3:.1f} ms per step{sd}")

    if "laplace" in chosen:
        assert plain is not None
        map_model = lora(copy.deepcopy(base), target=list(TARGETS), rank=args.rank,
                         alpha=args.alpha, posterior="laplace")  # fmt: skip
        load_lora_state_dict(map_model, lora_state_dict(plain))  # the MAP adapters
        start = time.perf_counter()
        lm, taus = laplace_lora(
            map_model, train, valid, context=context, batch=batch, samples=args.samples,
            mc_samples=args.laplace_mc_samples, log=log,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - start
        torch.manual_seed(args.seed + 3)
        start = time.perf_counter()
        metrics, p, y = evaluate(lm, held, args.samples, bayesian=True, linearized=True)
        metrics.update(taus, fit_seconds=fit_seconds, predict_seconds=time.perf_counter() - start)
        results["Laplace-LoRA"], curves["Laplace-LoRA"] = metrics, (p, y)
        log(f"  Laplace-LoRA: fitted in {fit_seconds:.1f} s, held-out linearised predictive "
            f"in {metrics['predict_seconds']:.1f} s")  # fmt: skip

    log(f"\nheld-out next character ({held.shape[0] * context} characters of "
        f"{held.shape[0]} windows; K = {args.samples} samples for the Bayesian rows, "
        f"Laplace-LoRA's of the linearised network)")  # fmt: skip
    # accuracy against plain LoRA's on the same characters: the paired difference and its
    # standard error (characters treated as independent: a rough, optimistic error)
    plain_correct = correct(*curves["plain LoRA"])
    for name, r in results.items():
        d = correct(*curves[name]) - plain_correct
        r["accuracy_minus_plain"] = d.mean().item()
        r["accuracy_minus_plain_se"] = (d.std() / math.sqrt(len(d))).item()
        r["ece_over_plain"] = r["ece"] / results["plain LoRA"]["ece"]
    header = (
        f"{'NLL':>7s} {'ECE':>7s} {'accuracy':>9s} {'- plain (± s.e.)':>19s} {'confidence':>11s}"
    )
    log(f"  {'method':36s} {header}")
    for name, r in results.items():
        diff = f"{r['accuracy_minus_plain']:+.4f} ± {r['accuracy_minus_plain_se']:.4f}"
        log(f"  {name:36s} {r['nll']:7.4f} {r['ece']:7.4f} {r['accuracy']:9.4f} {diff:>19s} "
            f"{r['mean_confidence']:11.4f}")  # fmt: skip
    for name, r in results.items():
        if name.startswith(("Bayesian", "Laplace")):  # the targets
            log(f"  {name}: ECE {r['ece_over_plain']:.2f} x plain LoRA's (target <= 0.5), "
                f"accuracy {r['accuracy_minus_plain']:+.4f} vs plain's (target >= 0)")  # fmt: skip
    log(f"base parameters unchanged by every fine-tune: {base_unchanged}; "
        f"no gradient reached them: {base_no_grad}")  # fmt: skip
    generated = None
    if "Bayesian LoRA (flipout)" in models:
        prompt = held_text[:context]
        generated = continue_text(models["Bayesian LoRA (flipout)"], prompt,
                                  20 if args.quick else 160, args.samples, context,
                                  args.seed + 4)  # fmt: skip
        text = generated["text"]
        log(f"\nBayesian LoRA (flipout) continues the held-out text {prompt!r} "
            f"(bl.generate, K = {args.samples}, temperature 0.8):\n  {text!r}")  # fmt: skip
        log(f"  per character: mean entropy {generated['mean_total']:.3f} nats, of it "
            f"epistemic {generated['mean_epistemic']:.4f}; least sure at")  # fmt: skip
        for u in generated["least_sure"]:
            i = u["at"]
            log(f"    {text[max(0, i - 12) : i]!r} -> {u['char']!r} "
                f"(epistemic {u['epistemic']:.4f} nats)")  # fmt: skip
    out = {
        "methods": results,
        "generated": generated,
        "base_unchanged": base_unchanged,
        "base_no_grad": base_no_grad,
        "pretrain_seconds": pretrain_seconds,
        "config": dict(sizes, pretrain_steps=pre_steps, finetune_steps=ft_steps,
                       finetune_chars=len(train), held_out_chars=held.shape[0] * context,
                       rank=args.rank, alpha=args.alpha, lr=args.lr, prior_std=args.prior_std,
                       init_std=args.init_std, kl_weight=args.kl_weight,
                       samples=args.samples, targets=list(TARGETS), seed=args.seed),
    }  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bayesian_lora.json").write_text(json.dumps(out, indent=2))
    plot(curves, args.output_dir / "bayesian_lora_reliability.png")
    log(f"written: {args.output_dir / 'bayesian_lora.json'}, "
        f"{args.output_dir / 'bayesian_lora_reliability.png'}")  # fmt: skip
    if not all(math.isfinite(v) for r in results.values() for v in r.values()):
        raise RuntimeError(f"bayesian_lora: a non-finite metric: {results}")
    return out


if __name__ == "__main__":
    main()
