"""docs/fine_tuning.md: every ```python block runs as written (the blocks of one section
share a namespace, in order) and prints what the page says."""

from __future__ import annotations

import pytest
from docs_util import DOCS, python_blocks

PAGE = DOCS / "fine_tuning.md"


def _run(section: str, capsys: pytest.CaptureFixture[str]) -> str:
    namespace = {"__name__": "__docs__"}
    blocks = python_blocks(PAGE, section)
    assert blocks, section
    for i, code in enumerate(blocks):
        exec(compile(code, f"{PAGE}:{section}:{i}", "exec"), namespace)
    return capsys.readouterr().out


def test_bayesian_lora_on_any_model(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("Bayesian LoRA on any model", capsys)
    assert "trainable 1536 of 11717 parameters" in out
    assert "torch.Size([16, 8, 12, 5])" in out
    assert "adapters left: 0" in out and "merged == posterior mean: True" in out


def test_prefix_runs_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("Cheap predictive samples: the frozen prefix runs once", capsys)
    assert "torch.Size([8, 4, 32, 50]) cached == uncached: True" in out


def test_laplace_lora(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("Laplace-LoRA: a posterior after fine-tuning", capsys)
    assert "random factors: 4" in out
    assert "torch.Size([32, 4, 16, 30]) prior precision > 0: True" in out


# peft 0.21's get_peft_model calls a transformers 5 method that warns of its removal in v6
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_hugging_face_and_peft(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    out = _run("Hugging Face models and peft adapters", capsys)
    assert "torch.Size([4, 2, 16, 64])" in out
    assert "posterior mean == peft: True" in out


def test_generating_text_with_uncertainty(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    out = _run("Generating text with uncertainty", capsys)
    assert "torch.Size([2, 24]) torch.Size([2, 16])" in out
    assert "total = aleatoric + epistemic: True" in out
    assert "one shared cache == K caches: True" in out
