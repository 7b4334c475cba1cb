"""Training and evaluating the autoencoder stage end to end, on the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldm_mini.checkpoints import CheckpointError, save_checkpoint
from ldm_mini.cli import main
from ldm_mini.configs import apply_overrides, load_preset
from ldm_mini.evaluation import evaluate_autoencoder
from ldm_mini.pipelines import load_autoencoder
from ldm_mini.stages.autoencoder import make_stage, train_autoencoder
from ldm_mini.train import Trainer


def _tiny(**overrides) -> dict:
    return apply_overrides(
        load_preset("autoencoder", "tiny"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae")
    train_autoencoder(_tiny(), out, progress=False)
    return out


def test_training_writes_checkpoint_logs_and_samples(trained: Path):
    config = json.loads((trained / "checkpoint" / "config.json").read_text())
    assert config["stage"] == "autoencoder" and config["step"] == 6
    assert config["perceptual_backbone"] == "efficientnet-lite0"
    assert config["model"]["in_channels"] == 1 and config["model"]["f"] == 4
    rows = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "disc_loss" not in rows[1] and "disc_loss" in rows[3], "discriminator starts at step 3"
    assert sorted(p.name for p in (trained / "samples").iterdir()) == [
        "step_000003.png",
        "step_000006.png",
    ]


def test_checkpoint_round_trip_gives_bitwise_equal_outputs(trained: Path):
    stage, dataset, _ = make_stage(_tiny())
    trainer = Trainer(stage, dataset, _tiny_train(), trained, progress=False)  # resumes step 6
    model, _ = load_autoencoder(trained)
    x = torch.stack([dataset[i]["image"] for i in range(4)])
    stage.model.eval()
    assert trainer.step == 6
    assert torch.equal(
        stage.model(x, sample_posterior=False).reconstruction,
        model(x, sample_posterior=False).reconstruction,
    )


def _tiny_train():
    from ldm_mini.train import TrainConfig

    return TrainConfig.from_dict(_tiny()["train"])


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_resume_equals_uninterrupted_training(tmp_path: Path, kind: str):
    config = _tiny(**{"model.kind": kind, "train.steps": 6})
    train_autoencoder(config, tmp_path / "straight", progress=False)
    half = apply_overrides(config, ["train.steps=3"])
    train_autoencoder(half, tmp_path / "resumed", progress=False)
    train_autoencoder(config, tmp_path / "resumed", progress=False)
    straight, _ = load_autoencoder(tmp_path / "straight")
    resumed, _ = load_autoencoder(tmp_path / "resumed")
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    logs = [
        [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
        ]
        for run in ("straight", "resumed")
    ]
    assert logs[0] == logs[1]


def test_evaluate_reports_the_promised_fields(trained: Path):
    result = evaluate_autoencoder(trained, limit=32, with_fd=True)
    for key in (
        "psnr",
        "ssim",
        "perceptual",
        "perceptual_backbone",
        "fd",
        "latent_shape",
        "latent_std",
        "seconds",
    ):
        assert key in result, key
    assert result["latent_shape"] == [4, 8, 8] and result["n"] == 32
    assert result["perceptual_backbone"] == "efficientnet-lite0"
    assert result["fd_feature_extractor"] in ("inception", "efficientnet-lite0")


def test_cli_train_and_evaluate(tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["train-autoencoder", "--preset", "tiny", "--out", str(out), "--train-steps", "2"]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "autoencoder",
                "--checkpoint",
                str(out),
                "--n",
                "16",
                "--no-fd",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 16 and result["latent_shape"] == [4, 8, 8]


def test_cli_rejects_bad_settings_and_other_stages(tmp_path: Path, capsys):
    assert (
        main(
            [
                "train-autoencoder",
                "--preset",
                "tiny",
                "--out",
                str(tmp_path / "x"),
                "--set",
                "train.stepz=3",
            ]
        )
        == 2
    )
    assert "unknown key 'stepz'" in capsys.readouterr().err
    save_checkpoint(tmp_path / "ldm", stage="ldm", config={}, model_state={"w": torch.ones(1)})
    assert main(["evaluate", "autoencoder", "--checkpoint", str(tmp_path / "ldm"), "--json"]) == 2
    assert "holds a 'ldm' checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_autoencoder(tmp_path / "ldm")


def test_image_size_not_divisible_by_f_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="divisible"):
        train_autoencoder(
            _tiny(**{"data.image_size": 30, "data.resize": "resize"}), tmp_path, progress=False
        )


def test_a_nan_loss_stops_training_with_a_last_good_checkpoint(tmp_path: Path):
    from ldm_mini.train import TrainingDivergedError

    config = _tiny(**{"optim.lr": float("inf")})
    with pytest.raises(TrainingDivergedError, match=r"at step \d+") as info:
        train_autoencoder(config, tmp_path, progress=False)
    assert (tmp_path / "last-good" / "model.safetensors").is_file(), str(info.value)


def _encoder_outputs(path: Path, x: torch.Tensor):
    model, _ = load_autoencoder(path)
    with torch.no_grad():
        return model.encode(x).mode() if model.config.kind == "kl" else model.encode(x)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_decoder_only_fine_tuning_keeps_every_latent_and_changes_the_decoder(
    tmp_path: Path, kind: str
):
    start = tmp_path / "start"
    train_autoencoder(_tiny(**{"model.kind": kind, "train.steps": 3}), start, progress=False)
    tuned = tmp_path / "tuned"
    config = _tiny(**{"init.checkpoint": str(start), "init.trainable": "decoder",
                      "model.f": 2, "train.steps": 4})  # fmt: skip
    train_autoencoder(config, tuned, progress=False)
    saved = json.loads((tuned / "checkpoint" / "config.json").read_text())
    # the architecture is the starting checkpoint's (the preset's model.f=2 is not used)
    assert saved["model"]["f"] == 4 and saved["model"]["kind"] == kind
    first, second = load_autoencoder(start)[0], load_autoencoder(tuned)[0]
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(_encoder_outputs(start, x), _encoder_outputs(tuned, x))
    from ldm_mini.autoencoder import latent_parts_sha256

    assert latent_parts_sha256(first) == latent_parts_sha256(second)
    assert saved["init"]["latent_parts_sha256"] == latent_parts_sha256(second)
    assert saved["init"]["model_sha256s"] == [
        json.loads((start / "checkpoint" / "config.json").read_text())["files"]["model.safetensors"]
    ]
    decoder_changed = [
        name for name, value in second.decoder.state_dict().items()
        if not torch.equal(value, first.decoder.state_dict()[name])
    ]  # fmt: skip
    assert decoder_changed, "the decoder did not train"


def test_full_fine_tuning_changes_the_encoder_and_the_checks_reject_it(tmp_path: Path):
    from ldm_mini.autoencoder import latent_parts_sha256

    start = tmp_path / "start"
    train_autoencoder(_tiny(**{"train.steps": 3}), start, progress=False)
    tuned = tmp_path / "tuned"
    train_autoencoder(
        _tiny(**{"init.checkpoint": str(start), "train.steps": 3}), tuned, progress=False
    )
    assert latent_parts_sha256(load_autoencoder(start)[0]) != latent_parts_sha256(
        load_autoencoder(tuned)[0]
    )


def test_decoder_only_needs_a_checkpoint_and_the_cli_refuses_other_architectures(
    tmp_path: Path, capsys
):
    with pytest.raises(ValueError, match="needs init.checkpoint"):
        make_stage(_tiny(**{"init.trainable": "decoder"}))
    with pytest.raises(ValueError, match="init.trainable must be one of"):
        make_stage(_tiny(**{"init.trainable": "encoder"}))
    assert main(["train-autoencoder", "--preset", "tiny", "--out", str(tmp_path / "a"),
                 "--decoder-only"]) == 2  # fmt: skip
    assert "--decoder-only needs --init-from" in capsys.readouterr().err
    assert main(["train-autoencoder", "--preset", "tiny", "--out", str(tmp_path / "b"),
                 "--init-from", "shipped:fashion_mnist_kl_f4", "--f", "8"]) == 2  # fmt: skip
    assert "--init-from takes the architecture" in capsys.readouterr().err
