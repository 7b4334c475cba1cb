"""tools/ship.py: a trained run becomes a shippable checkpoint with measured numbers and a card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ship
import torch
from safetensors.torch import load_file

from ldm_mini.evaluation import evaluate_autoencoder, evaluate_ldm
from ldm_mini.pipelines import load

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"


def _ship(run: Path, destination: Path, *extra: str) -> int:
    command = ["--title", "A tiny model", "--command", "ldm-mini train-x --preset tiny"]
    return ship.main([str(run), str(destination), *command, "--n", "20", *extra])


def test_ship_an_ldm_run(tmp_path: Path, one_thread):
    destination = tmp_path / "shipped"
    assert _ship(FIXTURES / "ldm_tiny", destination, "--guidance", "1", "3") == 0
    config = json.loads((destination / "config.json").read_text())
    assert config["weights_dtype"] == "float16" and config["shipped_weights"] == "ema"
    assert (
        "trainer_state.pt" not in config["files"] and not (destination / "ema.safetensors").exists()
    )
    weights = load_file(str(destination / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    # the numbers in the config are those of the shipped weights, measured again
    again = evaluate_ldm(destination, 20)
    assert config["metrics"]["fd"] == pytest.approx(again["fd"], rel=1e-6)
    assert config["metrics"]["class_accuracy"] == pytest.approx(again["class_accuracy"])
    assert set(config["metrics_by_guidance"]) == {"1.0", "3.0"}
    card = (destination / "README.md").read_text()
    assert card.startswith("# A tiny model")
    assert f"| fd | {again['fd']:,.2f} |" in card
    assert "ldm-mini train-x --preset tiny" in card and "### guidance w = 3.0" in card
    assert (destination / "samples.png").is_file()
    model, _ = load(destination)  # loads like any checkpoint
    assert model.num_classes == 10


def test_ship_an_autoencoder_run_and_refuse_to_overwrite(tmp_path: Path, one_thread, capsys):
    destination = tmp_path / "shipped_ae"
    assert _ship(FIXTURES / "autoencoder_tiny", destination) == 0
    config = json.loads((destination / "config.json").read_text())
    again = evaluate_autoencoder(destination, limit=20)
    assert config["metrics"]["psnr"] == pytest.approx(again["psnr"], rel=1e-6)
    assert f"| psnr | {again['psnr']:,.2f} |" in (destination / "README.md").read_text()
    before = (destination / "config.json").read_text()
    assert _ship(FIXTURES / "autoencoder_tiny", destination) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (destination / "config.json").read_text() == before  # nothing lost


def test_ship_refuses_a_damaged_run(tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "ldm_tiny", run)
    (run / "checkpoint" / "model.safetensors").write_bytes(b"not weights")
    assert _ship(run, tmp_path / "out") == 2
    assert "corrupted or truncated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # --force replaces a destination only once the run has exported and measured
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "README.md").write_text("the shipped card")
    assert _ship(run, kept, "--force") == 2
    assert (kept / "README.md").read_text() == "the shipped card"
