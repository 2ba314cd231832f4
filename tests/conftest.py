"""Every test starts from the same torch seed and with distribution checks on."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one intra-op thread each, so the
    # workers do not oversubscribe the cores (a test that pins threads itself still may)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _distribution_checks() -> Iterator[None]:
    """The first ``torch.compile`` in a process turns distribution argument/value checks
    off for good (Dynamo calls ``set_default_validate_args(False)``); restore torch's
    default so error-path tests do not depend on whether a compile test ran before."""
    default = torch.distributions.Distribution._validate_args
    yield
    torch.distributions.Distribution.set_default_validate_args(default)


@pytest.fixture
def checks_off_as_dynamo_sets_them() -> Iterator[None]:
    """For compile tests: distribution checks off, as Dynamo's first compile leaves them
    in any process (fullgraph capture cannot trace the checks); restored afterwards."""
    torch.distributions.Distribution.set_default_validate_args(False)
    yield
