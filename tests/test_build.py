"""The build scripts regenerate the bundled shards from their sources."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from ldm_mini.data import build, load_dataset
from ldm_mini.data.bundled import read_manifest


def _write_idx(path: Path, array: np.ndarray, dtype_code: int = 0x08) -> None:
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_rejects_other_files(tmp_path: Path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", array)
    assert np.array_equal(build._read_idx(tmp_path / "ok.gz"), array)
    _write_idx(tmp_path / "float.gz", array, dtype_code=0x0D)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        build._read_idx(tmp_path / "float.gz")


def test_missing_source_says_how_to_install_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build.build_fashion_mnist(tmp_path / "nowhere")


def test_cards_are_generated_from_the_manifest(tmp_path: Path, monkeypatch):
    import datasets

    shipped = load_dataset("photos", split="test").cast_column(
        "image", datasets.Image(decode=False)
    )
    rows = {"test": {column: list(shipped[column]) for column in shipped.column_names}}
    entry = build.write_dataset("photos", tmp_path, rows)
    manifest = build.write_manifest(tmp_path, {"photos": entry})
    cards = (tmp_path / "README.md").read_text()
    shard = manifest["photos"]["splits"]["test"]["files"][0]
    assert shard["sha256"] in cards and "python -m ldm_mini.data.build photos" in cards
    assert read_manifest(tmp_path)["photos"]["splits"]["test"]["num_rows"] == len(shipped)
    monkeypatch.setenv("LDM_MINI_DATA", str(tmp_path))
    assert list(load_dataset("photos", split="test")["name"]) == list(shipped["name"])


def test_photos_builder_needs_its_source_packages():
    if importlib.util.find_spec("skimage") and importlib.util.find_spec("sklearn"):
        rows = build.build_photos()
        assert len(rows["train"]["image"]) == 7 and len(rows["test"]["image"]) == 3
    else:
        with pytest.raises(FileNotFoundError, match=r"build-data"):
            build.build_photos()


def _same_rows(rebuilt: dict[str, list], shipped, columns: list[str]) -> None:
    assert len(rebuilt["image"]) == len(shipped)
    for index in np.linspace(0, len(shipped) - 1, 25).astype(int):
        assert np.array_equal(
            np.asarray(rebuilt["image"][index]), np.asarray(shipped[int(index)]["image"])
        )
        for column in columns:
            assert rebuilt[column][index] == shipped[int(index)][column]


@pytest.mark.skipif(
    not build.FASHION_MNIST_DIR.exists(), reason="apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_rebuild_reproduces_the_shipped_rows():
    rebuilt = build.build_fashion_mnist()
    for split in ("train", "test"):
        _same_rows(rebuilt[split], load_dataset("fashion_mnist", split=split), ["label", "caption"])


@pytest.mark.skipif(
    not build.NOTO_EMOJI_FONT.exists(), reason="apt-get install fonts-noto-color-emoji"
)
def test_emoji_rebuild_reproduces_the_shipped_rows():
    rebuilt = build.build_emoji()
    for split in ("train", "test"):
        _same_rows(rebuilt[split], load_dataset("emoji", split=split), ["caption", "codepoint"])
