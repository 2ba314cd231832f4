"""The image benchmark (benchmarks/images.py): its data, metric helpers, and a --quick run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

import bayesian_layers as bl
from bayesian_layers.metrics import aupr, auroc, expected_calibration_error

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
    assert aupr(scores, labels).item() == pytest.approx(ap, abs=1e-12)


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


#: methods whose model has a penalty in bl.losses: the VI KL, rank-1's factor KL, the
#: SNGP head's MAP weight penalty, the KL of IVON's converted layers (which IVON's
#: training does not use: its prior is its weight decay), the KL of Laplace's converted
#: last layer (unused: the prior precision enters through the fit)
PENALISED = ("vi_", "rank1", "sngp", "ivon", "laplace", "swag")  # (SWAG's: unused too)


@pytest.mark.parametrize("name", ["laplace_kron", "laplace_kron_layerwise"])
def test_laplace_kron_fits_every_layer_and_predicts_with_the_glm(name):
    """``laplace_kron`` on a LeNet-shaped network small enough to fit here: every conv and
    linear layer gets a Kronecker posterior, the evidence's prior precision (one, or one
    per parameter tensor) is written, and the GLM predictive is one function."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 12), nn.ReLU(),
        nn.Linear(12, 10),
    )  # fmt: skip
    assert images.METHODS[name].build is images.lenet5
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    post, fitted = images.METHODS[name].posthoc(net, x, y)
    layers = list(bl.bayesian_modules(post))
    assert len(layers) == 4
    assert {type(m.weight_initializer).__name__ for m in layers} == {"KroneckerNormal"}
    written = [m.weight_initializer.prior_precision.item() for m in layers]
    if name == "laplace_kron":
        tau = fitted["prior_precision"]
        assert tau > 0 and tau != 1.0  # moved from the starting value
        assert written == pytest.approx([tau] * 4)
    else:  # one per parameter tensor, weight and bias of each layer, in order
        taus = fitted["prior_precision"]
        assert len(taus) == 8 and min(taus) > 0 and len(set(taus)) > 1
        assert written == pytest.approx(taus[::2])
    probs = images.METHODS[name].probs(post.eval(), x[:5], 10)
    assert probs.shape == (1, 5, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 5))
    with torch.no_grad(), bl.posterior_mean(post):
        mean = torch.softmax(post(x[:5]), -1)
    assert not torch.allclose(probs[0], mean)  # the posterior's variance reaches the output


@pytest.mark.parametrize("name", sorted(images.METHODS))
def test_every_method_builds_lenet5(name):
    torch.manual_seed(0)
    args = SimpleNamespace(prior_scale=0.3, scale_init=2e-3, dropout=0.4, temperature=0.7,
                           norm_bound=3.0, ivon_lr=0.3, hess_init=0.5)  # fmt: skip
    model, config = images.build_model(name, args)
    x = torch.rand(4, 1, 28, 28)
    if name.startswith("laplace_kron"):  # its 5880-input layer's eigendecomposition takes
        return  # minutes on 2 busy cores: fitted on a smaller network below
    if images.METHODS[name].posthoc is not None:  # Laplace, SWAG: a posterior from (x, y)
        model, fitted = images.METHODS[name].posthoc(model, x, torch.arange(4))
        if name == "swag":
            assert fitted["swag_rank"] >= 2  # a low-rank part to draw from
        else:
            assert fitted["prior_precision"] > 0  # the evidence's optimum
    k = {"deep_ensemble": images.DEEP_ENSEMBLE_SIZE}.get(name, 8)  # its members
    probs = images.METHODS[name].probs(model.eval(), x, k)
    assert probs.shape[1:] == (4, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    one_function = ("sngp", "heteroscedastic", "laplace_last_layer")
    assert probs.shape[0] == (1 if name in one_function else k)  # K functions
    no_bayesian_layer = ("deterministic", "heteroscedastic")  # (the SNGP head is one)
    no_bayesian_layer += ("deterministic_10_epochs", "deep_ensemble")
    assert any(True for _ in bl.bayesian_modules(model)) == (name not in no_bayesian_layer)
    assert bool(bl.losses(model)) == name.startswith(PENALISED)
    if name == "mc_dropout":
        assert config == {"dropout": 0.4}
        assert [m.p for m in model if isinstance(m, bl.layers.MCDropout)] == [0.4, 0.4]
    if name == "ivon":
        assert config == {"ivon_lr": 0.3, "hess_init": 0.5}
    if name == "heteroscedastic":
        assert config == {"temperature": 0.7} and model[-1].temperature == 0.7
    if name == "sngp":
        assert config == {"norm_bound": 3.0}
        assert sum(bl.layers.is_spectral_normalized(m) for m in model) == 4  # 3 convs, 1 dense
    if name == "deep_ensemble":  # independently initialised members, each its own function
        assert len(model) == images.DEEP_ENSEMBLE_SIZE
        assert not torch.allclose(probs[0], probs[1])
        out = model(x)
        each = sum(F.cross_entropy(out[i], torch.arange(4)) for i in range(len(model)))
        torch.testing.assert_close(images.METHODS[name].loss(out, torch.arange(4)), each)
    if name in ("rank1", "batch_ensemble"):
        layers = list(bl.bayesian_modules(model))
        assert len(layers) == 5 and {m.ensemble_size for m in layers} == {images.ENSEMBLE_SIZE}
    if name.startswith("vi_"):  # the chosen prior and posterior init reach every layer
        assert config == {"prior_scale": 0.3, "scale_init": 2e-3}
        layers = list(bl.bayesian_modules(model))
        assert len(layers) == 5
        for layer in layers:
            assert layer.weight_regularizer.prior_scale.item() == pytest.approx(0.3)
            if not name.endswith("_converted"):  # converted: means start at torch's weights
                scale = layer.random_variable("weight").distribution.stddev
                torch.testing.assert_close(scale, torch.full_like(scale, 2e-3))


def test_member_predictive_gives_every_member_its_share_of_the_samples():
    torch.manual_seed(0)
    model = images.METHODS["batch_ensemble"].build().eval()
    x = torch.rand(3, 1, 28, 28)
    probs = images.member_probs(model, x, images.ENSEMBLE_SIZE)
    # member m alone: the same input tiled so that every member sees it, row block m
    tiled = model(x.repeat(images.ENSEMBLE_SIZE, 1, 1, 1)).softmax(-1)
    torch.testing.assert_close(probs, tiled.reshape(images.ENSEMBLE_SIZE, 3, 10))


def test_ivon_trains_the_means_and_writes_its_posterior_into_the_layers():
    torch.manual_seed(0)
    method = images.METHODS["ivon"]
    # N = 16 examples: h0 = 1e4 keeps the weight noise σ = 1/sqrt(N h0) small, as N = 50 000
    # does in the benchmark (with h0 = 1, σ = 0.0045)
    config = {"ivon_lr": 0.2, "hess_init": 1e4}
    model = method.build(**config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    images.train(model, method, config, x, y, epochs=2, batch_size=8, lr=1e-3)
    layers = list(bl.bayesian_modules(model))
    assert len(layers) == 5
    for layer in layers:
        loc, scale = layer.posterior_loc_scale("weight")
        name = next(n for n, m in model.named_modules() if m is layer)
        assert not torch.equal(loc, before[f"{name}.weight_loc"])  # the means moved
        # σ = 1/sqrt(N (h + δ)): h stays near h0 over 4 steps (β₂ = 0.99999)
        torch.testing.assert_close(scale, torch.full_like(scale, (16 * 1e4) ** -0.5),
                                   rtol=1e-3, atol=0)  # fmt: skip


def test_train_step_cuts_the_batch_to_a_multiple_of_the_members():
    torch.manual_seed(0)
    method = images.METHODS["rank1"]
    model = method.build()
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    loss = images.train_step(model, method, x, y, num_train=100)  # 10 -> 8 rows
    assert loss.isfinite() and loss > sum(bl.losses(model)) / 100


def test_sngp_resets_its_precision_and_tunes_the_mean_field_factor_on_validation():
    torch.manual_seed(0)
    method = images.METHODS["sngp"]
    model = method.build(norm_bound=6.0)
    head = images.sngp_head(model)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    calls = []
    counting = dataclasses.replace(method, on_epoch=lambda m: calls.append(m) or reset(m))
    reset = method.on_epoch
    images.train(model, counting, {}, x, y, epochs=2, batch_size=8, lr=1e-3)
    assert calls == [model, model]
    # P = I/s² + Σ φ φᵀ over one epoch (the reset dropped the first): trace(Σ φ φᵀ) is the
    # sum of ‖φ_n‖² = (2/M) Σ_j cos²(·) ≈ 1 ± 0.02 (M = 1024) over the 16 images, not 32
    extra = head.precision - torch.eye(head.precision.shape[0])  # s = 1
    assert abs(extra.trace().item() - 16) < 1.0
    chosen = images.tune_mean_field(model, x, y)
    assert chosen == {"mean_field_factor": head.mean_field_factor}
    out = model(x)
    nll = {lam: torch.nn.functional.cross_entropy(bl.layers.mean_field_logits(
        out, mean_field_factor=lam), y).item() for lam in images.MEAN_FIELD_GRID}  # fmt: skip
    assert nll[head.mean_field_factor] == min(nll.values())


def test_hand_built_and_converted_vi_have_the_same_layers():
    args = SimpleNamespace(prior_scale=None, scale_init=None, dropout=None)
    for est in ("reparameterization", "flipout", "local_reparameterization"):
        hand = images.build_model(f"vi_{est}", args)[0]
        conv = images.build_model(f"vi_{est}_converted", args)[0]
        assert [type(m) for m in hand] == [type(m) for m in conv]
        assert {k: v.shape for k, v in hand.state_dict().items()} == {
            k: v.shape for k, v in conv.state_dict().items()
        }


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run (a subprocess, as a user runs it): 2 seeds of the deterministic
    network and of Flipout VI, and a 2-member ensemble."""
    tmp = tmp_path_factory.mktemp("images")
    out = tmp / "out"
    cmd = [sys.executable, str(BENCH / "images.py"), "--quick", "--data-dir", str(DATA),
           "--out-dir", str(out), "--methods", "deterministic,vi_flipout,ensemble_2",
           "--seeds", "0,1", "--table", "--threads", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.mark.slow
def test_quick_run_writes_one_json_per_method_and_seed(quick_run):
    out, done = quick_run
    expected = {f"{m}_seed{s}.json" for m in ("deterministic", "vi_flipout") for s in (0, 1)}
    expected.add("ensemble_2_seed0.json")  # seed 1 would need deterministic seeds 2 and 3
    assert {p.name for p in out.glob("*.json")} == expected
    assert "ensemble_2 seed 1 needs" in done.stderr
    for f in expected:
        r = json.loads((out / f).read_text())
        scalars = {k: v for k, v in r["ood"].items() if not k.startswith("roc_")}
        flat = [*r["test"].values(), *scalars.values(), *r["timing"].values()]
        flat += [v for angle in r["rotation"].values() for v in angle.values()]
        flat += r["ood"]["roc_entropy"] + r["ood"]["roc_mutual_information"]
        assert all(math.isfinite(v) for v in flat), f
        assert set(r["rotation"]) == {str(a) for a in range(0, 181, 15)}
        assert r["test"]["accuracy"] > 0.3, (f, r["test"])  # chance is 0.1
        assert 0.0 <= r["ood"]["auroc_entropy"] <= 1.0
        assert sum(r["reliability"]["counts"]) == 500  # every test image in one bin
        cal = r["calibrated"]  # temperature scaling fitted on the validation split
        assert 1e-3 < cal["temperature"] < 1e3
        assert cal["test"]["accuracy"] == pytest.approx(r["test"]["accuracy"], abs=0.05)
        assert all(math.isfinite(v) for v in cal["test"].values()), f
        roc = r["ood"]["roc_entropy"]
        assert roc[0] >= 0.0 and roc[-1] == 1.0 and roc == sorted(roc)  # a ROC curve
    table = (out / "images.md").read_text()  # --quick: the table goes beside the runs
    assert "| vi_flipout | 2 | 1 |" in table  # 2 seeds of 1 epoch
    assert "deep ensemble, 10 (published) | — | — | 0.200" in table
    assert "separate processes" in table  # no cost.json yet
    assert "## After temperature scaling" in table and "| vi_flipout | 2 |" in table


@pytest.mark.slow
def test_rescore_reproduces_the_metrics_from_saved_probabilities(quick_run, tmp_path):
    out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = json.loads((copy / "deterministic_seed0.json").read_text())
    images.main(["--quick", "--data-dir", str(DATA), "--out-dir", str(copy), "--rescore"])
    after = json.loads((copy / "deterministic_seed0.json").read_text())
    assert after["timing"] == before["timing"] and after["validation"] == before["validation"]
    for key in ("accuracy", "nll", "ece", "brier"):  # the probabilities are saved in float32
        assert after["test"][key] == pytest.approx(before["test"][key], abs=1e-12), key
        cal = after["calibrated"]["test"][key]
        assert cal == pytest.approx(before["calibrated"]["test"][key], abs=1e-6), key
        rotated = after["rotation"]["90"][key]
        assert rotated == pytest.approx(before["rotation"]["90"][key], abs=1e-12), key


@pytest.mark.slow
def test_cost_ratios_side_by_side_and_figures(quick_run, tmp_path):
    out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    images.main(["--quick", "--data-dir", str(DATA), "--out-dir", str(copy), "--cost",
                 "--cost-rounds", "1", "--threads", "1",
                 "--methods", "deterministic,vi_flipout,ensemble_2"])  # fmt: skip
    cost = json.loads((copy / "cost.json").read_text())
    assert cost["deterministic"]["train_ratio"] == 1.0 == cost["deterministic"]["predict_ratio"]
    assert cost["ensemble_2"]["train_ratio"] == 2.0
    assert cost["vi_flipout"]["predict_ratio"] > 1.0  # K = 10 samples against one forward
    images.main(["--quick", "--out-dir", str(copy), "--table", "--figures"])
    table = (copy / "images.md").read_text()
    assert "side by side in one process" in table
    row = next(line for line in table.splitlines() if line.startswith("| vi_flipout |"))
    assert row.rstrip(" |").endswith(f"{cost['vi_flipout']['predict_ratio']:.2f}")
    for name in ("images_reliability.png", "images_rotation.png", "images_ood_roc.png"):
        assert (copy / name).read_bytes()[:4] == b"\x89PNG"


def test_validation_only_run_keeps_the_test_sets_unseen(tmp_path):
    images.main(["--quick", "--data-dir", str(DATA), "--out-dir", str(tmp_path), "--threads", "1",
                 "--methods", "vi_reparameterization", "--validation-only", "--prior-scale", "0.5",
                 "--tag", "_p0.5"])  # fmt: skip
    r = json.loads((tmp_path / "vi_reparameterization_p0.5_seed0.json").read_text())
    assert "test" not in r and "ood" not in r and r["prior_scale"] == 0.5
    assert 0.1 < r["validation"]["accuracy"] <= 1.0
    with pytest.raises(FileNotFoundError, match="no <method>_seed<s>.json"):
        images.main(["--out-dir", str(tmp_path), "--table"])  # selection runs are no rows


def test_full_protocol_lists_every_run_and_resumes(tmp_path, capsys):
    full = _load("images_full", "images_full.py")
    runs = full.jobs(list(images.METHODS))
    assert runs[:10] == [("deterministic", s) for s in range(10)]
    others = [m for m in images.METHODS if m != "deterministic"]
    assert sorted(runs[10:]) == sorted((m, s) for m in others for s in (0, 1, 2))
    (tmp_path / "deterministic_seed3.json").write_text("{}")  # a finished run is kept
    (tmp_path / "vi_flipout_seed1.json").write_text("{}")
    full.main(["--out-dir", str(tmp_path), "--dry-run", "--methods", "deterministic,vi_flipout"])
    out = capsys.readouterr().out
    assert "11 runs to do (2 already done)" in out
    assert "deterministic seed 3\n" not in out and "vi_flipout seed 1" not in out
    assert "deterministic seed 9" in out and "vi_flipout seed 2" in out
    with pytest.raises(SystemExit):
        full.main(["--methods", "nonsense", "--dry-run"])
