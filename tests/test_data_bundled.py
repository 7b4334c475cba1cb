"""The bundled parquet datasets: schema, sizes, checksums, cards, and every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ldm_mini.data import (
    DamagedShardError,
    DataDirNotFoundError,
    UnknownDatasetError,
    data_dir,
    known_datasets,
    list_datasets,
    load_dataset,
)
from ldm_mini.data.bundled import read_manifest, sha256_file

REPO = Path(__file__).resolve().parent.parent


def test_data_dir_is_the_repository_folder():
    assert data_dir() == REPO / "data"


def test_fashion_mnist_test_split_is_complete_and_well_formed():
    dataset = load_dataset("fashion_mnist", split="test")
    assert len(dataset) == 10_000
    assert set(dataset.column_names) == {"image", "label", "caption"}
    assert dataset.features["label"].num_classes == 10
    row = dataset[0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (28, 28) and row["image"].mode == "L"
    assert row["caption"] == dataset.features["label"].int2str(row["label"]).lower()
    # the original test split is balanced: 1,000 images per class
    counts = {label: 0 for label in range(10)}
    for label in dataset["label"]:
        counts[label] += 1
    assert set(counts.values()) == {1_000}


def test_fashion_mnist_train_subset():
    dataset = load_dataset("fashion_mnist", split="train")
    assert len(dataset) == 20_000
    assert len(set(dataset["label"])) == 10


def test_emoji_is_captioned_rgb():
    train = load_dataset("emoji", split="train")
    test = load_dataset("emoji", split="test")
    assert len(train) + len(test) >= 1_000
    for dataset in (train, test):
        assert {"image", "caption"} <= set(dataset.column_names)
        row = dataset[len(dataset) // 2]
        assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    captions = list(train["caption"]) + list(test["caption"])
    assert all(c and c == c.lower() for c in captions)
    assert "grinning face" in captions
    assert len(set(captions)) == len(captions), "captions must be unique names"
    assert not set(train["codepoint"]) & set(test["codepoint"]), "splits must be disjoint"


def test_photos_are_rgb_with_licences():
    for split in ("train", "test"):
        dataset = load_dataset("photos", split=split)
        for row in dataset:
            assert row["image"].mode == "RGB"
            assert min(row["image"].size) >= 256, "photos must be big enough for SR crops"
            assert row["license"] and row["credit"] and row["caption"]


def test_manifest_checksums_match_files_and_cards():
    manifest = read_manifest()
    cards = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    for name, entry in manifest.items():
        assert f"`{name}`" in cards and entry["build_command"] in cards
        assert entry["license"] in cards and entry["source"] in cards
        for split in entry["splits"].values():
            for shard in split["files"]:
                path = REPO / "data" / shard["path"]
                assert sha256_file(path) == shard["sha256"], f"{path} differs from MANIFEST.json"
                assert path.stat().st_size == shard["bytes"]
                assert shard["sha256"] in cards


def test_data_folder_stays_small():
    # datasets about 27 MiB; shipped checkpoints (weights in float16: about 2.8 MiB per model of
    # ~1.4M parameters): 12 models to 37 MiB, then the shapes inpainting model and its
    # unconditional rival, the layout and the label-map model (about 3 MiB each); 80 MiB holds
    # them with a few MiB to spare. A clone also carries the history: keep old weights out of it.
    total = sum(p.stat().st_size for p in (REPO / "data").rglob("*") if p.is_file())
    assert total < 80 * 2**20, f"data/ is {total / 2**20:.1f} MiB, the budget is 80 MiB"


def test_list_datasets_describes_every_dataset():
    infos = {info.name: info for info in list_datasets()}
    assert set(infos) == set(known_datasets()) == {"emoji", "fashion_mnist", "photos", "shapes"}
    assert infos["fashion_mnist"].splits["test"] == 10_000
    assert infos["fashion_mnist"].license == "MIT"
    assert infos["shapes"].kind == "procedural" and infos["emoji"].bytes_on_disk > 0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    for name in ("emoji", "fashion_mnist", "photos", "shapes"):
        assert name in message
    assert "Did you mean 'fashion_mnist'?" in message
    with pytest.raises(UnknownDatasetError, match="No folder exists"):
        load_dataset("./no/such/folder")


def test_unknown_split_and_options_are_rejected():
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_dataset("photos", split="validation")
    with pytest.raises(TypeError, match="takes no options"):
        load_dataset("photos", split="test", image_size=32)


def test_damaged_shard_names_file_and_rebuild_command(data_copy: Path):
    shard = data_copy / "photos" / "test-00000-of-00001.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DamagedShardError) as info:
        load_dataset("photos", split="test")
    message = str(info.value)
    assert str(shard) in message and "damaged" in message
    assert "python tools/build_datasets.py photos" in message
    assert "git checkout -- data/photos/test-00000-of-00001.parquet" in message
    # the intact split of the same dataset still loads
    assert len(load_dataset("photos", split="train")) == 33


def test_missing_shard_names_file_and_rebuild_command(data_copy: Path):
    shard = data_copy / "photos" / "train-00000-of-00001.parquet"
    shard.unlink()
    with pytest.raises(DamagedShardError, match="missing") as info:
        load_dataset("photos", split="train")
    assert str(shard) in str(info.value)
    assert "python tools/build_datasets.py photos" in str(info.value)


def test_damaged_manifest_is_reported(data_copy: Path):
    (data_copy / "MANIFEST.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DamagedShardError, match="MANIFEST.json"):
        load_dataset("photos", split="test")


def test_data_dir_env_must_point_at_a_data_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LDM_MINI_DATA", str(tmp_path))
    with pytest.raises(DataDirNotFoundError, match="LDM_MINI_DATA"):
        load_dataset("photos")


def test_manifest_rows_are_what_loads(data_copy: Path):
    manifest = json.loads((data_copy / "MANIFEST.json").read_text())
    manifest["photos"]["splits"]["test"]["num_rows"] = 4
    (data_copy / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedShardError, match="3 rows, the manifest says 4"):
        load_dataset("photos", split="test")
