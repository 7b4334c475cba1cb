"""Shared fixtures: a private copy of the data folder that tests may damage."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ldm_mini.data.bundled import DATA_DIR_ENV, data_dir

# the maintainer tools (tools/*.py: run from the repository, not installed) import by file name
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


@pytest.fixture
def data_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of data/ with only the small photos shards, used through $LDM_MINI_DATA."""
    source = data_dir()
    target = tmp_path / "data"
    (target / "photos").mkdir(parents=True)
    shutil.copy2(source / "MANIFEST.json", target / "MANIFEST.json")
    for shard in (source / "photos").glob("*.parquet"):
        shutil.copy2(shard, target / "photos" / shard.name)
    monkeypatch.setenv(DATA_DIR_ENV, str(target))
    return target


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors run faster on one thread, and far faster when the cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """nbval kills each notebook's kernel, so its scratch folder stays: remove those left."""
    from ldm_mini.environment import remove_stale_scratch_folders

    remove_stale_scratch_folders()
