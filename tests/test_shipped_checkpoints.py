"""The checkpoints in data/checkpoints: they load, their cards tell the truth, and they work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ldm_mini.data.bundled import data_dir
from ldm_mini.evaluation import evaluate_autoencoder
from ldm_mini.pipelines import load_autoencoder

CHECKPOINTS = data_dir() / "checkpoints"
SHIPPED = sorted(path for path in CHECKPOINTS.iterdir() if (path / "config.json").is_file())
AUTOENCODERS = [
    p for p in SHIPPED if json.loads((p / "config.json").read_text())["stage"] == "autoencoder"
]
LDMS = [p for p in SHIPPED if json.loads((p / "config.json").read_text())["stage"] == "ldm"]
SRS = [p for p in SHIPPED if json.loads((p / "config.json").read_text())["stage"] == "sr"]
CLASSIFIERS = [
    p for p in SHIPPED if json.loads((p / "config.json").read_text())["stage"] == "classifier"
]
INPAINTS = [p for p in SHIPPED if json.loads((p / "config.json").read_text())["stage"] == "inpaint"]


def test_every_shipped_checkpoint_is_listed_in_the_index():
    index = (CHECKPOINTS / "README.md").read_text()
    assert SHIPPED, "no shipped checkpoints found"
    for path in SHIPPED:
        assert f"`{path.name}/`" in index, f"{path.name} is missing from data/checkpoints/README.md"


@pytest.mark.parametrize("path", AUTOENCODERS, ids=[path.name for path in AUTOENCODERS])
def test_shipped_autoencoder_matches_its_card(path: Path, one_thread):
    config = json.loads((path / "config.json").read_text())
    assert config["stage"] == "autoencoder"
    assert not (path / "trainer_state.pt").exists(), "shipped checkpoints carry no trainer state"
    card = (path / "README.md").read_text()
    measured = config["metrics"]
    # the card prints the numbers stored in config.json
    assert f"| PSNR | {measured['psnr']:.2f} dB |" in card
    assert f"| SSIM | {measured['ssim']:.4f} |" in card
    assert re.search(r"`ldm-mini train-autoencoder [^`]+`", card), "the card gives the command"
    assert measured["n"] == 10_000 or measured["dataset"] != "fashion_mnist"

    model, loaded = load_autoencoder(path)
    assert loaded["model"] == config["model"]
    torch.manual_seed(0)
    # the weights are the ones that were measured: PSNR on the first 128 test images is close
    # to the card's full-split value (a different or broken model would be far off)
    subset = evaluate_autoencoder(path, limit=128, with_fd=False)
    assert subset["latent_shape"] == measured["latent_shape"]
    assert abs(subset["psnr"] - measured["psnr"]) < 1.5, (subset["psnr"], measured["psnr"])
    assert abs(subset["ssim"] - measured["ssim"]) < 0.03


def test_every_shipped_checkpoint_is_an_autoencoder_an_ldm_super_resolution_or_classifier():
    stages = set(AUTOENCODERS) | set(LDMS) | set(SRS) | set(CLASSIFIERS) | set(INPAINTS)
    assert set(SHIPPED) == stages and LDMS and INPAINTS


@pytest.mark.parametrize("path", INPAINTS, ids=[path.name for path in INPAINTS])
def test_shipped_inpainting_matches_its_card_and_fills(path: Path, one_thread):
    from ldm_mini.data import TensorImageDataset, load_dataset
    from ldm_mini.inpainting import heldout_masks
    from ldm_mini.pipelines import inpaint, load_inpaint

    config = json.loads((path / "config.json").read_text())
    card = (path / "README.md").read_text()
    measured = config["metrics"]
    for method in ("inpaint", "repaint", "mean_fill", "harmonic_fill"):
        assert f"| {method} / fd | {measured[method]['fd']:,.2f} |" in card, method
    # the trained model is ahead of its training-free rival and of the fills on the card
    ours = measured["inpaint"]
    for rival in ("repaint", "mean_fill", "harmonic_fill"):
        assert ours["fd"] < measured[rival]["fd"]
        assert ours["perceptual"] < measured[rival]["perceptual"]
    assert re.search(r"`[^`]*ldm-mini train-inpaint [^`]+`", card), "the card gives the command"
    assert not (path / "trainer_state.pt").exists()
    ldm, loaded = load_inpaint(path)
    assert loaded["shipped_weights"] == "ema"
    data = loaded["data"]
    test = TensorImageDataset(load_dataset(data["dataset"], split="test",
                                           **(data["options"] or {})), image_size=32)  # fmt: skip
    images = torch.stack([test[i]["image"] for i in range(4)])
    masks, _ = heldout_masks(4, 32)
    filled = inpaint(ldm, images, masks, steps=4, seed=0)
    assert torch.equal(filled, inpaint(ldm, images, masks, steps=4, seed=0))
    known = masks.expand_as(images) == 0
    assert torch.equal(filled[known], images[known]) and torch.isfinite(filled).all()


@pytest.mark.parametrize("path", CLASSIFIERS, ids=[path.name for path in CLASSIFIERS])
def test_shipped_classifier_card_prints_its_measured_accuracy(path: Path):
    config = json.loads((path / "config.json").read_text())
    assert not (path / "trainer_state.pt").exists(), "shipped checkpoints carry no trainer state"
    card = (path / "README.md").read_text()
    measured = config["measured"]
    assert f"| {measured['test_images']:,} | **{measured['test_accuracy']:.4f}** |" in card
    assert measured["command"] in card


@pytest.mark.parametrize("path", SRS, ids=[path.name for path in SRS])
def test_shipped_super_resolution_matches_its_card_and_upscales(path: Path, one_thread):
    from ldm_mini import metrics
    from ldm_mini.evaluation import heldout_crops
    from ldm_mini.pipelines import load_sr, super_resolve

    config = json.loads((path / "config.json").read_text())
    card = (path / "README.md").read_text()
    measured = config["metrics"]
    for method in ("ldm_sr", "regression", "bicubic"):
        if method in measured:
            m = measured[method]
            numbers = f"| {m['psnr']:.2f} | {m['ssim']:.3f} | {m['perceptual']:.3f} |"
            numbers += f" {m['fd']:.1f} |"
            assert numbers in card, f"the card shows the measured {method} row"
    assert re.search(r"`ldm-mini train-sr [^`]+`", card), "the card gives the command"
    assert not (path / "trainer_state.pt").exists()
    ldm, loaded = load_sr(path)
    assert loaded["shipped_weights"] == "ema" and loaded["model"]["concat_channels"] == 3
    # the weights are the ones that were measured: PSNR on 16 of the held-out crops is close to
    # the card's (a different or broken model would be far off)
    real, low = heldout_crops(loaded, 16)
    kind = loaded["objective"]["kind"]
    torch.manual_seed(0)
    upscaled = super_resolve(ldm, low, kind, steps=25, seed=0)
    again = super_resolve(ldm, low, kind, steps=25, seed=0)
    assert upscaled.shape == real.shape and torch.equal(upscaled, again)
    expected = measured["ldm_sr" if kind == "diffusion" else "regression"]["psnr"]
    psnr = float(metrics.psnr(real, upscaled).mean())
    assert abs(psnr - expected) < 2.0, (psnr, expected)


@pytest.mark.parametrize("path", LDMS, ids=[path.name for path in LDMS])
def test_shipped_ldm_matches_its_card_and_samples(path: Path, one_thread):
    from ldm_mini.pipelines import generate, load_ldm

    config = json.loads((path / "config.json").read_text())
    card = (path / "README.md").read_text()
    measured = config["metrics"]
    if "fd_reconstructions_of_train" in measured:  # the cards written by hand
        ratio = measured["fd"] / measured["fd_reconstructions_of_train"]
        fd = measured["fd"]
        row = f"| **samples of this LDM, guidance w = 1** | **{fd:.1f}** | **{ratio:.2f}x** |"
        assert row in card, "the card shows the measured FD and its ratio to the reconstructions"
        assert f"| {measured['fd_train_vs_test']:.1f} |" in card, "and the floor"
    else:  # the cards tools/ship.py writes: every measured number in its table
        assert f"| fd | {measured['fd']:,.2f} |" in card, "the card shows the measured FD"
    assert re.search(r"`[^`]*ldm-mini train-ldm [^`]+`", card), "the card gives the command"
    assert not (path / "trainer_state.pt").exists()
    # the first stage is referenced by sha256 and loads; the weights are the EMA
    ldm, loaded = load_ldm(path)
    assert loaded["shipped_weights"] == "ema"
    channels = loaded["first_stage"]["autoencoder"]["model"]["in_channels"]
    if config["condition"]["kind"] == "text":
        if config["data"]["dataset"] == "shapes":
            # shapes models: the card shows the conditioning accuracy stored in config.json
            conditioning = measured["conditioning"]
            for w, result in conditioning["by_guidance"].items():
                assert f"| {float(w):g} | {result['all']:.3f} |" in card, f"accuracy at w = {w}"
        # every text model: the card shows FD with guidance w = 3 too
        guided = config["metrics_by_guidance"]["3"]["fd"]
        assert f"| samples of this LDM, guidance w = 3 | {guided:.1f} |" in card, "FD at w = 3"
        assert ldm.condition_encoder is not None and ldm.num_classes is None
        prompts = [caption for caption in loaded["prompt_examples"][:4]]
        images, _, _ = generate(ldm, 4, 32, steps=4, seed=0, prompts=prompts)
        again, _, _ = generate(ldm, 4, 32, steps=4, seed=0, prompts=prompts)
        assert torch.equal(images, again), "the same seed and prompts give the same images"
    elif config["condition"]["kind"] in ("layout", "label_map"):
        from ldm_mini.layouts import label_map_for_layout, layouts_to_tensor, parse_layout

        # the card shows the scores on held-out layouts or maps (evaluate ldm's keys)
        keys = ("layout_all_right", "layout_objects_right") if config["condition"]["kind"] == \
            "layout" else ("label_map_miou", "label_map_object_miou")  # fmt: skip
        for key in keys:
            assert f"| {key} | {measured[key]:.4g} |" in card, key
        layout = parse_layout("red circle 0.1,0.1,0.45,0.45; blue square 0.55,0.5,0.95,0.9")
        if config["condition"]["kind"] == "layout":
            condition = {"layouts": layouts_to_tensor([layout] * 4, 2), "guidance": 2.0}
        else:
            condition = {"label_maps": label_map_for_layout(layout, 32)[None].repeat(4, 1, 1)}
        images, _, _ = generate(ldm, 4, 32, steps=4, seed=0, **condition)
        again, _, _ = generate(ldm, 4, 32, steps=4, seed=0, **condition)
        assert torch.equal(images, again)
    elif config["condition"]["kind"] == "none":
        assert ldm.num_classes is None and ldm.condition_encoder is None
        images, labels, _ = generate(ldm, 4, 32, steps=4, seed=0)
        again, _, _ = generate(ldm, 4, 32, steps=4, seed=0)
        assert labels is None and torch.equal(images, again)
    else:
        # class models: the card shows the class accuracy of the samples at w = 1
        accuracy = measured["class_accuracy"]
        assert f"| **class accuracy of the samples, w = 1** | **{accuracy:.3f}** |" in card
        assert ldm.num_classes == 10
        images, labels, _ = generate(ldm, 4, 32, steps=4, seed=0)
        assert labels.tolist() == [0, 1, 2, 3]
    assert images.shape == (4, channels, 32, 32) and torch.isfinite(images).all()


def test_shipped_names_load_everywhere_a_checkpoint_folder_does(tmp_path, capsys, one_thread):
    from ldm_mini.checkpoints import CheckpointError, load_checkpoint
    from ldm_mini.cli import main

    assert load_checkpoint("shipped:photos_kl_f4").config["stage"] == "autoencoder"
    with pytest.raises(CheckpointError, match=r"no shipped checkpoint 'nope'; shipped: \[.*photos"):
        load_checkpoint("shipped:nope")
    # the README's command: sample from a shipped LDM by name
    out = tmp_path / "emoji.png"
    argv = ["sample", "--checkpoint", "shipped:emoji_ldm_text", "--prompt", "smiling face"]
    assert main([*argv, "--n", "1", "--sample-steps", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--checkpoint", "shipped:nope", "--out", str(out)]) == 2
    assert "no shipped checkpoint 'nope'" in capsys.readouterr().err


def test_the_photos_autoencoder_keeps_the_latents_its_sr_models_were_trained_on(one_thread):
    from ldm_mini.autoencoder import latent_parts_sha256

    path = CHECKPOINTS / "photos_kl_f4"
    config = json.loads((path / "config.json").read_text())
    # a decoder-only fine-tune: the encoder's weights are recorded and are the ones loaded
    assert config["init"]["trainable"] == "decoder"
    model, _ = load_autoencoder(path)
    assert latent_parts_sha256(model) == config["init"]["latent_parts_sha256"]
    for sr in SRS:
        first = json.loads((sr / "config.json").read_text())["first_stage"]
        assert first["checkpoint"] == "shipped:photos_kl_f4"
        assert first["model_sha256"] == config["files"]["model.safetensors"], sr.name
