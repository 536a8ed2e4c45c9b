"""Shared test fixtures.

``shared/`` (real vendor files, simulated data) lives beside the repository root:
``<repo root>/../shared``, both here and in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
SIM_THREE_REGION = SHARED_DIR / "data" / "sim" / "abtem_three_region.h5"
REAL_DATA_DIR = SHARED_DIR / "data" / "real"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; tests that need it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def sim_three_region_path() -> Path:
    """The labelled abTEM simulation (three regions), skipping when it is absent."""
    if not SIM_THREE_REGION.is_file():
        pytest.skip(f"simulated data not found at {SIM_THREE_REGION}")
    return SIM_THREE_REGION


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real vendor-format test files (see real/PROVENANCE.md), skipping when absent."""
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real data folder not found at {REAL_DATA_DIR}")
    return REAL_DATA_DIR


@pytest.fixture
def count_h5_reads(monkeypatch):
    """Elements read through h5py, one entry per read of any dataset (tests bound them)."""
    import h5py
    import numpy as np

    reads: list[int] = []
    original = h5py.Dataset.__getitem__

    def counting(self, key, *args, **kwargs):
        out = original(self, key, *args, **kwargs)
        reads.append(int(np.asarray(out).size))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    return reads
