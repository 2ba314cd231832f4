"""The Bayesian Transformer example, tensor-parallel over 2 gloo processes (--quick).

The single-process --quick run is in tests/test_examples.py with every example.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank: int, port: int, out: str) -> None:
    # what torchrun would set
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    import bayesian_transformer  # examples/ is on pytest's pythonpath (pyproject.toml)

    result = bayesian_transformer.main(["--quick", "--steps", "80"])
    torch.save(result, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_tensor_parallel_quick_run_learns_and_reports_uncertainty():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
        results = [torch.load(Path(out) / f"rank{r}.pt") for r in range(2)]
    r0, r1 = results
    assert r0["world"] == 2 and not r0["data_parallel"]
    # the ranks of a tensor-parallel group hold one model: identical evaluations
    assert r0["mean_loss"] == r1["mean_loss"] and r0["mc_loss"] == r1["mc_loss"]
    # 80 steps: far better than the uniform next-character guess (perplexity 97)
    assert r0["mean_perplexity"] < 0.25 * r0["uniform_perplexity"]
    assert math.isfinite(r0["mc_perplexity"]) and r0["mc_perplexity"] < 0.25 * 97
    assert r0["predictive_variance"] > 0 and r0["mutual_information"] > 0
