"""benchmarks/generate_step.py runs (a tiny configuration), reports paired ratios of its
rows, and builds the models it describes (Bayesian adapters in every block, or in the
last block with plain ones before)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_util import assert_paired_within_range, benchmark_module, run_quick

import bayesian_layers as bl
from bayesian_layers.adapters import adapters

pytest.importorskip("transformers")
ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")


@pytest.mark.slow
def test_quick_run_writes_paired_ratios(tmp_path: Path) -> None:
    data, stdout = run_quick("generate_step", tmp_path, "--num-samples", "3")
    meta = data["meta"]
    assert meta["num_samples"] == 3 and meta["new_tokens"] == 3 and meta["clock"] == "cpu"
    rows = data["generate 3 tokens, K=3 @2x4"]
    expected = ["plain LoRA: generate"]
    for e in ESTIMATORS:
        expected += [f"Bayesian LoRA {e}, every block: generate",
                     f"Bayesian LoRA {e}, last block, trunk='prefix': generate",
                     f"Bayesian LoRA {e}, last block, trunk=None: generate"]  # fmt: skip
    expected.append("Bayesian LoRA flipout, every block, cache=False: generate")
    assert list(rows) == expected
    assert_paired_within_range(rows, "plain LoRA: generate")
    assert "plain LoRA: generate" in stdout


@pytest.mark.parametrize("last_only", [False, True])
def test_models_put_bayesian_adapters_where_described(last_only: bool) -> None:
    gs = benchmark_module("generate_step")
    base = gs.base_model(gs.QUICK_SIZES)
    model = gs.adapted(base, "flipout", last_only=last_only)
    found = {name: a.posterior for name, a in adapters(model)}
    depth = gs.QUICK_SIZES["n_layer"]
    assert sorted(found) == sorted(n for i in range(depth) for n in gs._block_targets(i))
    for name, posterior in found.items():
        bayesian = not last_only or name.startswith(f"transformer.h.{depth - 1}.")
        assert posterior == ("flipout" if bayesian else None), name
    assert len(bl.losses(model)) == (3 if last_only else 3 * depth)
