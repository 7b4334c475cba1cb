"""The class score of samples (ldm_mini.classifier) and the shipped Fashion-MNIST classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm_mini.checkpoints import CheckpointError, read_checkpoint_config
from ldm_mini.classifier import (
    ClassifierConfig,
    ImageClassifier,
    class_accuracy,
    load_classifier,
    predict,
    save_classifier,
)
from ldm_mini.data.config import DataConfig, build_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    data = build_dataset(
        DataConfig(dataset="fashion_mnist", split="test", image_size=32, limit=1000)
    )
    items = [data[i] for i in range(len(data))]
    return torch.stack([i["image"] for i in items]), torch.tensor([i["label"] for i in items])


def test_real_test_images_score_near_the_classifiers_test_accuracy(test_images):
    classifier = load_classifier()
    measured = read_checkpoint_config("shipped:fashion_mnist_classifier")["measured"]
    assert measured["test_accuracy"] >= 0.90 and measured["test_images"] == 10_000
    images, labels = test_images
    score = class_accuracy(classifier, images, labels)
    assert score["n"] == 1000
    assert abs(score["accuracy"] - measured["test_accuracy"]) < 0.03
    assert all(value is not None and value > 0.5 for value in score["per_class"].values())


def test_shuffled_labels_score_near_chance(test_images):
    classifier = load_classifier()
    images, labels = test_images
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert 0.05 < class_accuracy(classifier, images, shuffled)["accuracy"] < 0.16


def test_rgb_and_other_sizes_are_read_as_grey_32(test_images):
    classifier = load_classifier()
    images, _ = test_images
    grey = predict(classifier, images[:64])
    rgb = predict(classifier, images[:64].expand(-1, 3, -1, -1))
    assert torch.equal(grey, rgb)
    assert predict(classifier, torch.zeros(2, 1, 28, 28)).shape == (2,)


def test_bad_inputs_are_clear_errors():
    classifier = ImageClassifier(ClassifierConfig(widths=(4, 8)))
    images = torch.zeros(4, 1, 32, 32)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        class_accuracy(classifier, images, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must be in"):
        class_accuracy(classifier, images, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="NaN"):
        class_accuracy(classifier, images * float("nan"), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="B, C, H, W"):
        predict(classifier, torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="reads 1-channel images, got 2"):
        predict(classifier, torch.zeros(1, 2, 32, 32))
    # a class that was not asked for is None, not 0
    score = class_accuracy(classifier, images, torch.tensor([0, 0, 1, 1]))
    assert score["per_class"]["trouser"] is not None and score["per_class"]["bag"] is None


def test_round_trip_and_damaged_checkpoints(tmp_path: Path):
    torch.manual_seed(0)
    classifier = ImageClassifier(ClassifierConfig(widths=(4, 8))).eval()
    path = save_classifier(classifier, tmp_path / "clf")
    loaded = load_classifier(path)
    images = torch.rand(8, 1, 32, 32) * 2 - 1
    # stored in float16: the logits agree to half precision
    torch.testing.assert_close(loaded(images), classifier(images), atol=2e-2, rtol=2e-2)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_classifier(path)
    with pytest.raises(CheckpointError, match="no shipped checkpoint"):
        load_classifier("shipped:no_such_classifier")
