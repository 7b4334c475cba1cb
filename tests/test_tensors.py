"""The torch adapter: ranges, sizes, padding, crops, determinism, batching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_mini.data import TensorImageDataset, load_dataset, make_dataloader
from ldm_mini.data.tensors import border_fill, fit_image, pil_to_tensor


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist", split="test")


def test_pil_to_tensor_maps_0_255_to_minus_one_one():
    image = Image.fromarray(np.array([[0, 255], [51, 204]], np.uint8), mode="L")
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, 2, 2) and tensor.dtype == torch.float32
    expected = torch.tensor([[[-1.0, 1.0], [51 / 127.5 - 1, 204 / 127.5 - 1]]])
    assert torch.allclose(tensor, expected)
    rgb = pil_to_tensor(Image.new("RGB", (3, 2), (255, 0, 0)))
    assert rgb.shape == (3, 2, 3) and rgb[0].eq(1).all() and rgb[1:].eq(-1).all()


def test_fashion_mnist_is_padded_28_to_32(fashion):
    item = TensorImageDataset(fashion, image_size=32)[3]
    image = item["image"]
    assert image.shape == (1, 32, 32) and image.min() >= -1 and image.max() <= 1
    original = pil_to_tensor(fashion[3]["image"])
    assert torch.equal(image[:, 2:30, 2:30], original), "the image sits unchanged in the centre"
    assert image[:, :2].eq(-1).all() and image[:, :, 30:].eq(-1).all(), "padding is black"
    assert item["label"] == fashion[3]["label"] and item["caption"] == fashion[3]["caption"]


def test_border_fill_follows_the_background():
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    white.paste((10, 20, 30), (2, 2, 6, 6))
    assert border_fill(white) == (255, 255, 255)
    assert border_fill(Image.new("L", (5, 5), 7)) == 7


def test_emoji_resized_to_32_in_rgb_and_grey():
    emoji = load_dataset("emoji", split="test")
    rgb = TensorImageDataset(emoji, image_size=32)
    grey = TensorImageDataset(emoji, image_size=32, channels=1)
    assert rgb.channels == 3 and rgb[0]["image"].shape == (3, 32, 32)
    assert grey[0]["image"].shape == (1, 32, 32)
    assert "label" not in rgb[0] and isinstance(rgb[0]["caption"], str)


def test_random_crops_and_flips_are_seeded():
    photos = load_dataset("photos", split="test")
    first = TensorImageDataset(photos, 64, resize="crop", random_crop=True, hflip=True, seed=5)
    again = TensorImageDataset(photos, 64, resize="crop", random_crop=True, hflip=True, seed=5)
    other = TensorImageDataset(photos, 64, resize="crop", random_crop=True, hflip=True, seed=6)
    assert torch.equal(first[1]["image"], again[1]["image"])
    assert not torch.equal(first[1]["image"], other[1]["image"])
    before = first[1]["image"]
    first.set_epoch(1)
    assert not torch.equal(before, first[1]["image"]), "a new epoch gives new crops"
    centre = TensorImageDataset(photos, 64, resize="crop")
    assert torch.equal(centre[0]["image"], centre[0]["image"])


def test_fit_image_modes_and_errors():
    rng = np.random.default_rng(0)
    wide = Image.new("RGB", (80, 40), (0, 0, 0))
    assert fit_image(wide, 32, "resize", rng).size == (32, 32)
    assert fit_image(wide, 32, "crop", rng).size == (32, 32)
    assert fit_image(wide, 40, "auto", rng).size == (40, 40)
    assert fit_image(Image.new("L", (28, 28)), 32, "auto", rng).size == (32, 32)
    with pytest.raises(ValueError, match="cannot pad a 80x40"):
        fit_image(wide, 32, "pad", rng)
    with pytest.raises(ValueError, match="cannot crop 64x64"):
        fit_image(wide, 64, "crop", rng)
    with pytest.raises(ValueError, match="unknown resize mode"):
        TensorImageDataset(load_dataset("photos", split="test"), 32, resize="stretch")


def test_dataloader_batches_and_shuffles_deterministically(fashion):
    subset = fashion.select(range(64))
    tensors = TensorImageDataset(subset, image_size=32)
    batches = [next(iter(make_dataloader(tensors, batch_size=16, seed=0))) for _ in range(2)]
    other = next(iter(make_dataloader(tensors, batch_size=16, seed=1)))
    assert batches[0]["image"].shape == (16, 1, 32, 32)
    assert batches[0]["label"].dtype == torch.int64 and len(batches[0]["caption"]) == 16
    assert torch.equal(batches[0]["index"], batches[1]["index"])
    assert not torch.equal(batches[0]["index"], other["index"])


def test_crops_per_image_gives_many_native_crops_of_few_photos():
    from ldm_mini.data.config import DataConfig, build_dataset

    data = DataConfig(dataset="photos", image_size=64, crops_per_image=5, hflip=False)
    crops = build_dataset(data, seed=1)
    photos = crops.dataset
    assert len(crops) == 5 * len(photos) == 165
    first, again = crops[2], crops[2 + len(photos)]  # two crops of photo 2
    assert first["image"].shape == (3, 64, 64)
    assert not torch.equal(first["image"], again["image"]), "each repeat has its own crop"
    # a crop is a window of its photo at native resolution (not a resized whole photo)
    source = pil_to_tensor(photos[2]["image"].convert("RGB"))
    corners = (source[:, :-63, :-63] == first["image"][:, :1, :1]).all(0).nonzero().tolist()
    assert any(
        torch.equal(source[:, top : top + 64, left : left + 64], first["image"])
        for top, left in corners
    )
    with pytest.raises(ValueError, match="crops_per_image"):
        DataConfig(dataset="photos", crops_per_image=0)


def test_colour_jitter_permutes_channels_scales_saturation_and_is_seeded():
    from ldm_mini.data.tensors import SATURATION_RANGE, colour_jitter

    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2
    outputs = [colour_jitter(image, np.random.default_rng(seed)) for seed in range(40)]
    assert torch.equal(outputs[0], colour_jitter(image, np.random.default_rng(0)))
    mean = image.mean(0, keepdim=True)
    for out in outputs:
        assert out.shape == image.shape and out.min() >= -1 and out.max() <= 1
        # the grey value of each pixel is kept (before clamping, which this range avoids)
        assert torch.allclose(out.mean(0, keepdim=True), mean, atol=1e-6)
        # out = m + s (x[order] - m) for one channel order and one s in the stated range
        fits = []
        for order in itertools.permutations(range(3)):
            centred = image[list(order)] - mean
            s = float((out - mean).flatten() @ centred.flatten() / centred.pow(2).sum())
            if torch.allclose(mean + s * centred, out, atol=1e-5):
                fits.append(s)
        assert len(fits) == 1 and SATURATION_RANGE[0] <= fits[0] <= SATURATION_RANGE[1]
    orders = {tuple(int(i) for i in out.mean((1, 2)).argsort()) for out in outputs}
    assert len(orders) == 6, "every channel order should turn up in 40 draws"
    with pytest.raises(ValueError, match="RGB"):
        colour_jitter(image[:1], np.random.default_rng(0))


def test_datasets_apply_colour_jitter_only_when_asked_and_refuse_it_for_grey():
    from ldm_mini.data import load_dataset
    from ldm_mini.data.tensors import TensorImageDataset
    from ldm_mini.superres.data import SRCrops

    photos = load_dataset("photos", split="train")
    plain = TensorImageDataset(photos, 32, resize="crop", random_crop=True, repeat=2)
    jittered = TensorImageDataset(
        photos, 32, resize="crop", random_crop=True, repeat=2, jitter_colours=True
    )
    a, b = plain[3]["image"], jittered[3]["image"]
    assert not torch.equal(a, b)
    assert torch.allclose(a.mean(0), b.mean(0), atol=0.02), "the same crop, other colours"
    crops = SRCrops(photos, 32, length=4, jitter_colours=True)
    plain_crops = SRCrops(photos, 32, length=4)
    item, plain_item = crops[1], plain_crops[1]
    assert torch.allclose(item["image"].mean(0), plain_item["image"].mean(0), atol=0.02)
    # the input is the (bicubic, seed-free) degradation of the jittered target
    assert torch.allclose(item["low"], crops.degradation(item["image"][None], seed=0)[0])
    assert not torch.allclose(item["low"], plain_item["low"], atol=0.05)
    with pytest.raises(ValueError, match="RGB"):
        TensorImageDataset(photos, 32, channels=1, jitter_colours=True)
