"""examples/bayesian_lora.py: the --quick run end to end, and its pieces (the prose
split, the frozen base, the adapters' training) on a tiny model."""

from __future__ import annotations

import copy
import json
import math

import bayesian_lora  # examples/ is on pytest's pythonpath (pyproject.toml)
import pytest
import torch
from bayesian_transformer import VOCAB, CharTransformer, encode

from bayesian_layers.adapters import adapters, lora, lora_state_dict

METHODS = {
    "base (no fine-tune)",
    "plain LoRA",
    "Bayesian LoRA (flipout)",
    "Bayesian LoRA (reparameterization)",
    "Bayesian LoRA (last ff.2 only)",
    "Laplace-LoRA",
}


def test_prose_split_is_fixed_disjoint_english():
    train, held = bayesian_lora.prose_split()
    assert (train, held) == bayesian_lora.prose_split()  # fixed, not random
    assert 300_000 < len(train) and 50_000 < len(held) < 100_000
    # topic-level split: no held-out topic's text appears in the training text
    from pydoc_data.topics import topics

    keys = sorted(topics)
    for i, k in enumerate(keys):
        assert (topics[k] in held) == (i % 4 == 3), k
        assert (topics[k] in train) == (i % 4 != 3), k
    # English prose mostly in the model's vocabulary (printable ASCII)
    unknown = (encode(held) == VOCAB.index("?")).float().mean() - held.count("?") / len(held)
    assert unknown < 0.005


def test_windows_are_consecutive_and_cover_every_position_once():
    tokens = torch.arange(20)
    w = bayesian_lora.windows(tokens, context=4, count=100)
    assert w.shape == (4, 5)  # (20 - 1) // 4 windows
    assert torch.equal(w[:, 1:].flatten(), torch.arange(1, 17))  # each target once
    assert torch.equal(w[1:, 0], w[:-1, -1])


def _tiny_base() -> CharTransformer:
    torch.manual_seed(0)
    return CharTransformer(len(VOCAB), 16, 2, 32, 1, 16, bayesian=False).eval()


@pytest.mark.parametrize("posterior", [None, "flipout"])
def test_finetune_moves_only_the_adapters(posterior):
    base = _tiny_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora(copy.deepcopy(base), target=list(bayesian_lora.TARGETS), rank=2,
                    posterior=posterior, init_std=0.05)  # fmt: skip
    names = {n for n, _ in adapters(model)}
    assert names == {"blocks.0.attn.out_proj", "blocks.0.ff.0", "blocks.0.ff.2"}
    start = {k: v.clone() for k, v in lora_state_dict(model).items()}
    text = encode("The quick brown fox jumps over the lazy dog. " * 20)
    bayesian_lora.finetune(model, text, steps=5, batch=4, context=16, lr=1e-2, seed=0)
    # no gradient reached the base and it is bit-for-bit what it was
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    after = bayesian_lora.frozen_state(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # the adapters did train (B started at zero and moved)
    moved = lora_state_dict(model)
    assert any(not torch.equal(moved[k], v) for k, v in start.items())
    assert any(".lora_B." in k and moved[k].abs().sum() > 0 for k in moved)


@pytest.mark.slow
def test_quick_run_reports_every_method(tmp_path, capsys):
    result = bayesian_lora.main(["--quick", "--output-dir", str(tmp_path)])
    methods = result["methods"]
    assert set(methods) == METHODS
    for name, r in methods.items():
        for key in ("nll", "ece", "accuracy", "mean_confidence"):
            assert math.isfinite(r[key]), (name, key, r)
        assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        # a trained model, not a uniform guess (log 97 = 4.57 nats)
        assert r["nll"] < math.log(len(VOCAB)) - 0.5, (name, r)
    # fine-tuning on prose helps the pretrained-on-code model on held-out prose
    assert methods["plain LoRA"]["nll"] < methods["base (no fine-tune)"]["nll"]
    assert methods["Laplace-LoRA"]["prior_precision"] > 0
    for name in (
        "Bayesian LoRA (flipout)",
        "Bayesian LoRA (reparameterization)",
        "Bayesian LoRA (last ff.2 only)",
    ):
        assert 0 < methods[name]["posterior_std_A"] < 1  # a posterior, trained from 0.05
    assert methods["plain LoRA"]["accuracy_minus_plain"] == 0.0
    assert methods["plain LoRA"]["ece_over_plain"] == 1.0
    assert result["base_unchanged"] and result["base_no_grad"]
    saved = json.loads((tmp_path / "bayesian_lora.json").read_text())
    assert set(saved["methods"]) == METHODS
    png = (tmp_path / "bayesian_lora_reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    gen = result["generated"]  # bl.generate on the held-out text's start
    assert gen["prompt"] and len(gen["text"]) == 20 and set(gen["text"]) <= set(VOCAB)
    assert 0 <= gen["mean_epistemic"] <= gen["mean_total"] <= math.log(len(VOCAB))
    assert [u["char"] for u in gen["least_sure"]] == [gen["text"][u["at"]]
                                                      for u in gen["least_sure"]]  # fmt: skip
    assert saved["generated"] == gen
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS)
    assert "continues the held-out text" in out
