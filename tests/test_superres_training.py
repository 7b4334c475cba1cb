"""LDM-SR and the regression baseline trained by the engine, loaded, and used to upscale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldm_mini.checkpoints import export_ema_checkpoint, load_checkpoint
from ldm_mini.configs import apply_overrides
from ldm_mini.pipelines import REFINE_T, load_sr, super_resolve
from ldm_mini.stages.sr import load_sr_preset, parse_config, train_sr
from ldm_mini.superres import Bicubic

pytestmark = pytest.mark.usefixtures("one_thread")


def sr_config(**sets) -> dict:
    return apply_overrides(
        load_sr_preset("tiny"), [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    )


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sr") / "run"
    train_sr(sr_config(), out, progress=False)
    return out


def test_every_sr_preset_parses():
    for name in ("tiny", "cpu", "colab-t4", "gpu"):
        parsed = parse_config(load_sr_preset(name))
        assert parsed["data"].crop_size % parsed["data"].factor == 0
    with pytest.raises(ValueError, match="data.degradation must be one of"):
        parse_config(sr_config(**{"data.degradation": "jpeg"}))
    with pytest.raises(ValueError, match="objective.kind must be one of"):
        parse_config(sr_config(**{"objective.kind": "gan"}))


def test_diffusion_run_saves_loads_and_upscales(diffusion_run: Path):
    checkpoint = load_checkpoint(diffusion_run)
    assert checkpoint.config["stage"] == "sr" and checkpoint.step == 6
    assert checkpoint.config["model"]["concat_channels"] == 3
    ldm, config = load_sr(diffusion_run)
    low = Bicubic(4)(torch.rand(2, 3, 32, 32) * 2 - 1)
    a = super_resolve(ldm, low, steps=3, seed=1)
    b = super_resolve(ldm, low, steps=3, seed=1)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, super_resolve(ldm, low, steps=3, seed=2)), "seeds give diversity"
    # temperature: T = 1 is the default sampler; a lower T scales x_T down, less diversity
    assert torch.equal(super_resolve(ldm, low, steps=3, seed=1, temperature=1.0), a)
    cool = [super_resolve(ldm, low, steps=3, seed=s, temperature=0.3) for s in (1, 2)]
    warm = [a, super_resolve(ldm, low, steps=3, seed=2)]
    assert (cool[0] - cool[1]).abs().mean() < (warm[0] - warm[1]).abs().mean() / 2
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="temperature must be a number > 0"):
            super_resolve(ldm, low, steps=3, temperature=bad)
    # eta: 0 is the default deterministic DDIM; eta > 0 adds fresh (seeded) noise at each step
    assert torch.equal(super_resolve(ldm, low, steps=3, seed=1, eta=0.0), a)
    noisy = super_resolve(ldm, low, steps=3, seed=1, eta=1.0)
    assert torch.equal(super_resolve(ldm, low, steps=3, seed=1, eta=1.0), noisy), "seeded"
    assert (noisy - a).abs().mean() > 1e-3, "eta = 1 samples another path"
    for bad in (-0.1, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
            super_resolve(ldm, low, steps=3, eta=bad)
    with pytest.raises(ValueError, match="eta is the DDIM sampler's noise"):
        super_resolve(ldm, low, steps=3, eta=0.5, sampler="ddpm")
    # back-projection makes the output consistent with its input
    from ldm_mini.superres.consistency import consistency_error

    projected = super_resolve(ldm, low, steps=3, seed=1, back_projection=3)
    assert consistency_error(projected, low).max() < consistency_error(a, low).min() / 5
    # tiling with a tile that holds the whole latent is exactly the untiled result
    assert torch.equal(super_resolve(ldm, low, steps=3, seed=1, tile=32, overlap=8), a)
    # a larger input is upscaled in tiles to 4x its size
    big = super_resolve(ldm, torch.zeros(1, 3, 12, 20), steps=2, seed=0, tile=16, overlap=4)
    assert big.shape == (1, 3, 48, 80) and torch.isfinite(big).all()


def test_export_ships_the_ema_weights_without_trainer_state(diffusion_run: Path, tmp_path: Path):
    extra = {"command": "ldm-mini train-sr ..."}
    shipped = export_ema_checkpoint(diffusion_run, tmp_path / "shipped", extra)
    assert not (shipped / "trainer_state.pt").exists()
    config = json.loads((shipped / "config.json").read_text())
    assert config["shipped_weights"] == "ema" and config["command"] == "ldm-mini train-sr ..."
    low = Bicubic(4)(torch.rand(1, 3, 32, 32) * 2 - 1)
    ema, _ = load_sr(diffusion_run)  # the run's EMA weights
    raw, _ = load_sr(diffusion_run, use_ema=False)
    exported, _ = load_sr(shipped)
    expected = super_resolve(ema, low, steps=2, seed=0)
    assert torch.equal(super_resolve(exported, low, steps=2, seed=0), expected)
    assert not torch.equal(super_resolve(raw, low, steps=2, seed=0), expected)


def test_regression_baseline_and_latent_space(tmp_path: Path):
    out = tmp_path / "regression"
    train_sr(sr_config(**{"objective.kind": "regression", "train.steps": 3}), out, progress=False)
    ldm, config = load_sr(out)
    assert config["objective"]["kind"] == "regression"
    low = Bicubic(4)(torch.rand(1, 3, 32, 32) * 2 - 1)
    once = super_resolve(ldm, low, "regression")
    assert once.shape == (1, 3, 32, 32) and torch.equal(once, super_resolve(ldm, low, "regression"))
    # in latent space: a 32x32 crop has an 8x8 latent, the size of the 8x8 input (no resize)
    latent = tmp_path / "latent"
    train_sr(
        sr_config(**{"first_stage.checkpoint": "shipped:emoji_kl_f4", "train.steps": 2}),
        latent,
        progress=False,
    )
    ldm, config = load_sr(latent)
    assert config["first_stage"]["downsampling_factor"] == 4 and config["scale_factor"] != 1.0
    assert super_resolve(ldm, low, steps=2).shape == (1, 3, 32, 32)


def test_cli_trains_and_upscales_any_size(diffusion_run: Path, tmp_path: Path, capsys):
    from PIL import Image

    from ldm_mini.cli import main

    photo = tmp_path / "small.png"
    Image.new("RGB", (13, 10), (200, 40, 40)).save(photo)
    out = tmp_path / "big.png"
    argv = ["superres", str(photo), "--checkpoint", str(diffusion_run), "--out", str(out),
            "--sample-steps", "2", "--tile", "16", "--overlap", "4"]  # fmt: skip
    assert main(argv) == 0
    with Image.open(out) as result:
        assert result.size == (52, 40)  # 4x, any size (pixel space: nothing to crop)
    printed = capsys.readouterr().out
    assert "13x10 -> 52x40" in printed and "seam ratio" in printed
    # by default the whole latent at once: no tiles, no seams to report
    assert main(argv[:-4]) == 0
    printed = capsys.readouterr().out
    assert "fully convolutional" in printed and "seam ratio" not in printed
    assert main([*argv[:-4], "--tile", "0"]) == 2
    assert "--tile must be a positive" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert (
        main(["superres", str(broken), "--checkpoint", str(diffusion_run), "--out", str(out)]) == 2
    )
    assert "cannot read" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (3, 3)).save(tiny)
    assert main(["superres", str(tiny), "--checkpoint", str(diffusion_run), "--out", str(out)]) == 2
    assert "too small" in capsys.readouterr().err
    run = tmp_path / "cli_run"
    argv = ["train-sr", "--preset", "tiny", "--degradation", "blind", "--objective", "regression",
            "--train-steps", "2", "--quiet", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert load_checkpoint(run).config["data"]["degradation"] == "blind"
    with pytest.raises(ValueError, match="regression has none"):
        super_resolve(load_sr(run)[0], torch.zeros(1, 3, 8, 8), "regression", temperature=0.5)
    with pytest.raises(ValueError, match="eta is the DDIM sampler's noise"):
        super_resolve(load_sr(run)[0], torch.zeros(1, 3, 8, 8), "regression", eta=1.0)
    # back-projection needs the known degradation: offered for bicubic, refused for blind
    argv = ["superres", str(photo), "--out", str(out), "--sample-steps", "2", "--back-project", "2"]
    assert main([*argv, "--checkpoint", str(diffusion_run)]) == 0
    assert "back-projected onto the input (2 iterations)" in capsys.readouterr().out
    assert main([*argv, "--checkpoint", str(run)]) == 2
    assert "unknown at test time" in capsys.readouterr().err
    assert main([*argv[:-1], "-1", "--checkpoint", str(diffusion_run)]) == 2
    assert "int >= 0" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(diffusion_run), "--eta", "1"]) == 0
    assert main([*argv, "--checkpoint", str(diffusion_run), "--eta", "3"]) == 2
    assert "eta must be a number in [0, 1]" in capsys.readouterr().err


def test_evaluate_sr_scores_every_method_on_the_same_crops(diffusion_run: Path, tmp_path, capsys):
    from ldm_mini.cli import main
    from ldm_mini.evaluation import evaluate_sr, heldout_crops
    from ldm_mini.superres.consistency import bicubic_upsample

    regression = tmp_path / "regression"
    train_sr(sr_config(**{"objective.kind": "regression", "train.steps": 2}), regression,
             progress=False)  # fmt: skip
    config = load_checkpoint(diffusion_run).config
    real, low = heldout_crops(config, 8)
    again_real, _ = heldout_crops(config, 8)
    assert real.shape == (8, 3, 32, 32) and low.shape == (8, 3, 8, 8)
    assert torch.equal(real, again_real), "the held-out crops are fixed"
    assert bicubic_upsample(low, 4).shape == real.shape
    result = evaluate_sr(diffusion_run, regression, n=8, steps=2)
    assert set(result) == {"ldm_sr", "bicubic", "regression", "settings"}
    for method in ("ldm_sr", "bicubic", "regression"):
        assert {"psnr", "ssim", "perceptual", "fd"} <= set(result[method])
    # bicubic of a bicubic-downsampled crop is far better than a 6-step model
    assert result["bicubic"]["psnr"] > result["ldm_sr"]["psnr"]
    with pytest.raises(ValueError, match="is a regression checkpoint"):
        evaluate_sr(regression, n=8)
    # back-projection: every method scored again after it, the raw scores unchanged
    projected = evaluate_sr(diffusion_run, regression, n=8, steps=2, back_projection=2)
    assert set(projected) == {"ldm_sr", "bicubic", "regression", "settings", "ldm_sr_bp",
                              "bicubic_bp", "regression_bp"}  # fmt: skip
    assert projected["settings"]["back_projection"] == 2
    for method in ("ldm_sr", "bicubic", "regression"):
        assert projected[method]["psnr"] == pytest.approx(result[method]["psnr"], rel=1e-6)
    # consistency with the input brings a barely trained model's output much closer to the truth
    assert projected["ldm_sr_bp"]["psnr"] > projected["ldm_sr"]["psnr"] + 3
    # crops of the training photos, for choosing settings without the test photos
    on_train = evaluate_sr(diffusion_run, n=8, steps=2, split="train")
    assert on_train["settings"]["split"] == "train" and result["settings"]["split"] == "test"
    train_real, _ = heldout_crops(config, 8, split="train")
    assert not torch.equal(train_real, real)
    assert on_train["bicubic"]["psnr"] != pytest.approx(result["bicubic"]["psnr"])
    # eta: recorded; only LDM-SR's samples change
    stochastic = evaluate_sr(diffusion_run, regression, n=8, steps=2, eta=1.0)
    assert stochastic["settings"]["eta"] == 1.0 and result["settings"]["eta"] == 0.0
    assert stochastic["ldm_sr"]["psnr"] != pytest.approx(result["ldm_sr"]["psnr"], rel=1e-6)
    for method in ("bicubic", "regression"):
        assert stochastic[method]["psnr"] == pytest.approx(result[method]["psnr"], rel=1e-6)
    with pytest.raises(ValueError, match="eta must be a number"):
        evaluate_sr(diffusion_run, n=8, steps=2, eta=2.0)
    argv = ["evaluate", "sr", "--checkpoint", str(diffusion_run), "--n", "8", "--sample-steps", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"ldm_sr", "bicubic", "settings"}


def test_evaluate_sr_scores_the_first_stage_ceiling_of_a_latent_model(tmp_path: Path):
    from ldm_mini import metrics
    from ldm_mini.evaluation import evaluate_sr, heldout_crops

    run = tmp_path / "latent"
    train_sr(sr_config(**{"first_stage.checkpoint": "shipped:emoji_kl_f4", "train.steps": 1}),
             run, progress=False)  # fmt: skip
    result = evaluate_sr(run, n=4, steps=2)
    assert set(result) == {"ldm_sr", "bicubic", "reconstruction", "settings"}
    ldm, config = load_sr(run)
    real, _ = heldout_crops(config, 4)
    with torch.no_grad():
        again = ldm.decode(ldm.encode(real)).clamp(-1, 1)
    assert result["reconstruction"]["psnr"] == pytest.approx(
        float(metrics.psnr(real, again).mean()), rel=1e-5
    )
    assert result["reconstruction"]["psnr"] != pytest.approx(result["bicubic"]["psnr"])


def test_warm_start_loads_the_unet_and_refuses_other_objectives_unets_and_latents(
    diffusion_run: Path, tmp_path: Path
):
    from ldm_mini.stages.sr import make_stage

    ema = load_sr(diffusion_run)[0].unet.state_dict()
    stage, _, _ = make_stage(sr_config(**{"init.checkpoint": str(diffusion_run)}))
    assert all(torch.equal(v, ema[k]) for k, v in stage.ldm.unet.state_dict().items())
    raw = load_sr(diffusion_run, use_ema=False)[0].unet.state_dict()
    stage, _, _ = make_stage(
        sr_config(**{"init.checkpoint": str(diffusion_run), "init.weights": "raw"})
    )
    assert all(torch.equal(v, raw[k]) for k, v in stage.ldm.unet.state_dict().items())
    assert not all(torch.equal(v, ema[k]) for k, v in raw.items()), "EMA and raw differ"
    # a warm-started run trains on and records where it started
    out = tmp_path / "warm"
    train_sr(sr_config(**{"init.checkpoint": str(diffusion_run), "train.steps": 2}), out,
             progress=False)  # fmt: skip
    assert load_checkpoint(out).config["init"]["checkpoint"] == str(diffusion_run)
    with pytest.raises(ValueError, match="objective"):
        make_stage(
            sr_config(**{"init.checkpoint": str(diffusion_run), "objective.kind": "regression"})
        )
    with pytest.raises(ValueError, match="another U-Net"):
        make_stage(sr_config(**{"init.checkpoint": str(diffusion_run), "model.base_channels": 8}))


def _emoji_autoencoder_with_changed(part: str, folder: Path) -> Path:
    """A copy of shipped:emoji_kl_f4 with the weights of ``part`` (encoder or decoder) moved."""
    from ldm_mini.checkpoints import save_checkpoint, saved_config

    start = load_checkpoint("shipped:emoji_kl_f4")
    state = {
        k: v + 0.01 if k.startswith(part + ".") and v.is_floating_point() else v
        for k, v in start.model_state.items()
    }
    return save_checkpoint(folder, stage="autoencoder", config=saved_config(start.config),
                           model_state=state)  # fmt: skip


def test_warm_start_follows_the_encoder_not_the_decoder(tmp_path: Path):
    from ldm_mini.stages.sr import make_stage

    start = tmp_path / "start"
    train_sr(sr_config(**{"first_stage.checkpoint": "shipped:emoji_kl_f4", "train.steps": 2}),
             start, progress=False)  # fmt: skip
    new_decoder = _emoji_autoencoder_with_changed("decoder", tmp_path / "decoder")
    stage, _, _ = make_stage(sr_config(**{"init.checkpoint": str(start),
                                          "first_stage.checkpoint": str(new_decoder)}))  # fmt: skip
    assert float(stage.ldm.scale_factor) == load_sr(start)[1]["scale_factor"]
    new_encoder = _emoji_autoencoder_with_changed("encoder", tmp_path / "encoder")
    with pytest.raises(ValueError, match="other latents"):
        make_stage(sr_config(**{"init.checkpoint": str(start),
                                "first_stage.checkpoint": str(new_encoder)}))  # fmt: skip


def test_repointing_to_a_fine_tuned_decoder_keeps_the_unet_and_refuses_other_encoders(
    tmp_path: Path,
):
    from ldm_mini.checkpoints import CheckpointError, repoint_first_stage
    from ldm_mini.configs import load_preset
    from ldm_mini.stages.autoencoder import train_autoencoder

    run = tmp_path / "run"
    train_sr(sr_config(**{"first_stage.checkpoint": "shipped:emoji_kl_f4", "train.steps": 2}),
             run, progress=False)  # fmt: skip
    # refers to shipped:emoji_kl_f4
    shipped_like = export_ema_checkpoint(run, tmp_path / "export", {})
    tuned = tmp_path / "decoder"
    overrides = {"data.dataset": "emoji", "init.checkpoint": "shipped:emoji_kl_f4",
                 "init.trainable": "decoder", "train.steps": 2}  # fmt: skip
    train_autoencoder(
        apply_overrides(load_preset("autoencoder", "tiny"),
                        [f"{k}={json.dumps(v)}" for k, v in overrides.items()]),
        tuned, progress=False,
    )  # fmt: skip
    moved = repoint_first_stage(shipped_like, str(tuned / "checkpoint"), tmp_path / "moved")
    before, _ = load_sr(shipped_like)
    after, config = load_sr(moved)
    assert config["first_stage"]["checkpoint"] == str(tuned / "checkpoint")
    kept = before.unet.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in after.unet.state_dict().items())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(before.encode(x), after.encode(x)), "the same latents"
    assert not torch.equal(before.decode(before.encode(x)), after.decode(after.encode(x)))
    other = _emoji_autoencoder_with_changed("encoder", tmp_path / "encoder")
    with pytest.raises(CheckpointError, match="not a decoder-only fine-tune"):
        repoint_first_stage(shipped_like, str(other), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sr") / "regression"
    train_sr(sr_config(**{"objective.kind": "regression", "train.steps": 3}), out, progress=False)
    return out


def test_predict_and_refine_starts_ldm_sr_from_the_regression(
    diffusion_run: Path, regression_run: Path, tmp_path: Path
):
    ldm, _ = load_sr(diffusion_run)
    regression, _ = load_sr(regression_run)
    low = Bicubic(4)(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    plain = super_resolve(ldm, low, steps=50, seed=1)
    predicted = super_resolve(regression, low, "regression")
    refined = super_resolve(ldm, low, steps=50, seed=1, refine_from=regression, refine_t=19)
    assert torch.equal(
        refined, super_resolve(ldm, low, steps=50, seed=1, refine_from=regression, refine_t=19)
    )
    # from the last DDIM step (t = 19, abar ~ 1) one step keeps nearly the regression's output,
    # and the output of a barely trained LDM-SR from pure noise is far from it
    to_prediction = (refined - predicted).pow(2).mean()
    assert to_prediction < 0.1 * (plain - predicted).pow(2).mean()
    assert to_prediction > 0, "the step from t = 19 still changes the prediction"
    # from a higher step: more of the sampler runs, further from the regression's output
    higher = super_resolve(ldm, low, steps=50, seed=1, refine_from=regression, refine_t=500)
    assert (higher - predicted).pow(2).mean() > to_prediction
    # tiles: an input that fits in one tile gives the untiled result, refinement included
    tiled = super_resolve(
        ldm, low, steps=50, seed=1, refine_from=regression, refine_t=500, tile=32, overlap=4
    )
    assert torch.allclose(tiled, higher, atol=1e-5)
    with pytest.raises(ValueError, match="below every visited step"):
        super_resolve(ldm, low, steps=50, seed=1, refine_from=regression, refine_t=10)
    with pytest.raises(ValueError, match="needs the diffusion objective and sampler 'ddim'"):
        super_resolve(ldm, low, steps=5, sampler="ddpm", refine_from=regression)
    with pytest.raises(ValueError, match="needs the diffusion objective"):
        super_resolve(regression, low, "regression", refine_from=regression)
    # a regression on other latents (a latent model here, pixel space above) is refused
    latent = tmp_path / "latent"
    train_sr(sr_config(**{"first_stage.checkpoint": "shipped:emoji_kl_f4", "objective.kind":
                          "regression", "train.steps": 1}), latent, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="trained on other latents"):
        super_resolve(ldm, low, steps=50, refine_from=load_sr(latent)[0])


def test_evaluate_and_cli_refine_from_the_regression(
    diffusion_run: Path, regression_run: Path, tmp_path: Path, capsys
):
    from PIL import Image

    from ldm_mini.cli import main
    from ldm_mini.evaluation import evaluate_sr

    result = evaluate_sr(diffusion_run, regression_run, n=4, steps=20, refine=True)
    assert set(result) == {"ldm_sr", "bicubic", "regression", "ldm_sr_refined", "settings"}
    assert result["settings"]["refine_t"] == REFINE_T
    assert result["ldm_sr_refined"]["psnr"] != pytest.approx(result["ldm_sr"]["psnr"], rel=1e-6)
    assert evaluate_sr(diffusion_run, regression_run, n=4, steps=10)["settings"]["refine_t"] is None
    with pytest.raises(ValueError, match="give --regression"):
        evaluate_sr(diffusion_run, n=4, steps=10, refine=True)
    photo = tmp_path / "small.png"
    Image.new("RGB", (12, 8), (30, 140, 200)).save(photo)
    out = tmp_path / "big.png"
    argv = ["superres", str(photo), "--out", str(out), "--sample-steps", "10", "--checkpoint",
            str(diffusion_run)]  # fmt: skip
    assert main([*argv, "--refine-from", str(regression_run), "--refine-t", "300"]) == 0
    assert "refined from" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size == (48, 32)
    assert main([*argv, "--refine-from", str(diffusion_run)]) == 2
    assert "is not a regression checkpoint" in capsys.readouterr().err
    assert main([*argv, "--refine-from", str(regression_run), "--refine-t", "5"]) == 2
    assert "below every visited step" in capsys.readouterr().err
    assert main([*argv, "--refine-t", "300"]) == 2
    assert "give --refine-from too" in capsys.readouterr().err
    evaluate = ["evaluate", "sr", "--checkpoint", str(diffusion_run), "--regression",
                str(regression_run), "--n", "4", "--sample-steps", "10",
                "--refine-t", "300"]  # fmt: skip
    assert main(evaluate) == 2
    assert "give --refine too" in capsys.readouterr().err
