"""The build tool (tools/build_datasets.py) regenerates the bundled shards from their sources."""

from __future__ import annotations

import gzip
import importlib.util
import io
import struct
from pathlib import Path

import build_datasets as build
import numpy as np
import pytest
from PIL import Image

from ldm_mini.data import load_dataset
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
    assert shard["sha256"] in cards and "python tools/build_datasets.py photos" in cards
    assert read_manifest(tmp_path)["photos"]["splits"]["test"]["num_rows"] == len(shipped)
    monkeypatch.setenv("LDM_MINI_DATA", str(tmp_path))
    assert list(load_dataset("photos", split="test")["name"]) == list(shipped["name"])


def _debian_found() -> bool:
    try:
        for _, package, relative, *_ in build.PHOTO_SOURCES:
            if package.startswith("debian:"):
                build._debian_file(package.removeprefix("debian:"), relative)
    except FileNotFoundError:
        return False
    return True


def test_photos_builder_needs_its_source_packages():
    python_sources = importlib.util.find_spec("skimage") and importlib.util.find_spec("sklearn")
    if python_sources and _debian_found():
        rows = build.build_photos()
        assert len(rows["train"]["image"]) == 33 and len(rows["test"]["image"]) == 3
        import datasets

        shipped = load_dataset("photos", split="train")
        assert rows["train"]["name"] == list(shipped["name"])
        assert rows["train"]["license"] == list(shipped["license"])
        encoded = shipped.cast_column("image", datasets.Image(decode=False))
        for index in (0, 6):  # the sample photos keep their original bytes
            assert rows["train"]["image"][index]["bytes"] == encoded[index]["image"]["bytes"]
        for index in (7, 20, 32):  # the wallpapers, shrunk (another JPEG library may differ a bit)
            rebuilt = np.asarray(Image.open(io.BytesIO(rows["train"]["image"][index]["bytes"])))
            stored = np.asarray(shipped[index]["image"])
            assert rebuilt.shape == stored.shape
            assert np.abs(rebuilt.astype(float) - stored).mean() < 1.0
    else:
        with pytest.raises(FileNotFoundError, match=r"build-data|apt-get install"):
            build.build_photos()


def test_missing_debian_wallpaper_says_how_to_get_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LDM_MINI_DEB_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        build._debian_file("mate-backgrounds", "mate/nature/Aqua.jpg")
    message = str(info.value)
    assert str(tmp_path / "usr/share/backgrounds/mate/nature/Aqua.jpg") in message
    assert "apt-get install mate-backgrounds" in message and "LDM_MINI_DEB_ROOT" in message
    wallpaper = tmp_path / "usr/share/backgrounds/mate/nature/Aqua.jpg"
    wallpaper.parent.mkdir(parents=True)
    wallpaper.write_bytes(b"")
    assert build._debian_file("mate-backgrounds", "mate/nature/Aqua.jpg") == wallpaper


def test_shrink_wallpaper_keeps_the_shape_and_never_enlarges():
    def jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels.squeeze(), mode).save(out, format="JPEG", quality=95)
        return out.getvalue()

    wide = Image.open(io.BytesIO(build.shrink_wallpaper(jpeg((3000, 1500)))))
    assert (wide.format, wide.mode, wide.size) == ("JPEG", "RGB", (build.WALLPAPER_SIDE, 512))
    tall = Image.open(io.BytesIO(build.shrink_wallpaper(jpeg((900, 2700), "L"))))
    assert (tall.mode, tall.size) == ("RGB", (341, build.WALLPAPER_SIDE))
    small = Image.open(io.BytesIO(build.shrink_wallpaper(jpeg((640, 480)))))
    assert small.size == (640, 480)
    # the same bytes in, the same bytes out (the shipped rows can be rebuilt)
    assert build.shrink_wallpaper(jpeg((2048, 1024))) == build.shrink_wallpaper(jpeg((2048, 1024)))


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
