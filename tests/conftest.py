import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SHARED = Path(os.environ.get("DIFFMM_SHARED_DATASETS", SHARED))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.exists():
        pytest.skip(f"real datasets not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiktok(shared_datasets):
    from diffmm.data import read_diffmm_dir

    return read_diffmm_dir(shared_datasets / "tiktok")


@pytest.fixture(scope="session")
def ml100k(shared_datasets):
    from diffmm.data import registry as datasets

    return datasets.load(shared_datasets / "ml100k")
