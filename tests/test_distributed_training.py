"""Training recipes of ``docs/training.md`` ("Distributed training") on 2 gloo processes.

The ELBO convention shared with ``bl.elbo_loss`` (the mean form), the data-parallel
size and seeds from a device mesh, gradient accumulation, FSDP2 with its default
resharding and with bf16 parameters, distributed checkpoints and the tensor-parallel
plan under other layer names. One spawn runs every check (process start-up is the
slow part); each check records its own error so that each test fails on its own.
Single-process references run inside the workers with the same seeds and inputs.
"""

from __future__ import annotations

import contextlib
import copy
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_util import batch, join_gloo, mlp, spawn_results
from torch import nn
from torch.distributed.tensor import DTensor

import bayesian_layers as bl
from bayesian_layers import distributed as bld
from bayesian_layers import layers

WORLD = 2
N_TRAIN = 100
SEED = 5


class _FcBlock(nn.Module):
    """A transformer block whose feed-forward pair is named ``fc1``/``fc2`` (GPT-2 style)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = layers.MultiheadAttentionFlipout(8, 2, batch_first=True)
        self.fc1 = layers.LinearFlipout(8, 16)
        self.fc2 = layers.LinearFlipout(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.fc2(F.relu(self.fc1(x)))


class _FcNet(nn.Module):
    """Two blocks and a replicated Bayesian head (not in the tensor-parallel plan)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_FcBlock(), _FcBlock())
        torch.manual_seed(1)
        self.head = layers.LinearReparameterization(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def _plan(model: nn.Module) -> dict[str, Any]:
    return bld.transformer_plan(model, colwise=("fc1",), rowwise=("fc2",))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 5, 8, generator=g), torch.randint(0, 3, (4, 5), generator=g)


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t.contiguous())
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


# ------------------------------------------------------------------ the checks
def _check_tp_seed(rank: int, res: dict[str, Any], outdir: str) -> None:
    """Pure tensor parallelism: the default seed raises; ``mesh=`` keeps replicas equal."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))
    x, y = _tokens()

    def train(seed: Callable[[], object]) -> torch.Tensor:
        model = _FcNet()
        parallelize_module(model, mesh["tp"], _plan(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        seed()
        for _ in range(5):
            nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            bld.elbo_loss(nll, model, N_TRAIN).backward()
            opt.step()
        return model.head.weight_loc.detach()

    try:
        head = train(lambda: bld.manual_seed(SEED))  # the global rank: streams differ
        res["seed_default"] = (
            "no error",
            max((h - head).abs().max().item() for h in _gather(head)),
        )
    except RuntimeError as e:
        res["seed_default"] = ("RuntimeError", str(e))
    head = train(lambda: bld.manual_seed(SEED, mesh=mesh["dp"]))
    res["seed_mesh_drift"] = max((h - head).abs().max().item() for h in _gather(head))


def _check_tp_elbo(rank: int, res: dict[str, Any], outdir: str) -> None:
    """The data-parallel size of the sum form from the mesh; inconsistent ones raise."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))
    model = _FcNet()
    parallelize_module(model, mesh["tp"], _plan(model))
    x, y = _tokens()
    bld.manual_seed(SEED, mesh=mesh["dp"])
    nll_sum = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
    tokens = y.numel()
    kl = bld.kl_divergence(model)
    expected = (nll_sum / tokens + kl / N_TRAIN).item()
    res["elbo_expected"] = expected
    res["elbo_sum_default"] = bld.elbo_loss(
        nll_sum, model, N_TRAIN, global_batch_size=tokens
    ).item()
    res["elbo_sum_dp_mesh"] = bld.elbo_loss(
        nll_sum, model, N_TRAIN, global_batch_size=tokens, dp_mesh=mesh["dp"]
    ).item()
    res["elbo_mean"] = bld.elbo_loss(nll_sum / tokens, model, N_TRAIN).item()
    errors = {}
    for key, kwargs in [
        ("dp_size_2", {"data_parallel_size": 2}),
        ("dp_mesh_is_tp", {"dp_mesh": mesh["tp"]}),
    ]:
        try:
            bld.elbo_loss(nll_sum, model, N_TRAIN, global_batch_size=tokens, **kwargs)
            errors[key] = None
        except ValueError as e:
            errors[key] = str(e)
    res["elbo_errors"] = errors


def _check_accumulation(rank: int, res: dict[str, Any], outdir: str) -> None:
    """DDP with two accumulated micro-batches per rank = one big batch in one process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = batch(8)
    xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
    grads, totals = {}, {}
    for form in ("mean", "sum"):
        model = mlp()
        ddp = DDP(model)
        total = 0.0
        with bl.posterior_mean(model):
            for i, (xm, ym) in enumerate(zip(xs.chunk(2), ys.chunk(2), strict=True)):
                # the recipe: forward and backward of every micro-batch but the last
                # without the gradient all-reduce
                with ddp.no_sync() if i == 0 else contextlib.nullcontext():
                    if form == "mean":
                        nll_mean = F.cross_entropy(ddp(xm), ym)
                        loss = bld.elbo_loss(nll_mean, model, N_TRAIN, accumulation_steps=2)
                    else:
                        nll_sum = F.cross_entropy(ddp(xm), ym, reduction="sum")
                        loss = bld.elbo_loss(nll_sum, model, N_TRAIN, global_batch_size=len(x),
                            accumulation_steps=2,
                        )  # fmt: skip
                    loss.backward()
                total += loss.item()
        grads[form] = {n: p.grad.clone() for n, p in model.named_parameters()}
        totals[form] = sum(t.item() for t in _gather(torch.tensor(total))) / WORLD
    ref = mlp()
    with bl.posterior_mean(ref):
        loss = bl.elbo_loss(F.cross_entropy(ref(x), y), ref, N_TRAIN)
    loss.backward()
    res["acc_loss"] = (totals["mean"], totals["sum"], loss.item())
    res["acc_grad_err"] = max(
        (g[n] - p.grad).abs().max().item()
        for g in grads.values()
        for n, p in ref.named_parameters()
    )
    res["acc_grad_scale"] = max(p.grad.abs().max().item() for p in ref.parameters())


def _type_error(call: Callable[[], object]) -> str | None:
    try:
        call()
    except TypeError as e:
        return str(e)
    return None


def _fsdp_net(**kwargs: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = bld.WithKL(mlp())
    for layer in net.model:
        if isinstance(layer, layers.BayesianLayer):
            fully_shard(layer, **kwargs)
    fully_shard(net, **kwargs)
    return net


def _check_fsdp_default(rank: int, res: dict[str, Any], outdir: str) -> None:
    """The default ``fully_shard``: one step equals one process; checkpoints round-trip."""
    import torch.distributed.checkpoint as dcp

    x, y = batch()
    net = _fsdp_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    bld.manual_seed(SEED, rank=rank)
    out, kl = net(x.chunk(WORLD)[rank])
    res["fsdp_resharded_after_forward"] = isinstance(net.model[0].weight_loc, DTensor)
    nll_mean = F.cross_entropy(out, y.chunk(WORLD)[rank])
    bld.elbo_loss(nll_mean, num_examples=N_TRAIN, kl=kl).backward()
    opt.step()
    state = {k: _full(v) for k, v in net.state_dict().items()}
    res["fsdp_kl_after"] = bld.kl_divergence(net).item()
    res["fsdp_losses_error"] = _type_error(lambda: bl.losses(net))
    res["fsdp_elbo_error"] = _type_error(lambda: bl.elbo_loss(nll_mean, net, N_TRAIN))
    # a distributed checkpoint of the sharded model loads into a fresh sharded model
    path = str(Path(outdir) / "ckpt")
    dcp.save(net.state_dict(), checkpoint_id=path)
    fresh = _fsdp_net()
    loaded = fresh.state_dict()
    dcp.load(loaded, checkpoint_id=path)
    fresh.load_state_dict(loaded)
    res["fsdp_dcp_err"] = max(
        (_full(v) - state[k]).abs().max().item() for k, v in fresh.state_dict().items()
    )
    if rank == 0:
        ref = mlp()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
        total = sum(bl.losses(ref)) / N_TRAIN
        for r in range(WORLD):
            bld.manual_seed(SEED, rank=r)
            out_r = ref(x.chunk(WORLD)[r])
            total = total + F.cross_entropy(out_r, y.chunk(WORLD)[r], reduction="sum") / len(x)
        total.backward()
        ref_opt.step()
        ref_state = ref.state_dict()
        res["fsdp_keys"] = (list(state), list(ref_state))
        res["fsdp_state_err"] = max((state[k] - ref_state[k]).abs().max().item() for k in ref_state)
        res["fsdp_kl_ref"] = sum(bl.losses(ref)).item()


def _check_fsdp_bf16(rank: int, res: dict[str, Any], outdir: str) -> None:
    """bf16 parameters in the forward pass; the KL from the float32 shards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    for key, kwargs in [("default", {}), ("whole", {"reshard_after_forward": False})]:
        net = _fsdp_net(mp_policy=policy, **kwargs)
        _, kl = net(batch()[0].chunk(WORLD)[rank])
        res[f"bf16_kl_{key}"] = (kl.dtype, kl.item())
    res["bf16_kl_ref"] = sum(bl.losses(mlp())).item()


def _check_fc_plan(rank: int, res: dict[str, Any], outdir: str) -> None:
    """``transformer_plan`` with ``fc1``/``fc2``: posterior means equal one process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    model, ref = _FcNet(), _FcNet()
    plan = bld.transformer_plan(model, colwise=("fc*1",), rowwise=("fc2",))  # a pattern
    res["plan_keys"] = sorted(plan)
    parallelize_module(model, mesh, plan)
    x, _ = _tokens()
    with bl.posterior_mean(model), bl.posterior_mean(ref):
        res["plan_out_err"] = (model(x) - ref(x)).abs().max().item()
    res["plan_kl"] = (bld.kl_divergence(model).item(), sum(bl.losses(ref)).item())
    res["plan_losses_error"] = _type_error(lambda: bl.losses(model))


def _check_compile(rank: int, res: dict[str, Any], outdir: str) -> None:
    """A compiled tensor-parallel pair (Dynamo with the eager backend, to keep it fast;
    the host-side noise setup of each layer is a graph break) equals eager mode."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    model = mlp()
    plan = {"0": bld.BayesianColwiseParallel(), "2": bld.BayesianRowwiseParallel()}
    parallelize_module(model, mesh, plan)
    compiled = torch.compile(model, backend="eager")
    x = batch()[0]
    bld.manual_seed(SEED, rank=0)
    with bl.posterior_mean(model):
        res["compile_mean_err"] = (compiled(x) - model(x)).abs().max().item()
    out = compiled(x)
    (out.square().sum() + bld.kl_divergence(model)).backward()
    res["compile_grad_finite"] = all(_full(p.grad).isfinite().all() for p in model.parameters())


CHECKS = [
    _check_tp_seed,
    _check_tp_elbo,
    _check_accumulation,
    _check_fsdp_default,
    _check_fsdp_bf16,
    _check_fc_plan,
    _check_compile,  # last: Dynamo turns distribution checks off in the process
]


def _worker(rank: int, port: int, outdir: str) -> None:
    join_gloo(rank, port, WORLD)
    res: dict[str, Any] = {}
    try:
        for check in CHECKS:
            try:
                check(rank, res, outdir)
            except Exception:  # noqa: BLE001 - reported by the test of that check
                res[f"error{check.__name__}"] = traceback.format_exc()
            dist.barrier()
    finally:
        torch.save(res, Path(outdir) / f"rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return spawn_results(_worker, WORLD)


def _ok(results: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    errors = [r[f"error_{check}"] for r in results if f"error_{check}" in r]
    assert not errors, errors[0]
    return results


# ------------------------------------------------------------------ seeds, mesh, ELBO
def test_tensor_parallel_default_seed_raises_and_mesh_seed_keeps_replicas_equal(results):
    for r in _ok(results, "check_tp_seed"):
        kind, message = r["seed_default"]
        assert kind == "RuntimeError", r["seed_default"]
        assert "mesh=" in message and "MultiheadAttentionFlipout" in message
        assert r["seed_mesh_drift"] == 0.0  # the replicated head stays replicated


def test_sum_form_data_parallel_size_from_the_mesh(results):
    for r in _ok(results, "check_tp_elbo"):
        expected = r["elbo_expected"]
        for key in ("elbo_sum_default", "elbo_sum_dp_mesh", "elbo_mean"):
            assert r[key] == pytest.approx(expected, rel=1e-6), key
        errors = r["elbo_errors"]
        assert "data_parallel_size" in errors["dp_size_2"]
        assert "dp_mesh" in errors["dp_mesh_is_tp"] and 'mesh["dp"]' in errors["dp_mesh_is_tp"]


def test_gradient_accumulation_counts_the_kl_once(results):
    for r in _ok(results, "check_accumulation"):
        mean_form, sum_form, one_batch = r["acc_loss"]
        assert mean_form == pytest.approx(one_batch, rel=1e-6)
        assert sum_form == pytest.approx(one_batch, rel=1e-6)
        assert r["acc_grad_err"] < 1e-6 * max(1.0, r["acc_grad_scale"])


# ------------------------------------------------------------------------- FSDP2
def test_fsdp2_default_resharding_step_equals_single_process(results):
    r0 = _ok(results, "check_fsdp_default")[0]
    assert all(r["fsdp_resharded_after_forward"] for r in results)  # the memory saving
    keys, ref_keys = r0["fsdp_keys"]
    assert keys == ref_keys  # no `model.` prefix from WithKL
    assert r0["fsdp_state_err"] < 1e-6
    for r in results:
        assert r["fsdp_kl_after"] == pytest.approx(r0["fsdp_kl_ref"], rel=1e-6)
        assert r["fsdp_dcp_err"] == 0.0


def test_losses_of_a_sharded_model_names_the_fix(results):
    for r in _ok(results, "check_fsdp_default") + _ok(results, "check_fc_plan"):
        for key in ("fsdp_losses_error", "fsdp_elbo_error", "plan_losses_error"):
            if key in r:
                assert r[key] is not None and "bl.distributed.kl_divergence" in r[key], key


def test_fsdp2_bf16_parameters_kl_in_float32(results):
    for r in _ok(results, "check_fsdp_bf16"):
        for key in ("default", "whole"):
            dtype, kl = r[f"bf16_kl_{key}"]
            assert dtype == torch.float32
            assert kl == pytest.approx(r["bf16_kl_ref"], rel=1e-6), key


# ---------------------------------------------------------------- tensor-parallel plan
def test_transformer_plan_with_other_names_and_patterns(results):
    for r in _ok(results, "check_fc_plan"):
        assert r["plan_keys"] == sorted(
            f"blocks.{i}.{m}" for i in range(2) for m in ("attn", "fc1", "fc2")
        )
        assert r["plan_out_err"] < 1e-5
        kl, kl_ref = r["plan_kl"]
        assert kl == pytest.approx(kl_ref, rel=1e-6)


def test_tensor_parallel_compiles_with_graph_breaks(results):
    for r in _ok(results, "check_compile"):
        assert r["compile_mean_err"] < 1e-6
        assert r["compile_grad_finite"]


# ------------------------------------------------------------------ one process
def test_transformer_plan_raises_on_paths_that_match_nothing():
    model = _FcNet()
    with pytest.raises(ValueError, match=r"'ff\.0'.*fc1.*fc2"):
        bld.transformer_plan(model)  # the defaults name ff.0 / ff.2
    with pytest.raises(ValueError, match="'fc_1'"):
        bld.transformer_plan(model, colwise=("fc_1",), rowwise=("fc2",))  # a typo
    with pytest.raises(ValueError, match="row-wise partner"):
        bld.transformer_plan(model, colwise=("fc1",), rowwise=())
    with pytest.raises(ValueError, match="both"):
        bld.transformer_plan(model, colwise=("fc*",), rowwise=("fc2",))


def test_elbo_loss_mean_form_is_bl_elbo_loss_and_old_sum_calls_still_work():
    model = mlp()
    x, y = batch()
    bld.manual_seed(SEED)
    nll_sum = F.cross_entropy(model(x), y, reduction="sum")
    expected = bl.elbo_loss(nll_sum / len(x), model, N_TRAIN, kl_weight=0.5)
    for loss in (
        bld.elbo_loss(nll_sum / len(x), model, N_TRAIN, kl_weight=0.5),
        bld.elbo_loss(nll_sum / len(x), model=model, num_examples=N_TRAIN, kl_weight=0.5),
        bld.elbo_loss(nll_sum, model, N_TRAIN, global_batch_size=len(x), kl_weight=0.5),
        bld.elbo_loss(nll_sum, model, np.int64(N_TRAIN), global_batch_size=len(x),
                      kl_weight=0.5),
    ):  # fmt: skip
        torch.testing.assert_close(loss, expected)


def test_elbo_loss_rejects_bad_input_and_ambiguous_orders():
    model = mlp()
    nll = torch.tensor(1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kl_weight"):
            bld.elbo_loss(nll, model, N_TRAIN, kl_weight=bad)
    with pytest.raises(ValueError, match="accumulation_steps"):
        bld.elbo_loss(nll, model, N_TRAIN, accumulation_steps=0)
    with pytest.raises(TypeError, match="global_batch_size"):  # a sum without its batch size
        bld.elbo_loss(nll, N_TRAIN, model=model)
    # bl.elbo_loss's arguments: global_batch_size selects the sum form; the older order
    # (the training-set size second, the model by keyword) warns and gives the same loss
    with pytest.warns(DeprecationWarning, match="pass the arguments of bl.elbo_loss"):
        older = bld.elbo_loss(nll, N_TRAIN, global_batch_size=8, model=model)
    torch.testing.assert_close(older, bld.elbo_loss(nll, model, N_TRAIN, global_batch_size=8))
    with pytest.raises(ValueError, match="num_examples"):
        bld.elbo_loss(nll, model, 0)
    with pytest.raises(ValueError, match="mesh"):
        bld.manual_seed(1, rank=0, mesh=object())  # type: ignore[arg-type]


def test_with_kl_state_dict_keys_are_the_wrapped_models():
    model = mlp()
    net = bld.WithKL(model)
    assert list(net.state_dict()) == list(model.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in model.named_parameters()]
    other = mlp()
    for p in other.parameters():
        p.data.add_(1.0)
    net.load_state_dict(other.state_dict())
    assert torch.equal(model[0].weight_loc, other[0].weight_loc)
    copied = copy.deepcopy(net)
    assert copied.model[0].weight_loc is next(copied.parameters())  # still one set of tables
    net.eval()
    assert not model.training and not model[0].training


def test_activation_checkpointing_needs_preserve_rng_state():
    """Recomputing a sampled layer must redraw the same noise: torch's default
    ``preserve_rng_state=True`` gives the plain gradient, ``False`` another one."""
    from torch.utils.checkpoint import checkpoint

    layer = layers.LinearReparameterization(4, 3)
    x = torch.randn(5, 4)
    grads = []
    for kwargs in (None, {"preserve_rng_state": True}, {"preserve_rng_state": False}):
        layer.zero_grad()
        torch.manual_seed(SEED)
        out = layer(x) if kwargs is None else checkpoint(layer, x, use_reentrant=False, **kwargs)
        out.square().sum().backward()
        grads.append(layer.weight_rho.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    assert not torch.allclose(grads[2], grads[0])
