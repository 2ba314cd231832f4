"""The UCI regression benchmark: its protocol pieces, and a --quick run on bundled data."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "uci.py"
DATA = ROOT / "tests" / "data" / "uci"

_spec = importlib.util.spec_from_file_location("uci_benchmark", SCRIPT)
uci = importlib.util.module_from_spec(_spec)
sys.modules["uci_benchmark"] = uci  # dataclasses look their module up by name
_spec.loader.exec_module(uci)


def test_standardise_uses_the_training_part_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(50, 3))
    x_train[:, 2] = 7.0  # a constant column is left at scale 1, not divided by zero
    y_train = rng.normal(-5.0, 4.0, size=50)
    x_test = rng.normal(100.0, 10.0, size=(10, 3))  # far away: must not move the statistics
    y_test = rng.normal(100.0, 10.0, size=10)
    s = uci.standardise(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(s.x_train[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.x_train[:, :2].std(0), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(s.x_train[:, 2], 0.0)
    np.testing.assert_allclose(s.x_test, (x_test - x_train.mean(0)) / np.where(
        x_train.std(0) > 0, x_train.std(0), 1.0))  # fmt: skip
    assert s.y_mean == pytest.approx(y_train.mean()) and s.y_std == pytest.approx(y_train.std())
    np.testing.assert_allclose(s.y_train, (y_train - y_train.mean()) / y_train.std())
    np.testing.assert_array_equal(s.y_test, y_test)  # kept in original units


def test_validation_split_comes_from_the_training_part():
    x = np.arange(40.0).reshape(20, 2)
    y = np.arange(20.0)
    train, test = np.arange(10), np.arange(10, 20)
    s = uci.make_split(x, y, train, test, validation=True)
    np.testing.assert_array_equal(s.y_test, [9.0])  # last 10% of the 10 training rows
    assert len(s.y_train) == 9 and s.y_mean == pytest.approx(4.0)


def test_predictive_scores_in_original_units_match_scipy():
    rng = np.random.default_rng(1)
    y_mean, y_std = 12.0, 3.5
    y = rng.normal(y_mean, y_std, size=30)
    loc = rng.normal(size=(1, 30))
    scale = rng.uniform(0.3, 1.5, size=(1, 30))
    rmse, ll = uci.predictive_scores(loc, scale, y, y_mean, y_std)
    expect = stats.norm.logpdf(y, loc[0] * y_std + y_mean, scale[0] * y_std).mean()
    assert ll == pytest.approx(expect, rel=1e-12)
    assert rmse == pytest.approx(np.sqrt(np.mean((loc[0] * y_std + y_mean - y) ** 2)))
    # K samples: log-mean-exp of the component densities; RMSE of the mean prediction
    loc = rng.normal(size=(4, 30))
    scale = rng.uniform(0.3, 1.5, size=(4, 30))
    rmse, ll = uci.predictive_scores(loc, scale, y, y_mean, y_std)
    dens = stats.norm.logpdf(y, loc * y_std + y_mean, scale * y_std)
    assert ll == pytest.approx(np.mean(logsumexp(dens, axis=0) - np.log(4)), rel=1e-12)
    assert rmse == pytest.approx(np.sqrt(np.mean((loc.mean(0) * y_std + y_mean - y) ** 2)))


def test_predictive_scores_stays_finite_far_in_the_tails():
    rng = np.random.default_rng(2)
    loc = rng.normal(size=(3, 5))
    y = np.full(5, 1e3)  # every component density underflows in float64
    rmse, ll = uci.predictive_scores(loc, np.full((3, 5), 1e-2), y, 0.0, 1.0)
    assert math.isfinite(ll) and ll < -1e9 and math.isfinite(rmse)


def test_predictive_scores_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"predictive_scores expected loc and scale.*\(K, 3\)"):
        uci.predictive_scores(np.zeros((2, 3)), np.ones((2, 4)), np.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="predictive_scores"):
        uci.predictive_scores(np.zeros(3), np.ones(3), np.zeros(3), 0.0, 1.0)


def test_mean_se():
    mean, se = uci.mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert uci.mean_se([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError, match="mean_se"):
        uci.mean_se([])


def test_load_dataset_and_bad_names(tmp_path: Path):
    x, y, n = uci.load_dataset(DATA, "yacht")
    assert x.shape == (308, 6) and y.shape == (308,) and n == 20
    train, test = uci.split_indices(DATA, "yacht", 0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 308
    with pytest.raises(ValueError, match="yacht has no split 5"):
        uci.split_indices(DATA, "yacht", 5)  # the bundled copy keeps only 3 of the 20
    with pytest.raises(ValueError, match="no data set 'nope'"):
        uci.load_dataset(tmp_path, "nope")


@pytest.mark.parametrize(
    "argv", [["--datasets", "yachtt"], ["--methods", "vi_magic"], ["--splits", "0"]]
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        uci.parse_args(["--data-dir", str(DATA), *argv])
    assert exc.value.code == 2 and argv[1] in capsys.readouterr().err


def test_cli_quick_defaults():
    args = uci.parse_args(["--quick", "--data-dir", str(DATA)])
    assert tuple(args.datasets) == ("yacht", "energy")
    assert args.splits == 3 and args.methods == list(uci.NN_METHODS)
    assert args.out_dir.name == "uci_quick"  # never overwrites a full run's results


def _record(name: str, method: str, ll: list[float]) -> dict:
    return {"dataset": name, "method": method, "rmse": [1.0] * len(ll), "ll": ll,
            "seconds": [1.0] * len(ll)}  # fmt: skip


def test_table_merges_separate_runs_and_counts_targets():
    """Records written by separate processes end up side by side; the summary counts."""
    results = {
        # beats published VI (-3.43) and is within one SE of published MC dropout (-1.55)
        ("yacht", "vi_flipout"): _record("yacht", "vi_flipout", [-1.5, -1.7]),
        ("yacht", "deterministic"): _record("yacht", "deterministic", [-9.0, -8.0]),
        # worse than published VI (-2.90) and MC dropout (-2.46) on boston
        ("bostonHousing", "vi_flipout"): _record("bostonHousing", "vi_flipout", [-3.0, -3.0]),
    }
    results[("yacht", "vi_reparameterization")] = _record("yacht", "vi_reparameterization", [-2.0])
    table = uci.build_table(results)
    assert "| yacht | 2 |" in table and "| boston | 2 |" in table
    assert "-2.00 ± 0.00 (1 of 2 splits)" in table  # a row run on fewer splits says so
    assert "VI Flipout" in table and "deterministic (MAP)" in table
    assert "beats published VI on 1 of 2 sets: yacht." in table
    assert "published MC dropout on 1 of 2 sets: yacht (VI Flipout)." in table
    assert "-1.60 ± 0.10" in table  # mean ± SE of [-1.5, -1.7]


@pytest.mark.slow
def test_quick_run_beats_the_training_mean(tmp_path: Path):
    out, table = tmp_path / "json", tmp_path / "uci.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--splits", "2", "--data-dir", str(DATA),
         "--out-dir", str(out), "--table", str(table)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert {(r["dataset"], r["method"]) for r in records} == {
        (d, m) for d in ("yacht", "energy") for m in uci.NN_METHODS
    }
    for r in records:
        assert r["splits"] == [0, 1]  # two splits: a standard error, in a third less time
        values = r["rmse"] + r["ll"] + r["baseline_rmse"] + r["baseline_ll"]
        assert all(math.isfinite(v) for v in values)
        # far better than N(train mean, train std²) on these near-deterministic sets
        assert np.mean(r["rmse"]) < 0.5 * np.mean(r["baseline_rmse"]), r["method"]
        assert np.mean(r["ll"]) > np.mean(r["baseline_ll"]) + 0.5, r["method"]
        if r["method"] == "variational_dropout":  # the sparsity, per split
            assert len(r["sparsity"]) == 2 and all(0.0 <= s <= 1.0 for s in r["sparsity"])
            assert all(math.isfinite(v) for v in r["sparse_mean_rmse"] + r["sparse_mean_ll"])
    assert {"rank1", "variational_dropout"} <= set(uci.NN_METHODS)
    text = table.read_text()
    for col in ("published VI", "published PBP", "published MC dropout"):
        assert col in text
    assert "| yacht | 2 |" in text and "| energy | 2 |" in text
    assert "6.89" in text and "-1.55" in text  # published yacht VI RMSE, MC dropout LL


@pytest.mark.parametrize("method", ["sparse_gp", "deep_gp"])
def test_gp_methods_learn_yacht(method: str):
    """The GP rows: closed-form expected log-likelihood training, Gaussian predictive."""
    x, y, _ = uci.load_dataset(DATA, "yacht")
    split = uci.make_split(x, y, *uci.split_indices(DATA, "yacht", 0), validation=False)
    rmse, ll, _, _ = uci.run_split("yacht", method, split, 200, seed=0, d=uci.DEFAULTS)
    base_rmse, base_ll = uci.train_mean_baseline(split)
    assert math.isfinite(ll) and rmse < 0.5 * base_rmse and ll > base_ll + 0.5


def test_gp_predictive_adds_the_noise_variance():
    torch = pytest.importorskip("torch")
    model = uci.METHODS["sparse_gp"].build(3, 50, uci.DEFAULTS)
    x = torch.randn(7, 3)
    f, noise = model(x)
    loc, scale = uci.METHODS["sparse_gp"].predictive(model, x, 1)
    assert loc.shape == scale.shape == (1, 7)
    torch.testing.assert_close(scale.square(), (f.variance + noise.square()).reshape(1, 7))
    torch.testing.assert_close(loc, f.mean.reshape(1, 7))


# --------------------------------------------------------------------------------------
# The rank-1 and variational dropout rows
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rank1", "variational_dropout"])
def test_rank1_and_variational_dropout_learn_yacht(method: str):
    x, y, _ = uci.load_dataset(DATA, "yacht")
    split = uci.make_split(x, y, *uci.split_indices(DATA, "yacht", 0), validation=False)
    assert len(split.y_train) % uci.DEFAULTS.ensemble_size != 0  # the full batch: 277 rows
    rmse, ll, _, _ = uci.run_split("yacht", method, split, 200, seed=0, d=uci.DEFAULTS)
    base_rmse, base_ll = uci.train_mean_baseline(split)
    assert math.isfinite(ll) and rmse < 0.5 * base_rmse and ll > base_ll + 0.5


def test_rank1_nll_splits_a_shuffled_batch_and_drops_the_remainder():
    torch = pytest.importorskip("torch")
    model = uci.METHODS["rank1"].build(3, 8, uci.DEFAULTS)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    torch.manual_seed(5)
    got = uci._member_nll(model, x, y)
    torch.manual_seed(5)
    idx = torch.randperm(10)[:8]  # 10 rows, 4 members: 2 rows each, 2 rows dropped
    want = -model(x[idx]).distribution.log_prob(y[idx]).mean()
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="a batch of 3 rows cannot feed 4 members"):
        uci._member_nll(model, x[:3], y[:3])


def test_rank1_penalty_is_the_factor_kl_plus_the_shared_weight_prior():
    torch = pytest.importorskip("torch")
    bl = pytest.importorskip("bayesian_layers")
    d = uci.DEFAULTS
    model = uci.METHODS["rank1"].build(3, 8, d)
    n = 37
    sq = model[0].weight.square().sum() + model[2].weight.square().sum()
    want = torch.stack(bl.losses(model)).sum() / n + sq / (2 * d.prior_scale**2 * n)
    torch.testing.assert_close(uci.METHODS["rank1"].penalty(model, n, d), want)


def test_rank1_predictive_sample_k_is_member_k_mod_e():
    """With the factors at their means, sample k of bl.predict equals member k mod E run
    on its own block of the batch tiled E times."""
    torch = pytest.importorskip("torch")
    bl = pytest.importorskip("bayesian_layers")
    e = uci.DEFAULTS.ensemble_size
    model = uci.METHODS["rank1"].build(3, 8, uci.DEFAULTS)
    x = torch.randn(5, 3)
    with bl.posterior_mean(model), torch.no_grad():
        loc, scale = uci.METHODS["rank1"].predictive(model, x, 2 * e)
        members = model(x.repeat(e, 1)).distribution
    assert loc.shape == scale.shape == (2 * e, 5)
    want = members.mean.reshape(e, 5).repeat(2, 1)
    torch.testing.assert_close(loc, want)
    torch.testing.assert_close(scale, members.stddev.expand_as(members.mean).reshape(e, 5)
                               .repeat(2, 1))  # fmt: skip
    assert not torch.allclose(loc[0], loc[1])  # the members differ
    with pytest.raises(ValueError, match="multiple of 4"):
        uci.METHODS["rank1"].predictive(model, x, 6)


def test_rank1_test_samples_are_a_multiple_of_the_ensemble_size():
    assert uci.DEFAULTS.test_samples % uci.DEFAULTS.ensemble_size == 0
    assert uci.METHOD_LABELS["rank1"] == f"rank-1 ({uci.DEFAULTS.ensemble_size} members)"


def test_variational_dropout_extras_report_the_sparsity_and_the_pruned_network():
    torch = pytest.importorskip("torch")
    bl = pytest.importorskip("bayesian_layers")
    x, y, _ = uci.load_dataset(DATA, "yacht")
    split = uci.make_split(x, y, *uci.split_indices(DATA, "yacht", 0), validation=False)
    model = uci.METHODS["variational_dropout"].build(6, 8, uci.DEFAULTS)
    with torch.no_grad():  # log α = log σ² - log θ²: prune exactly the first 5 of 48 + 8
        model[0].weight_loc.fill_(1.0)
        model[0].weight_loc.view(-1)[:5] = 1e-4
        model[2].weight_loc.fill_(1.0)
    out = uci.METHODS["variational_dropout"].extras(model, split, uci.DEFAULTS)
    assert out["pruned_weights"] == 5 and out["total_weights"] == 56
    assert out["sparsity"] == pytest.approx(5 / 56)
    assert out["sparsity_per_layer"] == {"0": pytest.approx(5 / 48), "2": 0.0}
    with torch.no_grad():
        model[0].weight_loc.view(-1)[:5] = 0.0  # what the thresholded mean network uses
        with bl.posterior_mean(model):
            dist = model(torch.as_tensor(split.x_test, dtype=torch.float32)).distribution
    loc = dist.mean.reshape(1, -1).double().numpy()
    scale = dist.stddev.expand_as(dist.mean).reshape(1, -1).double().numpy()
    rmse, ll = uci.predictive_scores(loc, scale, split.y_test, split.y_mean, split.y_std)
    assert out["sparse_mean_rmse"] == pytest.approx(rmse, rel=1e-6)
    assert out["sparse_mean_ll"] == pytest.approx(ll, rel=1e-6)


def test_table_round_trips_through_summary_records():
    """A table's rows read back as summary records rebuild the same table (the rows whose
    per-split JSON files are gone), beside new per-split records."""
    results = {
        ("yacht", "vi_flipout"): _record("yacht", "vi_flipout", [-1.5, -1.7]),
        ("yacht", "deterministic"): _record("yacht", "deterministic", [-9.0, -8.0]),
        ("kin8nm", "vi_flipout"): _record("kin8nm", "vi_flipout", [1.0625, 1.0]),
    }
    results[("yacht", "deterministic")]["cpu_seconds"] = [30.0, 60.0]
    table = uci.build_table(results)
    back = uci.records_from_table(table, "t.md")
    assert set(back) == set(results)
    assert back[("yacht", "vi_flipout")]["summary"] == {"rmse": [1.0, 0.0], "ll": [-1.6, 0.1]}
    assert back[("kin8nm", "vi_flipout")]["summary"]["ll"] == [1.031, 0.031]  # 3 digits
    assert back[("yacht", "deterministic")]["method_cpu_minutes"] == 1.5
    assert back[("yacht", "vi_flipout")]["n_splits"] == 2
    assert uci.build_table(back) == table
    # a new method's per-split record beside them, and the sparsity line
    new = _record("yacht", "variational_dropout", [-1.0, -1.2])
    new |= {"sparsity": [0.9, 0.8], "sparse_mean_ll": [-1.1, -1.3]}
    mixed = uci.build_table({**back, ("yacht", "variational_dropout"): new})
    assert "| VI Flipout | variational dropout |" in mixed
    assert "-1.10 ± 0.10" in mixed and "yacht 85% (LL -1.20 ± 0.10)" in mixed


def test_rounded_rows_need_to_pass_the_published_target_strictly():
    # -1.60 + 0.05 = -1.55: the published yacht MC-dropout LL, a tie only after rounding
    rec = {"dataset": "yacht", "method": "vi_flipout", "n_splits": 20,
           "summary": {"rmse": [1.0, 0.1], "ll": [-1.6, 0.05]}}  # fmt: skip
    assert "on 0 of 1 sets: none." in uci.build_table({("yacht", "vi_flipout"): rec})
    exact = _record("yacht", "vi_flipout", [-1.55, -1.55])
    assert "on 1 of 1 sets: yacht" in uci.build_table({("yacht", "vi_flipout"): exact})


# --------------------------------------------------------------------------------------
# Posteriors from elsewhere than the KL term: Laplace, SWAG, IVON, deep ensemble
# --------------------------------------------------------------------------------------

_SMALL = {"swag_steps": 40, "swag_rank": 4, "laplace_marglik_steps": 30}


def _yacht_split(validation: bool = False):
    x, y, _ = uci.load_dataset(DATA, "yacht")
    return uci.make_split(x, y, *uci.split_indices(DATA, "yacht", 0), validation=validation)


def _small_defaults():
    import dataclasses

    return dataclasses.replace(uci.DEFAULTS, **_SMALL)


def test_batches_cover_each_epoch_once_with_the_lr_schedule():
    torch = pytest.importorskip("torch")
    d = uci.DEFAULTS
    split = uci.Split(np.arange(10.0)[:, None], np.arange(10.0), np.zeros((1, 1)), np.zeros(1),
                      0.0, 1.0)  # fmt: skip
    import dataclasses

    d = dataclasses.replace(d, batch_size=3)
    torch.manual_seed(0)
    out = list(uci._batches(split, 6, d))
    assert [f for f, _, _ in out] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.7, 0.4])
    rows = [xb[:, 0].long().tolist() for _, xb, _ in out]
    assert all(len(r) == 3 for r in rows)
    assert len(set(sum(rows[:3], []))) == 9  # one epoch: 3 disjoint batches, 1 row dropped
    assert len(set(sum(rows[3:], []))) == 9
    for _, xb, yb in out:  # rows and targets stay paired
        torch.testing.assert_close(xb[:, 0], yb[:, 0])


@pytest.mark.parametrize("method", uci.POSTERIOR_METHODS)
def test_posterior_rows_learn_yacht(method: str):
    split = _yacht_split()
    rmse, ll, seconds, cpu = uci.run_split("yacht", method, split, 100, seed=0,
                                           d=_small_defaults())  # fmt: skip
    base_rmse, base_ll = uci.train_mean_baseline(split)
    assert math.isfinite(ll) and math.isfinite(rmse) and seconds > 0 and cpu > 0
    assert rmse < 0.7 * base_rmse and ll > base_ll + 0.3
    assert method in uci.METHOD_LABELS and method in uci.METHODS


def _trained(method: str, steps: int = 40, d=None):
    d = d or _small_defaults()
    return uci.fit_split("yacht", method, _yacht_split(), steps, seed=3, d=d)[0], d


def test_laplace_is_post_hoc_on_the_deterministic_network():
    """Same seed: the Laplace means are the trained MAP weights, its predictive mean is the
    MAP network's, and its variance is J Σ Jᵀ + σ² with σ the MAP network's noise."""
    torch = pytest.importorskip("torch")
    bl = pytest.importorskip("bayesian_layers")
    det, _ = _trained("deterministic")
    lap, _ = _trained("laplace")
    assert isinstance(lap, uci.NoisyNet) and lap.noise is not None
    for i in (0, 2):  # both linear layers, weights and biases
        torch.testing.assert_close(lap.net[i].weight_loc, det[i].weight)
        torch.testing.assert_close(lap.net[i].bias_loc, det[i].bias)
        assert type(lap.net[i].weight_initializer).__name__ == "KroneckerNormal"
    x = torch.as_tensor(_yacht_split().x_test, dtype=torch.float32)
    with torch.no_grad():
        map_out = det(x).distribution
    sigma = float(map_out.stddev.reshape(-1)[0])
    assert lap.noise_scale() == pytest.approx(sigma, rel=1e-6)
    loc, scale = uci.METHODS["laplace"].predictive(lap, x, 1)
    assert loc.shape == scale.shape == (1, len(x))
    torch.testing.assert_close(loc[0], map_out.mean.reshape(-1), rtol=1e-5, atol=1e-5)
    _, cov = bl.laplace.glm_predictive(lap.net, x, likelihood="regression")
    torch.testing.assert_close(scale[0].square(), cov.reshape(-1) + sigma**2)
    assert bool((scale[0].square() > sigma**2).all())  # epistemic variance on top of noise


def test_laplace_prior_precision_maximises_the_evidence():
    bl = pytest.importorskip("bayesian_layers")
    lap, d = _trained("laplace", d=uci.DEFAULTS)  # the full 100 marginal-likelihood steps
    tau = float(lap.net.laplace_curvature.prior_precision)
    best = float(bl.laplace.log_marginal_likelihood(lap.net, tau))
    for factor in (0.8, 1.25):
        assert float(bl.laplace.log_marginal_likelihood(lap.net, tau * factor)) < best
    extras = uci.METHODS["laplace"].extras(lap, _yacht_split(), d)
    assert extras["prior_precision"] == pytest.approx(tau)
    assert extras["noise_scale"] == pytest.approx(lap.noise_scale())


def test_swag_draws_centre_on_the_swa_mean_with_the_trained_noise():
    torch = pytest.importorskip("torch")
    bl = pytest.importorskip("bayesian_layers")
    det, _ = _trained("deterministic")
    swag, d = _trained("swag")
    with torch.no_grad():
        sigma = float(det(torch.zeros(1, 6)).distribution.stddev.reshape(-1)[0])
    assert float(swag(torch.zeros(1, 6)).distribution.stddev.reshape(-1)[0]) == pytest.approx(
        sigma, rel=1e-6)  # the noise stays the MAP network's  # fmt: skip
    assert uci.METHODS["swag"].extras(swag, _yacht_split(), d) == {"swag_rank": d.swag_rank}
    assert all(type(m.weight_initializer).__name__ == "SWAGNormal" for m in (swag[0], swag[2]))
    x = torch.as_tensor(_yacht_split().x_test, dtype=torch.float32)
    k = 400
    torch.manual_seed(0)
    loc, scale = uci.METHODS["swag"].predictive(swag, x, k)
    assert loc.shape == scale.shape == (k, len(x))
    torch.testing.assert_close(scale, torch.full_like(scale, sigma))
    with bl.posterior_mean(swag), torch.no_grad():
        centre = swag(x).distribution.mean.reshape(-1)
    spread = loc.std(0)
    assert bool((spread > 0).all())  # the draws differ
    # the network is nonlinear (ReLU): allow a small bias beside 5 Monte Carlo SEs
    assert bool(((loc.mean(0) - centre).abs() <= 5 * spread / math.sqrt(k) + 0.05 * spread).all())


def test_ivon_writes_its_posterior_with_ess_n_and_the_prior_as_weight_decay():
    """With no steps the Hessian is still h0, so every layer scale is 1 / sqrt(N (h0 + δ)),
    δ = 1 / (prior_scale² N): the N(0, prior_scale²) prior of the MAP row."""
    torch = pytest.importorskip("torch")
    d = uci.DEFAULTS
    split = _yacht_split()
    n = len(split.x_train)
    torch.manual_seed(0)
    model = uci.METHODS["ivon"].build(6, 8, d)
    uci._train_ivon(model, uci.METHODS["ivon"], split, 0, d)
    want = 1 / math.sqrt(n * (d.ivon_hess_init + 1 / (d.prior_scale**2 * n)))
    for layer in (model[0], model[2]):
        for name in ("weight", "bias"):
            _, scale = layer.posterior_loc_scale(name)
            torch.testing.assert_close(scale, torch.full_like(scale, want))


def test_ivon_trains_the_means_and_predicts_with_samples():
    torch = pytest.importorskip("torch")
    model, d = _trained("ivon")
    x = torch.as_tensor(_yacht_split().x_test, dtype=torch.float32)
    loc, scale = uci.METHODS["ivon"].predictive(model, x, 16)
    assert loc.shape == scale.shape == (16, len(x))
    assert bool((loc.std(0) > 0).all())  # function samples differ
    for layer in (model[0], model[2]):
        _, s = layer.posterior_loc_scale("weight")
        assert bool((s < d.prior_scale).all())  # the data shrank the posterior below the prior


def test_deep_ensemble_is_a_mixture_of_its_members():
    torch = pytest.importorskip("torch")
    d = uci.DEFAULTS
    torch.manual_seed(0)
    ens = uci.METHODS["deep_ensemble"].build(3, 8, d)
    assert ens.ensemble_size == d.deep_ensemble_size == 5
    x, y = torch.randn(7, 3), torch.randn(7, 1)
    with torch.no_grad():
        members = [ens.member(i)(x) for i in range(5)]  # (7, 2) each: [loc | scale]
    loc, scale = uci.METHODS["deep_ensemble"].predictive(ens, x, 100)
    assert loc.shape == scale.shape == (5, 7)
    for i, out in enumerate(members):
        torch.testing.assert_close(loc[i], out[:, 0])
        torch.testing.assert_close(scale[i], out[:, 1])
    torch.testing.assert_close(loc.mean(0), torch.stack(members)[..., 0].mean(0))
    assert not torch.allclose(loc[0], loc[1])  # independently initialised members
    torch.testing.assert_close(scale, torch.ones_like(scale))  # noise starts at 1
    # the loss: the sum over members of each member's mean NLL and MAP term
    nll = uci._ensemble_nll(ens, x, y)
    want = sum(-torch.distributions.Normal(m[:, :1], m[:, 1:]).log_prob(y).mean()
               for m in members)  # fmt: skip
    torch.testing.assert_close(nll, want)
    sq = sum(ens.member(i).net[j].weight.square().sum() for i in range(5) for j in (0, 2))
    torch.testing.assert_close(uci._ensemble_l2(ens, 37, d), sq / (2 * d.prior_scale**2 * 37))
