"""The image benchmark (benchmarks/images.py): its data, metric helpers, and a --quick run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import bayesian_layers as bl
from bayesian_layers.metrics import auroc, expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA = ROOT / "tests" / "data" / "images"


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(BENCH))  # images.py imports image_data as a sibling
image_data = _load("image_data", "image_data.py")
images = _load("images_benchmark", "images.py")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = np.random.default_rng(0).integers(-100, 100, size=(3, 5, 7)).astype(dtype)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    image_data.write_idx(path, array)
    back = image_data.read_idx(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_read_idx_refuses_other_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an idx file"):
        image_data.read_idx(tmp_path / "junk")


def test_committed_subset_loads():
    x, y = image_data.load_fashion_mnist("train", DATA)
    assert x.shape == (2000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    x_te, y_te = image_data.load_fashion_mnist("test", DATA)
    assert x_te.shape == (500, 28, 28) and set(y_te.tolist()) == set(range(10))
    x_ood, y_ood = image_data.load_mnist_ood(DATA)
    assert x_ood.shape == (500, 28, 28) and set(y_ood.tolist()) == set(range(10))
    (x_tr, _), (x_val, _) = image_data.train_validation_split(x, y)
    assert len(x_tr) + len(x_val) == 2000 and torch.equal(x_val, x[len(x_tr) :])


def test_missing_data_names_the_ways_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench-images") as info:
        image_data.load_fashion_mnist("train", tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "--data-dir" in str(info.value)


def test_rotate_by_zero_is_identity_and_by_90_is_rot90():
    x = torch.rand(4, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(image_data.rotate(x, 0), x)
    torch.testing.assert_close(image_data.rotate(x, 90), torch.rot90(x, 1, dims=(-2, -1)))
    torch.testing.assert_close(image_data.rotate(x, 180), torch.rot90(x, 2, dims=(-2, -1)))
    assert image_data.rotate(x[:, 0], 45).shape == (4, 9, 9)  # (N, H, W) accepted


def test_auroc_and_aupr_match_scikit_learn():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(300, generator=g) < 0.4
    scores = labels.double() + torch.randn(300, generator=g, dtype=torch.float64)
    scores[:50] = scores[:50].round()  # ties
    assert auroc(scores, labels).item() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = average_precision_score(labels.numpy(), scores.numpy())
    assert images.aupr(scores, labels).item() == pytest.approx(ap, abs=1e-12)


def test_ece_matches_a_textbook_loop():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(400, 10, generator=g, dtype=torch.float64), -1)
    labels = torch.randint(0, 10, (400,), generator=g)
    conf, pred = probs.max(-1)
    ece, edges = 0.0, np.linspace(0.0, 1.0, 16)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):  # right-closed bins (lo, hi]
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (pred[inside] == labels[inside]).double().mean() - conf[inside].mean()
            ece += inside.double().mean().item() * abs(gap.item())
    assert expected_calibration_error(probs, labels, num_bins=15).item() == pytest.approx(ece)


@pytest.mark.parametrize("name", sorted(images.METHODS))
def test_every_method_builds_lenet5(name):
    torch.manual_seed(0)
    model = images.METHODS[name].build()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert any(True for _ in bl.bayesian_modules(model)) == (name != "deterministic")
    assert bool(bl.losses(model)) == name.startswith("vi_")  # a KL term in the ELBO


@pytest.mark.slow
def test_quick_run_writes_one_json_per_method_and_seed(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "images.py"), "--quick", "--data-dir", str(DATA),
           "--out-dir", str(out), "--methods", "deterministic,vi_flipout,ensemble_2",
           "--seeds", "0,1", "--table", "--table-path", str(tmp_path / "images.md")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    expected = {f"{m}_seed{s}.json" for m in ("deterministic", "vi_flipout") for s in (0, 1)}
    expected.add("ensemble_2_seed0.json")  # seed 1 would need deterministic seeds 2 and 3
    assert {p.name for p in out.glob("*.json")} == expected
    assert "ensemble_2 seed 1 needs" in done.stderr
    for f in expected:
        r = json.loads((out / f).read_text())
        flat = [*r["test"].values(), *r["ood"].values(), *r["timing"].values()]
        flat += [v for angle in r["rotation"].values() for v in angle.values()]
        assert all(math.isfinite(v) for v in flat), f
        assert set(r["rotation"]) == {str(a) for a in range(0, 181, 15)}
        assert r["test"]["accuracy"] > 0.3, (f, r["test"])  # chance is 0.1
        assert 0.0 <= r["ood"]["auroc_entropy"] <= 1.0
    table = (tmp_path / "images.md").read_text()
    assert "| vi_flipout | 2 |" in table and "deep ensemble, 10 (published) | — | 0.200" in table
