"""Conditioning by concatenation (LDM-SR): the U-Net sees [z_t ; y], in training and sampling."""

from __future__ import annotations

import pytest
import torch

from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion
from ldm_mini.superres import Bicubic, concat_condition, unet_input
from ldm_mini.unet import UNet, unet_preset

pytestmark = pytest.mark.usefixtures("one_thread")


def sr_model(seed: int = 0) -> LatentDiffusion:
    """A tiny pixel-space (f = 1) LDM whose U-Net concatenates a 3-channel image to z_t."""
    torch.manual_seed(seed)
    unet = UNet(unet_preset("tiny", 3, concat_channels=3))
    for p in unet.parameters():  # a fresh U-Net outputs zeros: give it random weights
        torch.nn.init.normal_(p, std=0.05)
    return LatentDiffusion(IdentityFirstStage(3), unet, NoiseSchedule.from_name("linear", 100))


def test_concat_condition_resizes_only_when_needed():
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    assert concat_condition(low, (8, 8)) is low
    resized = concat_condition(low, (16, 16))
    assert resized.shape == (2, 3, 16, 16) and resized.abs().max() <= 1
    # resizing back down is close to the original (bicubic is smooth)
    assert (Bicubic(2)(resized) - low).abs().mean() < 0.25
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        concat_condition(torch.zeros(3, 8, 8), (8, 8))


def test_the_unet_sees_z_t_and_the_low_resolution_image():
    model = sr_model()
    z_t = torch.randn(2, 3, 16, 16)
    low = Bicubic(2)(torch.rand(2, 3, 32, 32) * 2 - 1)  # 16x16: the latent's size
    seen = []
    hook = model.unet.conv_in.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        model.unet(z_t, torch.tensor([5, 50]), concat=concat_condition(low, (16, 16)))
    finally:
        hook.remove()
    expected = unet_input(z_t, low)
    assert expected.shape == (2, 3 + 3, 16, 16)  # the channels the U-Net expects
    assert model.unet.conv_in.in_channels == expected.shape[1]
    assert torch.equal(seen[0], expected)


def test_training_and_sampling_use_the_concatenated_image():
    model = sr_model()
    z0 = torch.rand(2, 3, 16, 16) * 2 - 1
    low = Bicubic(2)(torch.rand(2, 3, 32, 32) * 2 - 1)
    t, noise = torch.tensor([10, 90]), torch.randn(2, 3, 16, 16)
    loss = model.training_loss(z0, t=t, noise=noise, concat=low)
    other = model.training_loss(z0, t=t, noise=noise, concat=-low)
    assert loss.ndim == 0 and not torch.equal(loss, other)
    loss.backward()
    assert model.unet.conv_in.weight.grad[:, 3:].abs().sum() > 0  # the image channels learn
    with pytest.raises(ValueError, match="concatenates 3 channels"):
        model.training_loss(z0, t=t, noise=noise)
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        model.training_loss(z0, t=t, noise=noise, concat=low[:, :1])
    start = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, _ = model.sample(2, (16, 16), steps=3, concat=low, noise=start)
    b, _ = model.sample(2, (16, 16), steps=3, concat=low, noise=start)
    c, _ = model.sample(2, (16, 16), steps=3, concat=-low, noise=start)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="guidance 1"):
        model.sample(2, (16, 16), steps=3, concat=low, guidance=2.0)
    plain = LatentDiffusion(IdentityFirstStage(3), UNet(unet_preset("tiny", 3)),
                            NoiseSchedule.from_name("linear", 100))  # fmt: skip
    with pytest.raises(ValueError, match="takes no concatenated input"):
        plain.training_loss(z0, t=t, noise=noise, concat=low)


def test_training_crops_are_seeded_and_match_their_source():
    from ldm_mini.data import load_dataset
    from ldm_mini.data.tensors import pil_to_tensor
    from ldm_mini.superres import Blind, SRCrops

    photos = load_dataset("photos", split="train")
    crops = SRCrops(photos, crop_size=64, length=20, hflip=False, seed=3)
    item = crops[9]
    assert item["image"].shape == (3, 64, 64) and item["low"].shape == (3, 16, 16)
    assert torch.equal(item["low"], Bicubic(4)(item["image"][None])[0])
    # the crop is a window of image 9 % len(photos) at native resolution
    source = pil_to_tensor(photos[9 % len(photos)]["image"].convert("RGB"))
    corners = (source[:, :-63, :-63] == item["image"][:, :1, :1]).all(0).nonzero().tolist()
    found = [
        (top, left)
        for top, left in corners
        if torch.equal(source[:, top : top + 64, left : left + 64], item["image"])
    ]
    assert found, "the crop must be a window of its source photo"
    assert torch.equal(
        SRCrops(photos, 64, length=20, hflip=False, seed=3)[9]["image"], item["image"]
    )
    crops.set_epoch(1)
    assert not torch.equal(crops[9]["image"], item["image"])
    blind = SRCrops(photos, 64, degradation=Blind(4), length=4, seed=0)
    assert blind[0]["low"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="multiple of the degradation's factor 4"):
        SRCrops(photos, crop_size=30)
    with pytest.raises(ValueError, match="smaller than the 4096x4096 crop"):
        SRCrops(photos, crop_size=4096)


class _Photos:
    """A stand-in for a datasets.Dataset of photos: an 'image' column of PIL images."""

    column_names = ["image"]

    def __init__(self, *images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}


def test_rescaled_crops_show_the_photo_shrunk_by_a_factor_in_range():
    import numpy as np
    from PIL import Image

    from ldm_mini.stages.sr import load_sr_preset, parse_config
    from ldm_mini.superres import SRCrops

    # a horizontal ramp: a crop's left-to-right rise tells how many source pixels it spans
    ramp = np.tile(np.linspace(0, 255, 512), (512, 1)).round().astype(np.uint8)
    photo = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    crops = SRCrops(_Photos(photo), 64, length=60, hflip=False, seed=0, rescale=(0.5, 1.0))
    spans = []
    for i in range(len(crops)):
        row = (crops[i]["image"][0, 32] + 1) * 127.5 * 511 / 255  # source pixel positions
        spans.append(float(row[-3] - row[2]) * 64 / 58)  # inner columns: no edge effects
    assert min(spans) > 60 and max(spans) < 132, (min(spans), max(spans))
    assert min(spans) < 80 and max(spans) > 110, "factors from the whole range are drawn"
    again = SRCrops(_Photos(photo), 64, length=60, hflip=False, seed=0, rescale=(0.5, 1.0))
    assert torch.equal(again[7]["image"], crops[7]["image"]), "seeded"
    # the shrinking is antialiased: one-pixel stripes halved in size become grey, not aliased
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::2] = 255
    halved = SRCrops(_Photos(Image.fromarray(stripes)), 64, length=4, hflip=False,
                     rescale=(0.5, 0.5))  # fmt: skip
    native = SRCrops(_Photos(Image.fromarray(stripes)), 64, length=4, hflip=False)
    assert native[0]["image"].std() > 0.9
    assert halved[0]["image"].std() < 0.1 and halved[0]["image"].mean().abs() < 0.1
    # a photo too small for the smallest factor: the region is clamped to the photo
    small = SRCrops(_Photos(photo.resize((80, 80))), 64, length=3, rescale=(0.1, 0.2))
    assert small[2]["image"].shape == (3, 64, 64)
    for bad in ((0, 1), (0.5, 1.2), (0.8, 0.5), "x", (0.5,)):
        with pytest.raises(ValueError, match="rescale must"):
            SRCrops(_Photos(photo), 64, rescale=bad)
    config = load_sr_preset("tiny")
    config["data"]["rescale"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="data.rescale must"):
        parse_config(config)


def test_rotate90_turns_crops_by_quarter_turns_and_keeps_them_seeded():
    import numpy as np
    from PIL import Image

    from ldm_mini.stages.sr import load_sr_preset, parse_config
    from ldm_mini.superres import SRCrops

    # a photo with a distinct value in every pixel: each crop is one of the 4 turns of its
    # unturned version, and the degraded input is the degradation of the turned target
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    plain = SRCrops(_Photos(photo), 32, length=40, hflip=False, seed=3)
    turned = SRCrops(_Photos(photo), 32, length=40, hflip=False, seed=3, rotate90=True)
    seen = set()
    for i in range(len(plain)):
        original, item = plain[i]["image"], turned[i]
        matches = [k for k in range(4) if torch.equal(torch.rot90(original, k, (-2, -1)),
                                                      item["image"])]  # fmt: skip
        assert len(matches) == 1, f"crop {i} is not a quarter turn of the same crop"
        seen.add(matches[0])
        assert torch.allclose(item["low"], Bicubic(4)(item["image"][None])[0], atol=1e-6)
    assert seen == {0, 1, 2, 3}, f"every turn is drawn, got {sorted(seen)}"
    again = SRCrops(_Photos(photo), 32, length=40, hflip=False, seed=3, rotate90=True)
    assert torch.equal(again[11]["image"], turned[11]["image"]), "seeded"
    with pytest.raises(ValueError, match="rotate90 must be true or false"):
        SRCrops(_Photos(photo), 32, rotate90="yes")
    config = load_sr_preset("tiny")
    config["data"]["rotate90"] = True
    assert parse_config(config)["data"].rotate90 is True
