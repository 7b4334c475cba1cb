"""Inpainting: masks, the concatenated input, pasting, the fills, RePaint, the stage, the
pipeline, the evaluation and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldm_mini.cli import main
from ldm_mini.inpainting import (
    MASK_KINDS,
    blend_step,
    harmonic_fill,
    heldout_masks,
    inpainting_condition,
    latent_mask,
    masked_image,
    mean_fill,
    paste,
    random_mask,
)
from ldm_mini.inpainting.masks import check_mask_mix
from ldm_mini.stages.inpaint import training_masks


def images_and_masks(batch: int = 4, channels: int = 1, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, channels, size, size, generator=generator) * 2 - 1
    masks, _ = heldout_masks(batch, size)
    return images, masks


# -- masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_mask_kind_is_binary_and_seeded(kind: str):
    first = random_mask(32, np.random.default_rng(5), kind)
    again = random_mask(32, np.random.default_rng(5), kind)
    assert first.shape == (1, 32, 32) and torch.equal(first, again)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    coverage = float(first.mean())
    assert coverage == 1.0 if kind == "full" else 0.0 < coverage < 0.8


def test_mask_mix_and_kinds_are_checked():
    assert check_mask_mix({"thick": 1, "full": 3}) == {"thick": 0.25, "full": 0.75}
    for bad, fragment in (({"stars": 1}, "unknown mask kind"), ({"thick": -1}, ">= 0"),
                          ({"thick": 0}, "not all be 0"), ({}, "dict")):  # fmt: skip
        with pytest.raises(ValueError, match=fragment):
            check_mask_mix(bad)
    with pytest.raises(ValueError, match="unknown mask kind"):
        random_mask(32, np.random.default_rng(0), "circle")


def test_heldout_masks_are_fixed_partial_and_apart_from_training():
    masks, kinds = heldout_masks(40, 32)
    again, _ = heldout_masks(40, 32)
    assert torch.equal(masks, again) and kinds[:4] == ["thick", "thin", "box_large", "box_small"]
    coverage = masks.mean(dim=(1, 2, 3))
    assert bool((coverage >= 0.02).all()) and bool((coverage <= 0.6).all())
    train = training_masks(seed=0, step=1, total=40, size=32, weights={"thick": 1.0})
    assert not any(torch.equal(train[i], masks[j]) for i in range(40) for j in range(40))


def test_training_masks_depend_on_seed_and_step_only():
    weights = check_mask_mix({"thick": 1, "box_small": 1, "full": 1})
    a = training_masks(0, 7, 16, 32, weights)
    assert torch.equal(a, training_masks(0, 7, 16, 32, weights))
    assert not torch.equal(a, training_masks(0, 8, 16, 32, weights))
    assert not torch.equal(a, training_masks(1, 7, 16, 32, weights))


# -- the concatenated input and pasting -----------------------------------------------------


def test_the_condition_is_the_masked_latent_and_the_latent_mask():
    images, masks = images_and_masks()
    encode = lambda x: 2 * x[:, :, ::4, ::4]  # noqa: E731  a stand-in "s E(x)" with f = 4
    condition = inpainting_condition(encode, images, masks, (8, 8))
    assert condition.shape == (4, 2, 8, 8)
    assert torch.equal(condition[:, :1], encode(masked_image(images, masks)))
    assert torch.equal(condition[:, 1:], latent_mask(masks, (8, 8)))
    assert bool((masked_image(images, masks)[masks.expand_as(images) == 1] == 0).all())


def test_one_missing_pixel_marks_its_latent_position_missing():
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, 9, 14] = 1  # pixel row 9, column 14 lies in latent position (2, 3) for f = 4
    small = latent_mask(masks, (8, 8))
    assert float(small.sum()) == 1 and float(small[0, 0, 2, 3]) == 1


def test_paste_keeps_the_known_pixels_exactly():
    images, masks = images_and_masks(channels=3)
    other = torch.randn_like(images)
    pasted = paste(other, images, masks)
    known = masks.expand_as(images) == 0
    assert torch.equal(pasted[known], images[known]) and torch.equal(pasted[~known], other[~known])


@pytest.mark.parametrize(
    ("images", "masks", "fragment"),
    [(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 16, 16), "of the image's size"),
     (torch.zeros(2, 1, 32, 32), torch.full((2, 1, 32, 32), 0.5), "only 0 (known) and 1"),
     (torch.zeros(2, 1, 32, 32), torch.zeros(3, 1, 32, 32), "one mask of the image's size"),
     (torch.zeros(1, 32, 32), torch.zeros(1, 1, 32, 32), "(B, C, H, W)")],
)  # fmt: skip
def test_bad_masks_are_clear_errors(images, masks, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        mean_fill(images, masks)


# -- the non-learned fills -----------------------------------------------------------------


def test_mean_fill_takes_the_mean_of_the_known_pixels():
    images, masks = images_and_masks()
    filled = mean_fill(images, masks)
    for i in range(4):
        known = images[i][masks[i] == 0]
        assert torch.allclose(filled[i][masks[i] == 1], known.mean().expand(int(masks[i].sum())))


def test_harmonic_fill_reproduces_a_linear_ramp():
    """Linear functions are harmonic: the Laplace fill of a ramp's hole is the ramp itself."""
    ramp = torch.linspace(-1, 1, 32).expand(1, 1, 32, 32).clone()
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 8:24, 10:22] = 1
    filled = harmonic_fill(ramp, masks, iterations=2000)
    assert float((filled - ramp).abs().max()) < 1e-3
    assert float((mean_fill(ramp, masks) - ramp).abs().max()) > 0.3  # the floor's floor


# -- RePaint ---------------------------------------------------------------------------------


def test_blend_step_puts_the_known_latent_back_at_the_end():
    z_model, z_known = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    keep = (torch.rand(2, 1, 8, 8) > 0.5).float()
    out = blend_step(z_model, z_known, keep, abar=1.0, noise=torch.randn(2, 4, 8, 8))
    assert torch.equal(out, keep * z_known + (1 - keep) * z_model)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """A tiny inpainting run and a tiny unconditional LDM (the training-free rival)."""
    root = tmp_path_factory.mktemp("inpaint")
    assert main(["train-inpaint", "--preset", "tiny", "--out", str(root / "inpaint"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["train-ldm", "--preset", "tiny", "--out", str(root / "unconditional"),
                 "--set", 'condition.kind="none"', "--quiet"]) == 0  # fmt: skip
    return root


def test_repaint_and_inpaint_keep_the_known_pixels(runs):
    from ldm_mini.inpainting import repaint
    from ldm_mini.pipelines import inpaint, load_inpaint, load_ldm

    images, masks = images_and_masks()
    ldm, _ = load_ldm(runs / "unconditional")
    model, config = load_inpaint(runs / "inpaint")
    assert config["stage"] == "inpaint" and model.unet.config.concat_channels == 9
    known = masks.expand_as(images) == 0
    for out in (repaint(ldm, images, masks, steps=3, resample=2),
                inpaint(model, images, masks, steps=3)):  # fmt: skip
        assert out.shape == images.shape and torch.equal(out[known], images[known])
    unpasted = inpaint(model, images, masks, steps=3, paste_known=False)
    assert not torch.equal(unpasted[known], images[known])
    with pytest.raises(ValueError, match="resample"):
        repaint(ldm, images, masks, resample=0)
    with pytest.raises(ValueError, match="unconditional or class-conditional"):
        repaint(model, images, masks)
    with pytest.raises(ValueError, match="not divisible"):
        inpaint(model, images[..., :30, :30], masks[..., :30, :30])
    with pytest.raises(ValueError, match="1-channel"):
        inpaint(model, images.expand(-1, 3, -1, -1), masks)


def test_evaluate_inpaint_scores_every_method(runs, capsys):
    argv = ["evaluate", "inpaint", "--checkpoint", str(runs / "inpaint"), "--json", "--quiet",
            "--rival", str(runs / "unconditional"), "--n", "8", "--sample-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"inpaint", "inpaint_unpasted", "repaint", "mean_fill",
                           "harmonic_fill", "settings"}  # fmt: skip
    for method in ("inpaint", "repaint", "mean_fill", "harmonic_fill"):
        scores = result[method]
        assert scores["psnr_known"] == 100.0 and scores["fd"] > 0 and scores["seam"] > 0
    assert result["inpaint_unpasted"]["psnr_known"] < 60
    assert result["settings"]["mask_kinds"] == {"box_large": 2, "box_small": 2, "thick": 2,
                                                "thin": 2}  # fmt: skip


def test_inpaint_command_fills_a_box_or_a_mask_and_refuses_bad_ones(runs, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray((np.arange(32 * 32) % 255).astype("uint8").reshape(32, 32)).save(image)
    mask = tmp_path / "mask.png"
    pixels = np.zeros((32, 32), "uint8")
    pixels[4:12, 6:20] = 255
    Image.fromarray(pixels).save(mask)
    argv = ["inpaint", str(image), "--checkpoint", str(runs / "inpaint"), "--sample-steps", "2",
            "--quiet"]  # fmt: skip
    out = tmp_path / "out.png"
    assert main([*argv, "--mask", str(mask), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mask_coverage"] == pytest.approx(8 * 14 / 32**2)
    with Image.open(out) as filled, Image.open(image) as original:
        kept = np.asarray(filled)[pixels == 0], np.asarray(original)[pixels == 0]
        assert np.array_equal(*kept)
    assert main([*argv, "--box", "0,0,16,16", "--out", str(tmp_path / "box.png")]) == 0
    capsys.readouterr()
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32), 128, "uint8")).save(grey)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((16, 16), "uint8")).save(small)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((32, 32), "uint8")).save(empty)
    for extra, fragment in (
        (["--mask", str(grey)], "black (keep) and white (fill) only"),
        (["--mask", str(small)], "give a mask of the image's size"),
        (["--mask", str(empty)], "the mask is empty"),
        (["--box", "0,0,40,8"], "0 <= x0 < x1 <= 32"),
        (["--box", "a,b"], "four integers"),
        ([], "--mask MASK.png or --box"),
    ):
        assert main([*argv, *extra, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "x.png").exists()
