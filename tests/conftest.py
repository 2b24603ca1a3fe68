"""Shared fixtures. Tests needing the real data in ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from echochamber.data.paths import ENV_VAR, data_dir

FIXTURES = Path(__file__).parent / "fixtures"

# One intra-op thread per test process: the suite also runs sandbox and math-verify workers, and
# two torch threads fighting them on a 2-core machine turned second-long tests into minutes.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip(f"real data folder not found (set {ENV_VAR} or put shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
