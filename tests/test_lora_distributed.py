"""Bayesian LoRA under ``torchrun --nproc_per_node=2`` (data parallel: DDP, gloo, CPU).

The test launches this file with ``python -m torch.distributed.run --standalone
--nproc_per_node=2`` once; each rank fine-tunes a small character transformer of
``examples/bayesian_transformer.py`` with Bayesian adapters (each estimator) on its
half of a global batch, loss ``bl.distributed.elbo_loss`` (the KL counted once), and
rank 0 saves what it measured next to a single-process reference on the whole batch
(float64):

* at the posterior mean (``bl.posterior_mean``: deterministic), the rank-averaged
  loss and the all-reduced adapter gradients equal those of one process on the
  concatenated batch, and one Adam step leaves identical adapters on both ranks,
  equal to the single-process step;
* sampled, with identical noise seeds (each half drawn under
  ``bl.distributed.manual_seed(SEED, rank=r)`` in both runs), the same holds for the
  global negative ELBO: likelihood over the global batch plus the KL once;
* the base model's parameters get no gradient and are unchanged by the step.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")
WORLD, SEED, N_TRAIN = 2, 5, 1000
SIZES = dict(dim=16, heads=2, hidden=32, depth=2, context=12)
GLOBAL_BATCH = 8  # sequences, 4 per rank
LORA_TARGETS = ["out_proj", "ff.0", "ff.2"]
# float64: the sums of the two halves regrouped; relative to the largest value
RTOL = 1e-10


# ------------------------------------------------------------------ the torchrun script
def _build(posterior: str) -> torch.nn.Module:
    from bayesian_transformer import VOCAB, CharTransformer

    import bayesian_layers as bl
    from bayesian_layers.adapters import adapters

    torch.manual_seed(0)
    s = SIZES
    base = CharTransformer(
        len(VOCAB), s["dim"], s["heads"], s["hidden"], s["depth"], s["context"], bayesian=False
    )
    model = bl.lora(base.double(), target=LORA_TARGETS, rank=2, posterior=posterior,
                    init_std=0.1)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, a in adapters(model):
            w = a.lora_B.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype))
    return model


def _tokens() -> torch.Tensor:
    from bayesian_transformer import VOCAB

    g = torch.Generator().manual_seed(2)
    return torch.randint(0, len(VOCAB), (GLOBAL_BATCH, SIZES["context"] + 1), generator=g)


def _nll(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-character NLL of ``tokens`` ``(B, T+1)``."""
    logits = model(tokens[:, :-1])  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def _adapter_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def _rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    scale = max(v.abs().max().item() for v in b.values())
    return max((a[k] - b[k]).abs().max().item() for k in a) / max(scale, 1e-300)


def _run_case(posterior: str, rank: int, sampled: bool) -> dict[str, Any]:
    """One DDP step on this rank's half against one process on the whole batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import bayesian_layers as bl
    from bayesian_layers import distributed as bld

    tokens = _tokens()
    halves = tokens.chunk(WORLD)
    model = _build(posterior)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()
                   if not p.requires_grad}  # fmt: skip
    ddp = DDP(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    mode = bl.posterior_mean(model) if not sampled else contextlib.nullcontext()
    bld.manual_seed(SEED, rank=rank)
    with mode:
        nll = _nll(ddp, halves[rank])
    loss = bld.elbo_loss(nll, model, N_TRAIN, per_rank=False)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in _adapter_params(model).items()}
    base_grads = [n for n, p in model.named_parameters() if p.grad is not None and n not in grads]
    opt.step()
    losses = [torch.zeros((), dtype=torch.float64) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    params = {n: p.detach().clone() for n, p in _adapter_params(model).items()}
    gathered: list[dict[str, torch.Tensor] | None] = [None] * WORLD
    dist.all_gather_object(gathered, params)
    base_after = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    out: dict[str, Any] = {
        "base_grads": base_grads,
        "base_changed": [n for n, p in base_after.items() if not torch.equal(p, base_before[n])],
        "num_base": len(base_before),
    }
    if rank != 0:
        return out
    # the single-process reference: the whole batch (posterior mean), or the halves in
    # turn under each rank's seed (sampled), loss = NLL of the global batch + KL / N once
    ref = _build(posterior)
    ref_opt = torch.optim.Adam([p for p in ref.parameters() if p.requires_grad], lr=1e-2)
    if sampled:
        nll_ref = 0.0
        for r in range(WORLD):
            bld.manual_seed(SEED, rank=r)
            nll_ref = nll_ref + _nll(ref, halves[r]) / WORLD
    else:
        with bl.posterior_mean(ref):
            nll_ref = _nll(ref, tokens)
    loss_ref = nll_ref + sum(bl.losses(ref)) / N_TRAIN
    loss_ref.backward()
    ref_grads = {n: p.grad.detach().clone() for n, p in _adapter_params(ref).items()}
    ref_opt.step()
    ref_params = {n: p.detach().clone() for n, p in _adapter_params(ref).items()}
    out.update(
        loss=sum(t.item() for t in losses) / WORLD,
        rank_losses=[t.item() for t in losses],
        loss_ref=loss_ref.item(),
        grad_err=_rel_err(grads, ref_grads),
        grad_min_abs=min(g.abs().max().item() for g in ref_grads.values()),
        num_adapter_params=len(ref_grads),
        step_err=max(_rel_err(p, ref_params) for p in gathered if p is not None),
        ranks_equal=all(
            torch.equal(p[k], gathered[0][k])  # type: ignore[index]
            for p in gathered
            if p is not None
            for k in p
        ),  # fmt: skip
        moved=max(
            (ref_params[k] - v).abs().max().item()
            for k, v in _adapter_params(_build(posterior)).items()
        ),  # fmt: skip
    )
    return out


def _script(outdir: str) -> None:
    """Each rank: every estimator at the posterior mean and sampled; rank 0 writes JSON."""
    import torch.distributed as dist

    warnings.simplefilter("error")  # as pytest's filterwarnings = error
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict[str, Any] = {"world": dist.get_world_size()}
    for posterior in ESTIMATORS:
        for sampled in (False, True):
            key = f"{posterior}/{'sampled' if sampled else 'mean'}"
            try:
                results[key] = _run_case(posterior, rank, sampled)
            except Exception as e:  # noqa: BLE001 - reported by the test
                results[key] = {"error": f"rank {rank}: {type(e).__name__}: {e}"}
    all_results: list[dict[str, Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(all_results, results)
    dist.destroy_process_group()
    if rank == 0:
        Path(outdir, "results.json").write_text(json.dumps(all_results))


# ------------------------------------------------------------------ the tests
ROOT = Path(__file__).resolve().parents[1]


def _torchrun(outdir: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={WORLD}", __file__, outdir],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    """Rank-ordered results of one torchrun launch. A launch whose processes die (a
    signal, a lost loopback connection: each case's Python errors are reported in the
    results instead) is tried once more."""
    import tempfile

    with tempfile.TemporaryDirectory() as outdir:
        proc = _torchrun(outdir)
        if proc.returncode != 0:
            proc = _torchrun(outdir)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        return json.loads(Path(outdir, "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [False, True], ids=["posterior_mean", "same_noise"])
@pytest.mark.parametrize("posterior", ESTIMATORS)
def test_torchrun_ddp_equals_one_process_on_the_global_batch(
    results: list[dict[str, Any]], posterior: str, sampled: bool
) -> None:
    key = f"{posterior}/{'sampled' if sampled else 'mean'}"
    assert len(results) == WORLD and all(r["world"] == WORLD for r in results)
    for r in results:
        assert "error" not in r[key], r[key]["error"]
    r0 = results[0][key]
    assert r0["loss"] == pytest.approx(r0["loss_ref"], rel=RTOL)
    assert r0["rank_losses"][0] != r0["rank_losses"][1]  # the halves differ: a real split
    assert r0["grad_err"] < RTOL
    assert r0["grad_min_abs"] > 1e-6  # every adapter tensor gets a gradient
    assert r0["num_adapter_params"] == 3 * SIZES["depth"] * 3  # loc, rho of A; B
    assert r0["step_err"] < RTOL and r0["ranks_equal"]
    assert r0["moved"] > 1e-4  # the Adam step changed the adapters


@pytest.mark.slow
def test_torchrun_base_parameters_get_no_gradient(results: list[dict[str, Any]]) -> None:
    for r in results:
        for key, case in r.items():
            if key == "world":
                continue
            assert "error" not in case, case["error"]
            assert case["num_base"] > 0
            assert case["base_grads"] == [] and case["base_changed"] == [], key


@pytest.mark.slow
def test_sampled_loss_is_not_the_posterior_mean_loss(results: list[dict[str, Any]]) -> None:
    """The noise is on: the sampled comparison is not the posterior-mean one again."""
    for posterior in ESTIMATORS:
        mean, sampled = (results[0][f"{posterior}/{k}"]["loss"] for k in ("mean", "sampled"))
        assert abs(mean - sampled) > 1e-6


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "examples"))
    _script(sys.argv[1])
