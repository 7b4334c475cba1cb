"""The stage layer: one recipe (ldm_mini.stages.base), one config style, pipelines that load
without training code, and run folders written before the redesign that still load and resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder, latent_parts_sha256
from ldm_mini.checkpoints import CheckpointError
from ldm_mini.configs import apply_overrides, check_keys, config_from_dict, load_stage_preset
from ldm_mini.ldm import IdentityFirstStage, same_latents
from ldm_mini.pipelines import load

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"
# how the fixture runs were made (ldm-mini 0.1.0 before the stage redesign), 4 steps each
FIXTURE_OVERRIDES = {
    "ldm_tiny": ("ldm", ["first_stage.checkpoint=\"identity\"", "model.base_channels=8",
                         "data.image_size=16", "data.limit=32"]),
    "sr_tiny": ("sr", ["model.base_channels=8", "data.crop_size=16"]),
    "autoencoder_tiny": ("autoencoder", ["data.limit=16"]),
}  # fmt: skip


@dataclass
class _Example:
    size: int = 3
    betas: tuple[float, float] = (0.9, 0.999)
    names: list[str] = field(default_factory=list)


def test_config_from_dict_is_strict_and_restores_tuples():
    built = config_from_dict(_Example, {"size": 4, "betas": [0.5, 0.9], "names": ["a"]}, "ex")
    assert built == _Example(4, (0.5, 0.9), ["a"])  # lists stay lists where the field is one
    with pytest.raises(ValueError, match=r"unknown ex key\(s\) \['sise'\]; valid: \['size'"):
        config_from_dict(_Example, {"sise": 4}, "ex")
    with pytest.raises(ValueError, match="the ex section must be a dict, got list"):
        check_keys(_Example, [1, 2], "ex")


def test_diffusion_presets_take_their_unet_preset():
    for stage in ("ldm", "sr"):
        config = load_stage_preset(stage, "tiny")
        assert config["model"]["base_channels"] == 16  # configs/unet/tiny.json
    assert "base_channels" not in load_stage_preset("autoencoder", "tiny").get("loss", {})


def test_same_latents_is_the_encoder_not_the_decoder():
    torch.manual_seed(0)
    config = AutoencoderConfig(
        kind="kl", f=4, latent_channels=4, base_channels=8, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention=False,
    )  # fmt: skip
    first, second = build_autoencoder(config), build_autoencoder(config)
    second.load_state_dict(first.state_dict())
    assert same_latents(first, second)
    with torch.no_grad():  # a decoder-only fine-tune: the same latents
        second.decoder.conv_out.weight.add_(1.0)
    assert same_latents(first, second)
    with torch.no_grad():  # another encoder: other latents
        second.encoder.conv_in.weight.add_(1.0)
    assert not same_latents(first, second)
    assert latent_parts_sha256(first) != latent_parts_sha256(second)
    assert same_latents(IdentityFirstStage(3), IdentityFirstStage(3))
    assert not same_latents(IdentityFirstStage(3), IdentityFirstStage(1))
    assert not same_latents(IdentityFirstStage(4), first)


def test_inference_imports_no_training_code():
    code = (
        "import sys, ldm_mini.pipelines, ldm_mini.evaluation\n"
        "print([m for m in sys.modules if m.startswith('ldm_mini.stages') "
        "or m == 'ldm_mini.train' or m == 'ldm_mini.losses'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_public_submodule_is_an_attribute():
    code = (
        "import ldm_mini, sys\n"
        "assert 'torch' not in sys.modules\n"
        "for name in ('stages', 'pipelines', 'evaluation', 'blocks', 'viz', 'f_sweep'):\n"
        "    getattr(ldm_mini, name)\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("name", sorted(FIXTURE_OVERRIDES))
def test_a_run_folder_from_before_the_redesign_loads_and_resumes(name, tmp_path, one_thread):
    from ldm_mini.stages import train_autoencoder, train_ldm, train_sr

    stage, overrides = FIXTURE_OVERRIDES[name]
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    model, config = load(run)
    assert config["stage"] == stage and config["step"] == 4
    assert not any(p.is_floating_point() and not p.isfinite().all() for p in model.parameters())
    preset = load_stage_preset(stage, "tiny")
    steps = ["train.steps=6", "train.checkpoint_every=2", "train.sample_every=100"]
    train = {"autoencoder": train_autoencoder, "ldm": train_ldm, "sr": train_sr}[stage]
    train(apply_overrides(preset, [*overrides, *steps]), run, progress=False)
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged[:4] == [1, 2, 3, 4] and logged[-1] == 6  # resumed at step 5, not restarted
    assert load(run)[1]["step"] == 6


def test_load_refuses_a_checkpoint_of_an_unknown_stage(tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(FIXTURES / "ldm_tiny" / "checkpoint", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "stage": "layout"}))
    with pytest.raises(CheckpointError, match="'layout' checkpoint; load\\(\\) reads"):
        load(folder)
