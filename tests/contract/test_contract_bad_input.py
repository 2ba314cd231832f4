"""Bad-input sweep over every case of the layer registry (``contract/cases.py``, where
``Name[variant]`` keys are other constructions of a class, e.g. sizes read on the first
call; ``test_contract_registry.py`` fails when a public class is missing from it). Every
layer meets each case of ``BAD_INPUTS`` on a freshly built instance:

- ``wrong_width``: the size the layer fixes (features, channels; an index out of
  range for an embedding) one too large;
- ``wrong_rank``: one dim fewer than the layer accepts;
- ``empty_batch``: the batch dim of size 0;
- ``nan`` / ``inf``: one non-finite entry;
- ``float64`` / ``bfloat16`` / ``int``: the valid input in another dtype.

An outcome is ``correct`` (finite output of the valid call's shapes; an empty result
for an empty batch; for NaN/inf input any output, non-finite allowed, when the input
is not data the layer scores or initialises from), ``ValueError`` or ``TypeError``
(the message names the layer, and the layer's state is unchanged), or ``failing``:
any other exception, a message without the layer's name, a non-finite output from
finite input, a wrong width or rank accepted, non-finite data accepted where it is
scored or sets state, or a layer whose next valid call gives a non-finite output
(state poisoned by the bad batch). Cases failing today are ``KNOWN_FAILING``
(strict xfail: a fix flips them and the list must shrink).

Counts per outcome::

    python tests/contract/test_contract_bad_input.py          # counts, then the failing cases
    python tests/contract/test_contract_bad_input.py --known  # KNOWN_FAILING for now
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, as pytest's pythonpath
from contract.cases import CASES as REGISTRY  # noqa: E402 - after the path for a script
from contract.cases import SKIP  # noqa: E402
from contract.cases import Case as Entry  # noqa: E402

import bayesian_layers as bl  # noqa: E402

BAD_INPUTS = (
    "wrong_width",
    "wrong_rank",
    "empty_batch",
    "nan",
    "inf",
    "float64",
    "bfloat16",
    "int",
)

# (layer, case) -> what goes wrong today; strict xfail, so a fix flips the test
KNOWN_FAILING: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------------------------- inputs
def _draw(entry: Entry, shape: tuple[int, ...]) -> Tensor:
    return entry.input(shape)


def _poke(x: Tensor, value: float) -> Tensor:
    out = x.to(torch.get_default_dtype()).clone()
    out.view(-1)[min(1, out.numel() - 1)] = value
    return out


def _resized(shape: tuple[int, ...], dim: int, size: int) -> tuple[int, ...]:
    out = list(shape)
    out[dim] = size
    return tuple(out)


def bad_input(entry: Entry, case: str) -> Tensor | None:
    """The input of ``case`` for ``entry`` (``None``: the case does not apply)."""
    x = _draw(entry, entry.shape)
    if case == "wrong_width":
        if entry.feature_dim is None:
            return None
        if entry.kind == "index":
            x = x.clone()
            x.view(-1)[0] = entry.high  # one past the last row
            return x
        dim = entry.feature_dim
        return _draw(entry, _resized(entry.shape, dim, entry.shape[dim] + 1))
    if case == "wrong_rank":
        if entry.min_rank == 0:
            return None
        return _draw(entry, entry.shape[len(entry.shape) - entry.min_rank + 1 :])
    if case == "empty_batch":
        return _draw(entry, _resized(entry.shape, entry.batch_dim, 0))
    if case in ("nan", "inf"):
        return _poke(x, math.nan if case == "nan" else math.inf)
    if case == "int":
        return x.to(torch.int32) if entry.kind == "index" else x.round().long()
    return x.to(torch.float64 if case == "float64" else torch.bfloat16)


# ----------------------------------------------------------------------------- outcomes
def _tensors(out: object) -> Iterator[Tensor]:
    if isinstance(out, bl.RandomVariable):
        yield out.value
    elif isinstance(out, Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from _tensors(item)


def _state(module: nn.Module) -> dict[str, Tensor | None]:
    return {
        k: None if isinstance(v, nn.parameter.UninitializedTensorMixin) else v.detach().clone()
        for k, v in module.state_dict(keep_vars=True).items()
    }


def _same_state(a: dict[str, Tensor | None], b: dict[str, Tensor | None]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_same_tensor(va, b[k]) for k, va in a.items())


def _same_tensor(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a, b) or torch.equal(a.nan_to_num(), b.nan_to_num()))


def _run(entry: Entry, module: nn.Module, x: Tensor) -> tuple[list[Tensor], object]:
    out = entry.call(module, x)
    tensors = list(_tensors(out))
    if entry.extra is not None:
        tensors += entry.extra(module, out)
    return tensors, out


def _finite(tensors: list[Tensor]) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point() or t.is_complex()
    )


def _build(entry: Entry) -> nn.Module:
    return entry.build()


def _reference(entry: Entry) -> list[tuple[int, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors, _ = _run(entry, _build(entry), _draw(entry, entry.shape))
    if not _finite(tensors):
        raise AssertionError("the valid input gives a non-finite output")
    return [tuple(t.shape) for t in tensors]


@functools.cache
def reference_shapes(name: str) -> list[tuple[int, ...]]:
    """Output shapes of the valid call (which must be finite: a check of the registry)."""
    return _reference(REGISTRY[name])


def classify(name: str, case: str) -> str:
    """``"correct"``, ``"ValueError"``, ``"TypeError"``, ``"n/a"`` or ``"failing: why"``."""
    return classify_entry(REGISTRY[name], case, reference_shapes(name))


def classify_entry(entry: Entry, case: str, expected: list[tuple[int, ...]] | None = None) -> str:
    """:func:`classify` for any entry (``expected``: the valid call's output shapes)."""
    x = bad_input(entry, case)
    if x is None:
        return "n/a"
    expected = _reference(entry) if expected is None else expected
    module = _build(entry)
    before = _state(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tensors, _ = _run(entry, module, x)
        except (ValueError, TypeError) as err:
            outcome = _judge_error(module, err, before)
        except Exception as err:  # noqa: BLE001 - every other type is a finding
            return f"failing: {type(err).__name__}: {_short(err)}"
        else:
            outcome = _judge_result(entry, case, tensors, expected)
        if not outcome.startswith("failing"):
            outcome = _judge_next_call(entry, module, outcome, case)
    return outcome


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:120] + ("..." if len(text) > 120 else "")


def _judge_error(module: nn.Module, err: Exception, before: dict[str, Tensor | None]) -> str:
    name = type(module).__name__
    if name not in str(err):
        return f"failing: {type(err).__name__} without the layer's name: {_short(err)}"
    if not _same_state(before, _state(module)):
        return f"failing: state changed by a failed call ({type(err).__name__})"
    return type(err).__name__


def _judge_result(entry: Entry, case: str, tensors: list[Tensor], expected: list) -> str:
    if case in ("wrong_width", "wrong_rank"):
        return f"failing: {case} accepted (output shapes {[tuple(t.shape) for t in tensors]})"
    if case == "empty_batch":
        if not tensors or tensors[0].numel() != 0:
            return "failing: empty batch gave a non-empty result"
        return "correct" if _finite(tensors) else "failing: non-finite output from empty batch"
    if case in ("nan", "inf"):
        if entry.scores_input:
            return f"failing: {case} accepted as data (scored or used for initialisation)"
    elif not _finite(tensors):
        return f"failing: non-finite output from finite {case} input"
    if [tuple(t.shape) for t in tensors] != expected:
        return f"failing: output shapes {[tuple(t.shape) for t in tensors]}, expected {expected}"
    return "correct"


def _judge_next_call(entry: Entry, module: nn.Module, outcome: str, case: str) -> str:
    """After an error or a non-finite batch, the next valid call must be finite."""
    if outcome == "correct" and case not in ("nan", "inf"):
        return outcome
    try:
        tensors, _ = _run(entry, module, _draw(entry, entry.shape))
    except Exception as err:  # noqa: BLE001
        return f"failing: valid call after {case} raised {type(err).__name__}: {_short(err)}"
    if not _finite(tensors):
        return f"failing: state poisoned by the {case} batch (next valid call not finite)"
    return outcome


# -------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_input_is_valid(name: str) -> None:
    assert reference_shapes(name)


def _params() -> list:
    out = []
    for name in sorted(REGISTRY):
        for case in BAD_INPUTS:
            reason = KNOWN_FAILING.get((name, case))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(name, case, id=f"{name}-{case}", marks=marks))
    return out


@pytest.mark.parametrize(("name", "case"), _params())
def test_bad_input_ends_in_a_result_or_an_error_naming_the_layer(name: str, case: str) -> None:
    outcome = classify(name, case)
    assert not outcome.startswith("failing"), f"{name} / {case}: {outcome}"


# ------------------------------------------------- the classifier on layers known to be bad
class _Checked(nn.Module):
    """A well-behaved layer: ``(*, 3) -> (*, 2)``, float32 only, errors naming it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.float32:
            raise TypeError(f"{type(self).__name__} expected float32 `input`, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != 3:
            raise ValueError(f"{type(self).__name__} expected (*, 3), got {tuple(x.shape)}")
        return self.linear(x)


class _TorchErrors(nn.Module):
    """Lets torch raise (RuntimeError) on a wrong width and on another dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class _Anonymous(_Checked):
    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"expected float32, got {x.dtype}")  # no layer name
        return super().forward(x)


class _NaNFromFinite(_Checked):
    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float64:  # accepted, but computed into NaN
            return self.linear(x.float()) * math.nan
        return super().forward(x)


class _Poisoned(_Checked):
    """Keeps a running mean of its inputs (a NaN batch poisons it for good)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.running.copy_(0.5 * self.running + 0.5 * x.reshape(-1, 3).mean(0))
        return super().forward(x + self.running)


class _ChangesThenRaises(_Checked):
    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.linear.bias.add_(1.0)
        return super().forward(x)


def _fake(cls: type[nn.Module]) -> Entry:
    return Entry(cls, (), (4, 3))


@pytest.mark.parametrize(
    ("cls", "case", "expected"),
    [
        (_Checked, "wrong_width", "ValueError"),
        (_Checked, "float64", "TypeError"),
        (_Checked, "nan", "correct"),
        (_Checked, "empty_batch", "correct"),
        (_TorchErrors, "wrong_width", "failing: RuntimeError"),
        (_TorchErrors, "float64", "failing: RuntimeError"),
        (_Anonymous, "float64", "failing: TypeError without the layer's name"),
        (_NaNFromFinite, "float64", "failing: non-finite output from finite float64"),
        (_Poisoned, "nan", "failing: state poisoned by the nan batch"),
        (_ChangesThenRaises, "wrong_width", "failing: state changed by a failed call"),
    ],
)
def test_the_classifier_tells_good_from_bad(cls: type[nn.Module], case: str, expected: str) -> None:
    assert classify_entry(_fake(cls), case).startswith(expected)


def test_non_finite_data_must_raise_where_it_is_scored() -> None:
    scored = Entry(_Checked, (), (4, 3), scores_input=True)
    assert classify_entry(scored, "nan").startswith("failing: nan accepted as data")


# ---------------------------------------------------------------------------- counts
def sweep() -> dict[tuple[str, str], str]:
    """Every (layer, case) outcome."""
    return {(n, case): classify(n, case) for n in sorted(REGISTRY) for case in BAD_INPUTS}


def main(argv: list[str]) -> None:
    results = sweep()
    kinds = Counter(o if not o.startswith("failing") else "failing" for o in results.values())
    classes = len({key.split("[")[0] for key in REGISTRY})
    print(
        f"{classes} layer classes ({len(REGISTRY)} constructions) x {len(BAD_INPUTS)} cases; "
        f"{len(SKIP)} public classes skipped (not layers)"
    )
    for kind in ("correct", "ValueError", "TypeError", "failing", "n/a"):
        print(f"  {kind:10s} {kinds.get(kind, 0)}")
    failing = {k: v[len("failing: ") :] for k, v in results.items() if v.startswith("failing")}
    if "--known" in argv:
        print("KNOWN_FAILING: dict[tuple[str, str], str] = {")
        for (name, case), why in failing.items():
            print(f"    ({name!r}, {case!r}): {why.split(':')[0][:60]!r},")
        print("}")
    else:
        for (name, case), why in failing.items():
            print(f"  {name} / {case}: {why}")


if __name__ == "__main__":
    main(sys.argv[1:])
