"""Hub datasets (offline behaviour, schema mapping) and local image folders."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from ldm_mini.data import CorruptImageError, DatasetError, HubUnavailableError, load_dataset
from ldm_mini.data.hub import to_common_schema
from ldm_mini.network import reachable


def test_hub_dataset_offline_fails_fast_and_suggests_bundled_sets(monkeypatch):
    # .invalid never resolves (RFC 2606): this is "offline" on every machine
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info:
        load_dataset("zalando-datasets/fashion_mnist", split="train")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "'zalando-datasets/fashion_mnist'" in message and "not reachable" in message
    assert "fashion_mnist, emoji, shapes, photos" in message and "HF_HUB_OFFLINE=1" in message
    assert elapsed < 30, f"the offline error took {elapsed:.0f} s: it must not hang on retries"


def test_hub_dataset_in_offline_mode_not_cached_is_a_clear_error(tmp_path: Path):
    # a fresh process, so that datasets/huggingface_hub read HF_HUB_OFFLINE at import
    code = (
        "from ldm_mini.data import load_dataset, HubUnavailableError\n"
        "try:\n"
        "    load_dataset('someone/not-downloaded')\n"
        "except HubUnavailableError as err:\n"
        "    print('HUB-ERROR', err)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "HUB-ERROR" in result.stdout, result.stderr[-2000:]
    assert "not in the local cache" in result.stdout and "bundled dataset" in result.stdout


def test_reachable_reports_a_silent_network_as_a_timeout(monkeypatch):
    def no_answer(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", no_answer)
    ok, reason = reachable("https://example.org", timeout=0.5)
    assert not ok and "no answer from example.org:443 within 0.5 s" in reason


def test_hub_columns_are_mapped_to_the_common_schema():
    image = Image.new("RGB", (4, 4))
    raw = datasets.Dataset.from_dict(
        {"img": [image, image], "fine_label": [0, 1], "text": ["a", "b"], "extra": [1, 2]},
        features=datasets.Features({
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=["x", "y"]),
            "text": datasets.Value("string"),
            "extra": datasets.Value("int32"),
        }),
    )  # fmt: skip
    mapped = to_common_schema(raw)
    assert mapped.column_names == ["image", "label", "caption", "extra"]
    assert mapped[1]["label"] == 1 and mapped[1]["caption"] == "b"
    # a ClassLabel column with another name becomes the label too
    other = datasets.Dataset.from_dict(
        {"image": [image], "category": [0]},
        features=datasets.Features(
            {"image": datasets.Image(), "category": datasets.ClassLabel(names=["x"])}
        ),
    )
    assert to_common_schema(other).column_names == ["image", "label"]
    with pytest.raises(DatasetError, match="no image column"):
        to_common_schema(datasets.Dataset.from_dict({"text": ["a"]}))


def _write_images(folder: Path, names: list[str], size=(12, 10)) -> None:
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), index * 40, np.uint8)).save(path)


def test_folder_with_class_subfolders_gets_labels(tmp_path: Path):
    _write_images(tmp_path, ["cats/a.png", "cats/b.png", "dogs/c.jpg"])
    dataset = load_dataset(str(tmp_path))
    assert len(dataset) == 3 and set(dataset.column_names) == {"image", "label"}
    names = dataset.features["label"].names
    assert sorted(names) == ["cats", "dogs"]
    assert sorted(names[label] for label in dataset["label"]) == ["cats", "cats", "dogs"]


def test_folder_with_metadata_gets_captions(tmp_path: Path):
    _write_images(tmp_path, ["one.png", "two.png"])
    (tmp_path / "metadata.csv").write_text(
        "file_name,text\none.png,a dark square\ntwo.png,a grey square\n"
    )
    dataset = load_dataset(tmp_path)
    assert sorted(dataset["caption"]) == ["a dark square", "a grey square"]
    assert dataset[0]["image"].size == (12, 10)


def test_corrupt_image_in_folder_is_named(tmp_path: Path):
    _write_images(tmp_path, ["good.png"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    with pytest.raises(CorruptImageError) as info:
        load_dataset(tmp_path)
    assert str(bad) in str(info.value)
    # a truncated file is caught too
    good = (tmp_path / "good.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptImageError, match="broken.png"):
        load_dataset(tmp_path)


def test_folder_without_images_is_an_error(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(tmp_path)
