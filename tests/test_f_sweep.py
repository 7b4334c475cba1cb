"""Tests for ldm_mini.f_sweep: the f-sweep's configs, its timing rule and its resumable run."""

from __future__ import annotations

import json

import pytest

from ldm_mini.autoencoder import AutoencoderConfig, latent_shape
from ldm_mini.f_sweep import (
    LATENT_CHANNELS,
    SweepConfig,
    autoencoder_config,
    ldm_config,
    run_f_sweep,
)
from ldm_mini.stages.ldm import load_ldm_preset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    factors=(1, 2),
    autoencoder_preset="tiny",
    ldm_preset="tiny",
    data_limit=32,
    autoencoder_steps=3,
    ldm_seconds=0.5,
    ldm_batch_size=8,
    eval_samples=6,
    sample_steps=2,
)


def test_settings_reject_unknown_factors_and_indivisible_sizes():
    with pytest.raises(ValueError, match="factors must be among"):
        SweepConfig(factors=(3,))
    with pytest.raises(ValueError, match="divisible"):
        SweepConfig(factors=(8,), image_size=24)
    with pytest.raises(ValueError, match="ldm_seconds"):
        SweepConfig(ldm_seconds=0)
    with pytest.raises(ValueError, match="ldm_batch_size"):
        SweepConfig(ldm_batch_size=0)


@pytest.mark.parametrize("f", sorted(LATENT_CHANNELS))
def test_each_autoencoder_has_its_factor_and_the_presets_other_settings(f):
    sweep = SweepConfig(autoencoder_steps=1800)
    config = autoencoder_config(f, sweep)
    model = AutoencoderConfig.from_dict(config["model"])
    assert latent_shape(model, 32) == (LATENT_CHANNELS[f], 32 // f, 32 // f)
    assert config["train"]["steps"] == 1800
    # the adversarial phase keeps the cpu preset's share: 2,900 of 3,600 steps -> 1,450 of 1,800
    assert config["loss"]["disc_start"] == 1450
    assert config["loss"]["perceptual_weight"] == 0.1
    with pytest.raises(ValueError, match="no autoencoder for f = 1"):
        autoencoder_config(1, sweep)


def test_every_factor_gets_the_same_unet_recipe_and_wall_clock_budget():
    sweep = SweepConfig(ldm_seconds=90)
    preset = load_ldm_preset("cpu")
    configs = [ldm_config(source, sweep) for source in ("identity", "runs/a", "runs/b")]
    assert all(c["model"] == configs[0]["model"] for c in configs)
    assert all(c["condition"]["kind"] == "class" for c in configs)
    assert [c["first_stage"]["checkpoint"] for c in configs] == ["identity", "runs/a", "runs/b"]
    for config in configs:
        # the clock ends every run: 1.5 minutes each, the preset's recipe otherwise
        assert config["train"]["max_minutes"] == 1.5 and config["train"]["steps"] >= 10**6
        assert config["diffusion"] == preset["diffusion"] and config["optim"] == preset["optim"]
        assert config["train"]["batch_size"] == preset["train"]["batch_size"]


def test_a_tiny_sweep_measures_each_factor_and_resumes_without_training_again(tmp_path):
    sweep = SweepConfig(**TINY)
    rows = run_f_sweep(tmp_path, sweep, progress=False)
    assert [row["f"] for row in rows] == [1, 2]
    pixel, latent = rows
    assert pixel["latent_shape"] == [1, 32, 32] and pixel["ae_psnr"] is None
    assert latent["latent_shape"] == [4, 16, 16] and latent["compression"] == 1.0
    assert latent["ae_psnr"] > 0 and latent["ae_fd"] > 0
    for row in rows:
        # each run trained until its clock reached the budget, and no step longer
        seconds = [
            json.loads(line)["seconds"]
            for line in (tmp_path / f"ldm_f{row['f']}" / "log.jsonl").read_text().splitlines()
        ]
        assert row["train_seconds"] == seconds[-1] >= sweep.ldm_seconds
        assert len(seconds) == row["steps"]
        assert len(seconds) == 1 or seconds[-2] < sweep.ldm_seconds
        assert row["fd"] > 0 and row["seconds_per_sample"] > 0
        assert 0.0 <= row["class_accuracy"] <= 1.0
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert manifest["runs"]["2"]["result"] == latent  # measured once, reused by a rerun
    logs = {f: (tmp_path / f"ldm_f{f}" / "log.jsonl").read_text() for f in (1, 2)}
    again = run_f_sweep(tmp_path, sweep, progress=False)
    assert [row["steps"] for row in again] == [row["steps"] for row in rows]
    assert [row["fd"] for row in again] == [row["fd"] for row in rows]  # seeded sampling
    assert logs == {f: (tmp_path / f"ldm_f{f}" / "log.jsonl").read_text() for f in (1, 2)}
    with pytest.raises(ValueError, match="other settings"):
        run_f_sweep(tmp_path, SweepConfig(**{**TINY, "ldm_seconds": 2.0}), progress=False)
