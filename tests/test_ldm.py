"""Latent diffusion (ldm_mini.ldm, ldm_mini.stages.ldm, ldm_mini.pipelines) and the engine's EMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder
from ldm_mini.checkpoints import CheckpointError, export_ema_checkpoint, load_checkpoint
from ldm_mini.configs import PRESETS, apply_overrides, available_presets
from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion, estimate_scale_factor, slerp
from ldm_mini.pipelines import load_ldm
from ldm_mini.stages.ldm import load_ldm_preset, parse_config, train_ldm
from ldm_mini.train import ExponentialMovingAverage
from ldm_mini.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(channels: int, num_classes: int | None = None) -> UNet:
    torch.manual_seed(0)
    return UNet(
        UNetConfig(
            in_channels=channels,
            out_channels=channels,
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(),
            heads=2,
            num_classes=num_classes,
        )
    )


def tiny_autoencoder(latent_channels: int = 3) -> nn.Module:
    torch.manual_seed(1)
    config = AutoencoderConfig(
        kind="kl",
        f=2,
        in_channels=1,
        latent_channels=latent_channels,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
    )
    return build_autoencoder(config).eval()


def tiny_ldm(num_classes: int | None = 3, scale: float = 0.5) -> LatentDiffusion:
    schedule = NoiseSchedule.from_name("linear", 50)
    return LatentDiffusion(tiny_autoencoder(), tiny_unet(3, num_classes), schedule, scale)


# --------------------------------------------------------------------------------------
# The scale factor, encode and decode
# --------------------------------------------------------------------------------------


def test_scale_factor_is_one_over_the_population_std():
    generator = torch.Generator().manual_seed(0)
    images = [3.0 * torch.randn(10, 2, 4, 4, generator=generator) + 1.0 for _ in range(3)]
    stats = estimate_scale_factor(IdentityFirstStage(2), images)
    everything = torch.cat(images).double()
    assert stats["count"] == everything.numel()
    assert stats["latent_std"] == pytest.approx(float(everything.std(unbiased=False)), rel=1e-9)
    assert stats["scale_factor"] == pytest.approx(1.0 / stats["latent_std"], rel=1e-12)
    assert stats["latent_mean"] == pytest.approx(float(everything.mean()), rel=1e-9)
    with pytest.raises(ValueError, match="no images"):
        estimate_scale_factor(IdentityFirstStage(2), [])
    with pytest.raises(ValueError, match="zero variance"):
        estimate_scale_factor(IdentityFirstStage(2), [torch.ones(2, 2, 4, 4)])


def test_slerp_endpoints_norm_and_straight_line_fallback():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 4, generator=generator), torch.randn(2, 4, 4, generator=generator)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert path.shape == (5, 2, 4, 4)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    # orthogonal unit vectors: every point stays on the unit circle, at angle alpha * 90 deg
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    circle = slerp(x, y, [0.0, 1 / 3, 0.5, 1.0])
    torch.testing.assert_close(circle.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(circle[1], torch.tensor([3**0.5 / 2, 0.5]))
    # the straight line halfway between two noise draws is shorter; slerp's is not
    midpoint_norm = float(slerp(a, b, [0.5])[0].norm())
    assert midpoint_norm > 1.1 * float(((a + b) / 2).norm())
    # parallel inputs: the straight line
    torch.testing.assert_close(slerp(x, 2 * x, [0.5])[0], torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, b[0], [0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        slerp(a, b, [1.5])
    with pytest.raises(ValueError, match="nonzero"):
        slerp(torch.zeros(3), torch.ones(3), [0.5])


def test_encode_scales_and_decode_unscales():
    ldm = tiny_ldm(scale=0.5)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z = ldm.encode(x)
    raw = ldm.first_stage.encode_latent(x)
    assert z.shape == (2, 3, 4, 4)
    # z = s E(x); D(z / s) = D(E(x))
    torch.testing.assert_close(z, 0.5 * raw)
    torch.testing.assert_close(ldm.decode(z), ldm.first_stage.decode_latent(raw))
    pixel = LatentDiffusion(
        IdentityFirstStage(1), tiny_unet(1), NoiseSchedule.from_name("linear", 50)
    )
    assert torch.equal(pixel.encode(x), x) and torch.equal(pixel.decode(x), x)
    assert pixel.downsampling_factor == 1


def test_first_stage_is_frozen_and_stays_in_eval_mode():
    ldm = tiny_ldm()
    ldm.train()
    assert ldm.unet.training and not ldm.first_stage.training
    assert not any(p.requires_grad for p in ldm.first_stage.parameters())
    z0 = ldm.encode(torch.rand(2, 1, 8, 8) * 2 - 1)
    ldm.training_loss(z0, torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in ldm.first_stage.parameters())
    assert all(p.grad is not None for p in ldm.unet.parameters())


def test_mismatched_unet_and_bad_inputs_are_clear_errors():
    schedule = NoiseSchedule.from_name("linear", 50)
    with pytest.raises(ValueError, match="latents have 3"):
        LatentDiffusion(tiny_autoencoder(3), tiny_unet(4), schedule)
    with pytest.raises(ValueError, match="scale_factor must be > 0"):
        LatentDiffusion(tiny_autoencoder(3), tiny_unet(3), schedule, 0.0)
    with pytest.raises(ValueError, match="must be an ldm_mini autoencoder"):
        LatentDiffusion(nn.Identity(), tiny_unet(3), schedule)
    ldm = tiny_ldm()
    with pytest.raises(ValueError, match=r"z0 must be scaled latents \(B, 3, h, w\)"):
        ldm.training_loss(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pass the labels"):
        ldm.training_loss(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ldm.training_loss(torch.randn(2, 3, 4, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_ldm(num_classes=None).training_loss(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        ldm.sample(2, (4, 4), sampler="euler", labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not divisible"):
        ldm.sample(2, (3, 4), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pass labels"):
        ldm.sample(2, (4, 4))


# --------------------------------------------------------------------------------------
# Training loss and condition dropout
# --------------------------------------------------------------------------------------


def test_condition_dropout_replaces_labels_by_the_null_class():
    ldm = tiny_ldm(num_classes=3)
    labels = torch.tensor([0, 1, 2] * 400)
    assert torch.equal(ldm.class_labels_for_training(labels, 0.0), labels)
    assert torch.equal(ldm.class_labels_for_training(labels, 1.0), torch.full_like(labels, 3))
    dropped = ldm.class_labels_for_training(labels, 0.1, torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert torch.all(dropped[changed] == 3) and torch.equal(dropped[~changed], labels[~changed])
    assert 0.07 < changed.float().mean() < 0.13  # 1,200 draws of p = 0.1


def test_training_loss_is_the_schedule_loss_with_class_labels():
    ldm = tiny_ldm(num_classes=3)
    z0 = torch.randn(4, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 0])
    ours = ldm.training_loss(z0, labels, 0.0, torch.Generator().manual_seed(5))
    # L = E ||eps - eps_theta(z_t, t, y)||^2, drawn with the same generator
    reference = ldm.schedule.training_loss(
        ldm.unet,
        z0,
        generator=torch.Generator().manual_seed(5),
        model_kwargs={"class_labels": labels},
    )
    assert torch.equal(ours, reference)
    other = ldm.schedule.training_loss(
        ldm.unet,
        z0,
        generator=torch.Generator().manual_seed(5),
        model_kwargs={"class_labels": (labels + 1) % 3},
    )
    # a perturbed U-Net (so that labels matter) would differ; a fresh one ignores them
    assert torch.isfinite(other)


def test_min_snr_weighting_reaches_the_schedule_and_matches_its_formula():
    ldm = tiny_ldm(num_classes=3)
    ldm.schedule = NoiseSchedule.from_name("linear", 50, parameterization="v")
    z0, labels = torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    t, noise = torch.tensor([0, 10, 30, 49]), torch.randn(4, 3, 4, 4)
    weighted = ldm.training_loss(z0, labels, 0.0, t=t, noise=noise, weighting="min_snr",
                                 min_snr_gamma=2.0)  # fmt: skip
    # by hand: per-sample MSE to v, times min(SNR, gamma) / (SNR + 1)
    with torch.no_grad():
        z_t = ldm.schedule.q_sample(z0, t, noise)
        output = ldm.unet(z_t, t, class_labels=labels)
    per_sample = ((output - ldm.schedule.v_from(z0, noise, t)) ** 2).mean(dim=(1, 2, 3))
    alphas_cumprod = ldm.schedule.alphas_cumprod[t].double()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = snr.clamp(max=2.0) / (snr + 1)
    expected = float((per_sample.double() * weights).mean())
    assert float(weighted.detach()) == pytest.approx(expected, rel=1e-5)
    plain = ldm.training_loss(z0, labels, 0.0, t=t, noise=noise)
    assert float(plain.detach()) == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert float(weighted.detach()) != pytest.approx(float(plain.detach()), rel=1e-3)
    # the config section reaches the stage's loss, and bad values are refused
    parsed = parse_config(tiny_config(**{"diffusion.weighting": "min_snr"}))
    assert parsed["diffusion"].weighting == "min_snr" and parsed["diffusion"].min_snr_gamma == 5.0
    with pytest.raises(ValueError, match="diffusion.weighting must be one of"):
        parse_config(tiny_config(**{"diffusion.weighting": "p2"}))
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        parse_config(tiny_config(**{"diffusion.min_snr_gamma": 0}))


def test_sampling_shapes_determinism_and_guidance_one():
    ldm = tiny_ldm(num_classes=3).eval()
    with torch.no_grad():
        for parameter in ldm.unet.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    labels = torch.tensor([0, 2])

    def draw(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return ldm.sample(2, (4, 4), steps=5, labels=labels, generator=generator, **kwargs)

    images, output = draw(return_trajectory=True)
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1
    assert len(output.trajectory) == 6 and output.sample.shape == (2, 3, 4, 4)
    again, _ = draw()
    assert torch.equal(images, again)
    guided, _ = draw(guidance=3.0)
    assert not torch.allclose(guided, images)
    for sampler in ("ddpm", "dpm++"):
        assert draw(sampler=sampler)[0].shape == (2, 1, 8, 8)


# --------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------


def test_ema_closed_form_with_warmup():
    module = nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema = ExponentialMovingAverage(module, decay=0.5)
    values = [3.0, 5.0, 9.0]
    expected = 1.0
    for n, value in enumerate(values):
        with torch.no_grad():
            module.weight.fill_(value)
        # d = min(decay, (1 + n) / (10 + n)): 0.1, 0.1818..., 0.25 (all below 0.5)
        decay = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(module)
        expected = decay * expected + (1 - decay) * value
    torch.testing.assert_close(ema.weights()["weight"], torch.full((1, 2), expected))
    restored = ExponentialMovingAverage(nn.Linear(2, 1), 0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 3 and torch.equal(
        restored.weights()["weight"], ema.weights()["weight"]
    )
    with pytest.raises(ValueError, match="does not fit"):
        ExponentialMovingAverage(nn.Linear(3, 1), 0.5).load_state_dict(
            {**ema.state_dict(), "extra": torch.zeros(1)}
        )
    with pytest.raises(ValueError, match="decay must be in"):
        ExponentialMovingAverage(module, 1.0)


# --------------------------------------------------------------------------------------
# Presets, training, checkpoints
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_every_ldm_preset_parses(name):
    assert name in available_presets("ldm")
    parsed = parse_config(load_ldm_preset(name))
    assert parsed["train"].ema_decay is not None and parsed["condition"].kind == "class"


def tiny_config(**sets) -> dict:
    overrides = [f"{key}={json.dumps(value)}" for key, value in sets.items()]
    return apply_overrides(load_ldm_preset("tiny"), overrides)


def test_resume_with_ema_equals_the_uninterrupted_run(tmp_path: Path):
    # a constant learning rate: a 3-step run is then the first half of the 6-step one (a
    # cosine schedule would decay over 3 steps)
    constant = {"train.lr_schedule": "constant"}
    config = tiny_config(**{"train.steps": 6, "train.checkpoint_every": 3, **constant})
    train_ldm(config, tmp_path / "straight", progress=False)
    half = tiny_config(**{"train.steps": 3, "train.checkpoint_every": 3, **constant})
    train_ldm(half, tmp_path / "resumed", progress=False)
    train_ldm(config, tmp_path / "resumed", progress=False)
    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "resumed")
    assert a.step == b.step == 6
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    assert a.ema_state is not None and set(a.ema_state) == set(b.ema_state)
    for name, tensor in a.ema_state.items():
        assert torch.equal(tensor, b.ema_state[name]), name
    # the EMA differs from the raw weights after a few steps
    raw = {k[len("unet.") :]: v for k, v in a.model_state.items() if k.startswith("unet.")}
    assert any(not torch.equal(raw[k], a.ema_state[k]) for k in raw)


def test_checkpoint_round_trip_samples_bitwise_and_errors(tmp_path: Path):
    train_ldm(tiny_config(), tmp_path / "run", progress=False)
    ldm, config = load_ldm(tmp_path / "run")
    again, _ = load_ldm(tmp_path / "run")
    assert config["stage"] == "ldm" and config["scale_factor"] > 0
    labels = torch.tensor([1, 7])

    def draw(model):
        return model.sample(
            2, (8, 8), steps=3, labels=labels, generator=torch.Generator().manual_seed(0)
        )[0]

    assert torch.equal(draw(ldm), draw(again))
    raw, _ = load_ldm(tmp_path / "run", use_ema=False)
    assert not torch.equal(draw(raw), draw(ldm))
    with pytest.raises(CheckpointError, match="'autoencoder' checkpoint is needed"):
        from ldm_mini.pipelines import load_autoencoder

        load_autoencoder(tmp_path / "run")
    with pytest.raises(CheckpointError, match="'ldm' checkpoint is needed"):
        load_ldm(Path(__file__).parents[1] / "data" / "checkpoints" / "fashion_mnist_kl_f4")
    (tmp_path / "run" / "checkpoint" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_ldm(tmp_path / "run")


def test_pixel_space_is_one_flag(tmp_path: Path):
    config = tiny_config(**{"first_stage.checkpoint": "identity"})
    train_ldm(config, tmp_path / "pixels", progress=False)
    ldm, saved = load_ldm(tmp_path / "pixels")
    assert isinstance(ldm.first_stage, IdentityFirstStage)
    assert saved["scale_factor"] == 1.0 and saved["model"]["in_channels"] == 1
    images, _ = ldm.sample(1, (32, 32), steps=2, labels=torch.tensor([0]))
    assert images.shape == (1, 1, 32, 32)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model \\(U-Net\\) key"):
        parse_config({**load_ldm_preset("tiny"), "model": {"width": 3}})
    with pytest.raises(ValueError, match="condition.kind must be one of"):
        parse_config(tiny_config(**{"condition.kind": "colour"}))
    with pytest.raises(CheckpointError, match="no shipped checkpoint 'nope'"):
        train_ldm(
            tiny_config(**{"first_stage.checkpoint": "shipped:nope"}), "/tmp/unused", progress=False
        )


def test_shipped_export_refers_to_the_autoencoder_by_sha256(tmp_path: Path, monkeypatch):
    import shutil

    from ldm_mini.data.bundled import data_dir

    train_ldm(tiny_config(), tmp_path / "run", progress=False)
    shipped = export_ema_checkpoint(tmp_path / "run", tmp_path / "shipped", {"note": "test"})
    state = load_checkpoint(shipped).model_state
    assert state and all(k.startswith("unet.") for k in state)  # no first-stage copy
    ema, _ = load_ldm(tmp_path / "run")
    again, config = load_ldm(shipped)
    assert config["shipped_weights"] == "ema" and config["note"] == "test"
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    # the shipped autoencoder is stored in half; the shipped LDM (trained on the half file)
    # names that file, and an LDM that names the float32 file it replaced loads too
    shipped_ae = load_checkpoint(data_dir() / "checkpoints" / "fashion_mnist_kl_f4").config
    class_ldm = data_dir() / "checkpoints" / "fashion_mnist_ldm_class"
    named = load_checkpoint(class_ldm).config["first_stage"]["model_sha256"]
    assert shipped_ae["weights_dtype"] == "float16"
    assert named == shipped_ae["files"]["model.safetensors"]
    load_ldm(class_ldm)
    legacy = tmp_path / "legacy_ldm"
    shutil.copytree(class_ldm, legacy)
    legacy_config = json.loads((legacy / "config.json").read_text())
    legacy_config["first_stage"]["model_sha256"] = shipped_ae["stored_from_sha256"][0]
    (legacy / "config.json").write_text(json.dumps(legacy_config))
    load_ldm(legacy)
    # a different autoencoder in the referenced folder is refused
    fake_data = tmp_path / "data"
    shutil.copytree(
        data_dir() / "checkpoints" / "fashion_mnist_vq_f4",
        fake_data / "checkpoints" / "fashion_mnist_kl_f4",
    )
    monkeypatch.setattr("ldm_mini.data.bundled.data_dir", lambda: fake_data)
    with pytest.raises(CheckpointError, match="another autoencoder"):
        load_ldm(shipped)


def test_warm_start_begins_from_the_ema_weights_and_refuses_mismatches(tmp_path: Path):
    from ldm_mini.stages.ldm import make_stage

    train_ldm(tiny_config(), tmp_path / "first", progress=False)
    source, source_config = load_ldm(tmp_path / "first")  # the EMA weights
    first = str(tmp_path / "first")
    stage, _, _ = make_stage(tiny_config(**{"init.checkpoint": first}))
    for name, tensor in source.unet.state_dict().items():
        assert torch.equal(stage.ldm.unet.state_dict()[name], tensor), name
    assert float(stage.ldm.scale_factor) == pytest.approx(source_config["scale_factor"])
    assert stage.checkpoint_config()["init"]["checkpoint"] == first
    # the raw weights are another starting point, and a random start differs from both
    raw_stage, _, _ = make_stage(tiny_config(**{"init.checkpoint": first, "init.weights": "raw"}))
    raw = load_checkpoint(tmp_path / "first").model_state
    for name, tensor in raw_stage.ldm.unet.state_dict().items():
        assert torch.equal(tensor, raw[f"unet.{name}"]), name
    fresh, _, _ = make_stage(tiny_config())
    fresh_state = fresh.ldm.unet.state_dict()
    assert any(not torch.equal(fresh_state[k], v) for k, v in source.unet.state_dict().items())
    # training goes on from there
    train_ldm(tiny_config(**{"init.checkpoint": first}), tmp_path / "warm", progress=False)
    assert load_checkpoint(tmp_path / "warm").config["init"]["checkpoint"] == first
    with pytest.raises(ValueError, match="another U-Net: base_channels"):
        make_stage(tiny_config(**{"init.checkpoint": first, "model.base_channels": 8}))
    with pytest.raises(ValueError, match="another U-Net|another first stage"):
        make_stage(tiny_config(**{"init.checkpoint": first, "first_stage.checkpoint": "identity"}))
    with pytest.raises(ValueError, match="leave latents.scale_factor null"):
        make_stage(tiny_config(**{"init.checkpoint": first, "latents.scale_factor": 3.0}))
    with pytest.raises(ValueError, match="init.weights must be"):
        parse_config(tiny_config(**{"init.weights": "best"}))


def test_generate_with_eta_is_seeded_stochastic_ddim_and_refuses_other_samplers():
    from ldm_mini.pipelines import generate

    ldm = tiny_ldm(num_classes=3)
    labels = torch.tensor([0, 1, 2, 0])
    default, _, _ = generate(ldm, 4, 8, steps=5, seed=1, labels=labels)
    eta_zero, _, _ = generate(ldm, 4, 8, steps=5, seed=1, labels=labels, eta=0.0)
    assert torch.equal(default, eta_zero)  # 0 is the deterministic sampler, bit for bit
    noisy, _, _ = generate(ldm, 4, 8, steps=5, seed=1, labels=labels, eta=1.0)
    again, _, _ = generate(ldm, 4, 8, steps=5, seed=1, labels=labels, eta=1.0)
    assert torch.equal(noisy, again) and not torch.equal(noisy, default)
    with pytest.raises(ValueError, match="eta is a setting of the DDIM sampler"):
        generate(ldm, 4, 8, steps=5, labels=labels, sampler="dpm++", eta=1.0)
    with pytest.raises(ValueError, match="eta must be a number in"):
        generate(ldm, 4, 8, steps=5, labels=labels, eta=1.5)
