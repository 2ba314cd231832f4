"""benchmarks/lora_step.py runs (a tiny configuration), reports paired ratios, checks
issue 21's step-time and predictive-cost targets at the full size only, and builds its
models as described (adapters on the named layers; Bayesian on the last block only)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_util import assert_paired_within_range, benchmark_module, run_quick

import bayesian_layers as bl
from bayesian_layers.adapters import adapters

ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")


def _module() -> ModuleType:
    return benchmark_module("lora_step")


@pytest.mark.slow
def test_quick_run_writes_paired_ratios(tmp_path: Path) -> None:
    data, stdout = run_quick("lora_step", tmp_path, "--num-samples", "4")
    meta = data["meta"]
    assert meta["num_samples"] == 4 and meta["clock"] == "cpu" and meta["threads"] == 1
    assert meta["targets"] == ["out_proj", "ff.0", "ff.2"] and meta["rank"] == 8
    train = data["train @4x8"]
    assert list(train) == [
        "plain LoRA: step",
        *(f"Bayesian LoRA {e}: step" for e in ESTIMATORS),
        "plain LoRA, out_proj not adapted: step",
    ]
    assert_paired_within_range(train, "plain LoRA: step")
    predict = data["predict K=4 @4x8"]
    assert next(iter(predict)) == "plain LoRA: one forward"
    expected = {f"Bayesian LoRA {e}, {w}: predict" for e in ESTIMATORS
                for w in ("every block", "last block")}  # fmt: skip
    expected |= {
        "plain LoRA: one forward", "base model (no adapters): one forward",
        "plain LoRA, out_proj not adapted: one forward", "plain LoRA: predict",
        "identity out projections of the out_proj adapters",
        "Bayesian LoRA flipout, every block: loop of 4",
        "Bayesian LoRA flipout, every block: predict chunk_size=1",
    }  # fmt: skip
    assert meta["trunk_prefix"] == _module().prefix_supported()
    if meta["trunk_prefix"]:  # the prefix rows exactly when bl.predict takes it
        expected |= {f"Bayesian LoRA {e}, last block: predict trunk='prefix'" for e in ESTIMATORS}
        expected |= {f"Bayesian LoRA {e}, {_module().TAIL_ROW}: predict" for e in ESTIMATORS}
        expected.add("plain LoRA: predict trunk='prefix'")
    assert set(predict) == expected
    assert_paired_within_range(predict, "plain LoRA: one forward")
    assert data["targets"] == []  # checked at the full size only
    assert "targets: checked at the full size only" in stdout


def _rows(times: dict[str, list[float]]) -> dict[str, dict]:
    return {n: {"repeats_ms": t, "median_ms": sorted(t)[len(t) // 2]} for n, t in times.items()}


def test_targets_use_paired_ratios() -> None:
    ls = _module()
    train = {"plain LoRA: step": [10.0, 20.0, 10.0]}
    train |= {f"Bayesian LoRA {e}: step": [12.0, 24.0, 12.0] for e in ESTIMATORS}  # 1.2x
    train["Bayesian LoRA flipout: step"] = [13.0, 28.0, 14.0]  # paired 1.3, 1.4, 1.4: fail
    train["plain LoRA, out_proj not adapted: step"] = [1.0] * 3  # information only
    predict = {"plain LoRA: one forward": [10.0, 10.0, 20.0]}
    for e in ESTIMATORS:
        predict[f"Bayesian LoRA {e}, every block: predict"] = [25.0, 25.0, 50.0]  # 2.5x: pass
        predict[f"Bayesian LoRA {e}, last block: predict"] = [20.0, 20.0, 40.0]
    predict["Bayesian LoRA reparameterization, last block: predict"] = [26.0, 20.0, 60.0]
    predict["base model (no adapters): one forward"] = [1.0] * 3
    results = {"train @32x64": _rows(train), "predict K=8 @32x64": _rows(predict)}
    assert ls.targets(results, full=False) == []
    checks = {c["check"]: c for c in ls.targets(results, full=True)}
    assert len(checks) == 3 + 6
    fails = {c for c, v in checks.items() if not v["pass"]}
    assert fails == {
        "train @32x64 Bayesian LoRA flipout: step <= 1.3x plain LoRA: step",
        "predict K=8 @32x64 Bayesian LoRA reparameterization, last block: predict "
        "<= 2.5x plain LoRA: one forward",
    }
    flipout = checks["train @32x64 Bayesian LoRA flipout: step <= 1.3x plain LoRA: step"]
    assert flipout["value"] == pytest.approx(1.4)  # median of the pairs, not of the medians
    assert not any("out_proj not adapted" in c or "base model" in c for c in checks)


def test_tail_only_has_one_bayesian_adapter() -> None:
    """``tail_only``: the last block's ``ff.2`` is the one Bayesian adapter; its prefix
    predictive equals the uncached one for a fixed seed (to float32 rounding: the
    matmuls see other batch sizes)."""
    ls = _module()
    base = ls.base_model(ls.QUICK_SIZES)
    model = ls.adapted(base, "reparameterization", tail_only=True)
    kinds = {n: a.posterior for n, a in adapters(model)}
    assert kinds == {
        "blocks.0.attn.out_proj": None, "blocks.0.ff.0": None, "blocks.0.ff.2": None,
        "blocks.1.attn.out_proj": None, "blocks.1.ff.0": None,
        "blocks.1.ff.2": "reparameterization",
    }  # fmt: skip
    with torch.no_grad():
        for _, a in adapters(model):
            a.lora_B.weight.normal_()
    x = torch.randint(0, 10, (3, ls.QUICK_SIZES["context"]))
    torch.manual_seed(0)
    prefix = ls._predict(model, x, 5, trunk="prefix")()
    torch.manual_seed(0)
    uncached = ls._predict(model, x, 5, trunk=None)()  # the same draws, other batch sizes
    # float32 matmuls blocked by other batch sizes: at most one rounding per term of the
    # longest reduction (the hidden width) at the outputs' scale
    depth = ls.QUICK_SIZES["hidden"]
    atol = depth * torch.finfo(torch.float32).eps * uncached.abs().max().item()
    torch.testing.assert_close(prefix, uncached, rtol=0, atol=atol)
    assert not torch.allclose(prefix[0], prefix[1])


def test_last_block_only_is_bayesian_and_predicts() -> None:
    ls = _module()
    base = ls.base_model(ls.QUICK_SIZES)
    model = ls.adapted(base, "flipout", last_only=True)
    kinds = {n: a.posterior for n, a in adapters(model)}
    assert kinds == {
        "blocks.0.attn.out_proj": None, "blocks.0.ff.0": None, "blocks.0.ff.2": None,
        "blocks.1.attn.out_proj": "flipout", "blocks.1.ff.0": "flipout",
        "blocks.1.ff.2": "flipout",
    }  # fmt: skip
    assert len(bl.losses(model)) == 3  # the last block's A factors only
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in model.state_dict() if ".lora_" in n and "prior" not in n}
    assert all(p.grad is None for p in base.parameters())  # the copy, not the base, adapted
    assert not any(".lora_" in n for n, _ in base.named_parameters())
    with torch.no_grad():  # lora_B starts at zero: make the adapters act
        for _, a in adapters(model):
            a.lora_B.weight.normal_()
    x = torch.randint(0, 10, (3, ls.QUICK_SIZES["context"]))
    samples = ls._predict(model, x, 5)()
    assert samples.shape == (5, 3, ls.QUICK_SIZES["context"], base.head.out_features)
    assert not torch.allclose(samples[0], samples[1])  # the last block's noise is on
    with bl.posterior_mean(model):
        mean = model(x)
    plain = ls.adapted(base, None)
    with torch.no_grad():
        for (_, a), (_, b) in zip(adapters(model), adapters(plain), strict=True):
            b.lora_A.weight.copy_(a.mean_down())
            b.lora_B.weight.copy_(a.lora_B.weight)
        assert torch.equal(plain(x), mean)  # posterior mean = plain LoRA, same factors


def test_step_and_forward_rows_run() -> None:
    ls = _module()
    base = ls.base_model(ls.QUICK_SIZES)
    tokens = torch.randint(0, 10, (2, ls.QUICK_SIZES["context"] + 1))
    steps = ls.train_steps(base, tokens)
    assert list(steps)[0] == ls.PLAIN_STEP
    for name, step in steps.items():
        loss = step()
        assert loss.ndim == 0 and torch.isfinite(loss), name
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = ls.adapted(base, "reparameterization")
    ls.train_step(model, tokens)()
    after = {k.replace(".base.", "."): v for k, v in model.state_dict().items()
             if ".lora_" not in k}  # fmt: skip
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # base frozen


def test_prefix_rows_follow_what_predict_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    ls = _module()
    real = bl.predict
    monkeypatch.setattr(bl, "predict", lambda *args, **kw: None)  # takes anything
    assert ls.prefix_supported()

    def without_prefix(model: torch.nn.Module, x: torch.Tensor, num_samples: int = 32,
                       *, trunk: object = "auto") -> object:  # fmt: skip
        if trunk == "prefix":
            raise ValueError("predict expected `trunk` to be 'auto', None or an nn.Module")
        return real(model, x, num_samples, trunk=trunk)

    monkeypatch.setattr(bl, "predict", without_prefix)
    assert not ls.prefix_supported()
    base = ls.base_model(ls.QUICK_SIZES)
    x = torch.randint(0, 10, (2, ls.QUICK_SIZES["context"]))
    assert not any("prefix" in name for name in ls.predict_steps(base, x, 2, prefix=False))
