"""The registry covers every public layer class: a class in a public ``__all__`` is a
case or skipped with a reason; each case builds under seed 0 and its valid input gives
a finite output."""

from __future__ import annotations

import warnings

import pytest
import torch
from contract.cases import CASES, SKIP, public_classes
from contract.util import tensors


def test_every_public_class_is_a_case_or_skipped_with_a_reason() -> None:
    public = public_classes()
    covered = {case.cls.__name__ for case in CASES.values()}
    missing = sorted(public.keys() - covered - SKIP.keys())
    assert not missing, f"add these public classes to tests/contract/cases.py: {missing}"
    assert not (covered | SKIP.keys()) - public.keys(), "stale names in the registry"
    assert not covered & SKIP.keys(), "a class is both a case and skipped"
    assert all(reason.strip() for reason in SKIP.values())
    for name, case in CASES.items():
        assert public[case.cls.__name__] is case.cls, name


@pytest.mark.parametrize("name", list(CASES))
def test_valid_input_gives_a_finite_output(name: str) -> None:
    case = CASES[name]
    layer = case.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a GP's jitter warning is not the point here
        out = case.call(layer, case.input())
    got = list(tensors(out))
    assert got and all(torch.isfinite(t).all() for t in got if t.is_floating_point())
