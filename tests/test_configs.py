"""Presets, overrides, the pixel-loss option, exporting shipped checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm_mini.checkpoints import (
    CheckpointError,
    export_checkpoint,
    load_checkpoint,
    save_checkpoint,
    store_in_half,
    weights_sha256s,
)
from ldm_mini.configs import PRESETS, apply_overrides, available_presets, load_preset
from ldm_mini.losses import AutoencoderLoss, AutoencoderLossConfig
from ldm_mini.stages.autoencoder import parse_config


@pytest.mark.parametrize("name", PRESETS)
def test_every_autoencoder_preset_parses(name: str):
    assert name in available_presets("autoencoder")
    parsed = parse_config(load_preset("autoencoder", name))
    assert parsed["train"].steps >= 1 and parsed["model"]["f"] in (1, 2, 4, 8)


def test_overrides_parse_json_and_reject_unknown_keys():
    config = load_preset("autoencoder", "tiny")
    changed = apply_overrides(
        config, ["train.steps=7", 'model.kind="vq"', "model.channel_mult=[1, 2]"]
    )
    assert changed["train"]["steps"] == 7 and changed["model"]["kind"] == "vq"
    assert changed["model"]["channel_mult"] == [1, 2] and config["train"]["steps"] == 6
    assert apply_overrides(config, ["data.dataset=emoji"])["data"]["dataset"] == "emoji"
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        apply_overrides(config, ["train.stepz=1"])
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        apply_overrides(config, ["trian.steps=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(config, ["steps=1"])
    with pytest.raises(ValueError, match="unknown preset 'laptop'"):
        load_preset("autoencoder", "laptop")


def test_pixel_loss_l2_is_the_mean_squared_error():
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    config = AutoencoderLossConfig(pixel_loss="l2", perceptual_weight=0.0, disc_start=10)
    loss, logs = AutoencoderLoss(config, in_channels=1).generator_loss(
        x, y, torch.tensor(0.0), step=0
    )
    assert loss.item() == pytest.approx(((x - y) ** 2).mean().item(), rel=1e-6)
    assert "l2" in logs and "l1" not in logs
    with pytest.raises(ValueError, match="pixel_loss must be 'l1' or 'l2'"):
        AutoencoderLossConfig(pixel_loss="huber")


def test_export_drops_the_trainer_state_and_adds_metadata(tmp_path: Path):
    state = {"w": torch.randn(3, 3)}
    save_checkpoint(tmp_path / "run", stage="autoencoder", config={"model": {"f": 4}},
                    model_state=state, trainer_state={"step": 9}, step=9)  # fmt: skip
    export_checkpoint(tmp_path / "run", tmp_path / "ship", {"metrics": {"psnr": 30.5}})
    shipped = load_checkpoint(tmp_path / "ship", expected_stage="autoencoder")
    assert shipped.step == 9 and shipped.config["metrics"] == {"psnr": 30.5}
    assert shipped.config["model"] == {"f": 4} and torch.equal(shipped.model_state["w"], state["w"])
    assert not (tmp_path / "ship" / "trainer_state.pt").exists()
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        load_checkpoint(tmp_path / "ship", with_trainer_state=True)


def test_half_storage_halves_the_files_and_loads_float32_rounded_weights(tmp_path: Path):
    state = {"w": torch.randn(64, 64), "steps": torch.tensor([3, 4])}
    ema = {"w": torch.randn(64, 64)}
    save_checkpoint(tmp_path / "run", stage="autoencoder", config={"model": {"f": 4}},
                    model_state=state, ema_state=ema, trainer_state={"step": 9})  # fmt: skip
    with pytest.raises(CheckpointError, match="can be resumed"):
        store_in_half(tmp_path / "run")
    export_checkpoint(tmp_path / "run", tmp_path / "ship")
    before = load_checkpoint(tmp_path / "ship").config
    size = (tmp_path / "ship" / "model.safetensors").stat().st_size
    (tmp_path / "ship" / "README.md").write_text("the card")
    store_in_half(tmp_path / "ship")
    assert (tmp_path / "ship" / "README.md").read_text() == "the card"  # the card stays
    halved = load_checkpoint(tmp_path / "ship", expected_stage="autoencoder")
    assert halved.config["weights_dtype"] == "float16"
    assert (tmp_path / "ship" / "model.safetensors").stat().st_size < 0.6 * size
    assert halved.model_state["w"].dtype == torch.float32  # computed in float32
    assert torch.equal(halved.model_state["w"], state["w"].half().float())
    assert torch.equal(halved.ema_state["w"], ema["w"].half().float())
    assert torch.equal(halved.model_state["steps"], state["steps"])  # integers untouched
    assert not torch.equal(halved.model_state["w"], state["w"])  # it did round
    # runs that name the float32 file by its sha256 still find these weights
    assert before["files"]["model.safetensors"] in weights_sha256s(halved.config)
    assert halved.config["files"]["model.safetensors"] in weights_sha256s(halved.config)
    store_in_half(tmp_path / "ship")  # a second time changes nothing
    assert load_checkpoint(tmp_path / "ship").config["files"] == halved.config["files"]
