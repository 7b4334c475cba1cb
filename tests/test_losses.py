"""Tests for ldm_mini.perceptual (the perceptual distance) and ldm_mini.losses (the AE losses)."""

from __future__ import annotations

import json
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from synthetic import noisy, smooth_images
from torch import nn

from ldm_mini.losses import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    PatchDiscriminator,
    adaptive_weight,
    generator_adversarial_loss,
    hinge_d_loss,
    l1_reconstruction,
)
from ldm_mini.perceptual import (
    BACKBONES,
    PerceptualDistance,
    PerceptualWeightsUnavailable,
    choose_backbone,
    efficientnet_lite0_weights_path,
    lpips_backbone_cached,
    lpips_backbone_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def distance() -> PerceptualDistance:
    return PerceptualDistance("efficientnet-lite0")


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch's hub cache pointed at an empty folder: nothing is cached there."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub"


# ---------------------------------------------------------------- perceptual distance


def test_distance_is_zero_on_identical_nonnegative_and_symmetric(distance):
    x, y = smooth_images(4, seed=0), smooth_images(4, seed=1)
    with torch.no_grad():
        same, forward, backward = distance(x, x), distance(x, y), distance(y, x)
    assert same.shape == (4,)
    assert torch.allclose(same, torch.zeros(4), atol=1e-6)
    assert (forward > 0.05).all()
    assert torch.allclose(forward, backward, rtol=1e-5, atol=1e-7)


def test_distance_orders_distortions(distance):
    x, other = smooth_images(4, seed=0), smooth_images(4, seed=2)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    with torch.no_grad():
        small, large = distance(x, noisy(x, 0.05)), distance(x, noisy(x, 0.3))
        blur, different = distance(x, blurred), distance(x, other)
    assert (small < large).all()
    assert (blur > 1e-4).all()
    assert (different > small).all()


def test_grey_images_are_repeated_to_rgb(distance):
    x, y = smooth_images(2, channels=1, seed=3), smooth_images(2, channels=1, seed=4)
    with torch.no_grad():
        grey = distance(x, y)
        rgb = distance(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))
    assert torch.allclose(grey, rgb)
    with pytest.raises(ValueError, match="same shape"):
        distance(x, y[:1])


def test_small_images_are_upsampled_to_min_size(distance):
    assert distance.min_size == 64
    assert distance._prepare(smooth_images(2, channels=1)).shape == (2, 3, 64, 64)
    assert distance._prepare(torch.zeros(1, 3, 28, 56)).shape == (1, 3, 64, 128)
    assert distance._prepare(torch.zeros(1, 3, 96, 96)).shape == (1, 3, 96, 96)


def test_gradients_reach_the_input_and_never_the_weights(distance):
    distance.train()  # a parent module's .train() must not unfreeze BatchNorm or dropout
    assert not distance.network.training
    running_mean = distance.network._bn0.running_mean.clone()
    x = smooth_images(2, seed=5)
    reconstruction = noisy(x, 0.2).requires_grad_(True)
    distance(x, reconstruction).mean().backward()
    assert reconstruction.grad is not None
    assert torch.isfinite(reconstruction.grad).all() and reconstruction.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in distance.parameters())
    assert torch.equal(distance.network._bn0.running_mean, running_mean)


def test_efficientnet_weights_are_the_pretrained_file(distance):
    raw = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    loaded = distance.network.state_dict()
    assert set(loaded) == set(raw)
    for key in ("_conv_stem.weight", "_blocks.10._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(loaded[key], raw[key])


def test_pretrained_network_recognises_a_photo(distance):
    """The weights and the TF-Lite preprocessing are right: the coffee photo is an espresso."""
    from ldm_mini.data import load_dataset
    from ldm_mini.perceptual import efficientnet_lite_preprocess

    rows = load_dataset("photos", split="train")
    photo = next(row["image"] for row in rows if row["name"] == "coffee").convert("RGB")
    pixels = torch.from_numpy(np.asarray(photo.resize((224, 224)), dtype=np.float32).copy())
    image = rearrange(pixels, "h w c -> 1 c h w") / 127.5 - 1
    with torch.no_grad():
        probabilities = distance.network(efficientnet_lite_preprocess(image)).softmax(-1)[0]
    espresso = 967  # ImageNet class index
    assert probabilities.argmax().item() == espresso and probabilities[espresso] > 0.5


def test_auto_falls_back_to_efficientnet_when_lpips_is_not_cached(empty_hub, caplog):
    assert not lpips_backbone_cached("vgg")
    assert lpips_backbone_path("vgg") == empty_hub / "checkpoints" / "vgg16-397923af.pth"
    with caplog.at_level(logging.INFO, logger="ldm_mini.perceptual"):
        assert choose_backbone("auto") == "efficientnet-lite0"
    assert "not cached" in caplog.text and "allow_download=True" in caplog.text
    with pytest.raises(PerceptualWeightsUnavailable, match="allow_download=True") as error:
        choose_backbone("lpips-vgg")
    message = str(error.value)
    assert isinstance(error.value, RuntimeError) and "\n" not in message
    assert "not cached" in message and str(lpips_backbone_path("vgg")) in message
    # what to type: allow the download, or the offline backbone
    assert "--set loss.allow_download=true" in message
    assert "--set loss.perceptual_backbone=efficientnet-lite0" in message
    with pytest.raises(PerceptualWeightsUnavailable, match="not cached"):
        PerceptualDistance("lpips-alex")
    # allowed to download: LPIPS is chosen (the download would happen when it is built)
    assert choose_backbone("auto", allow_download=True) == "lpips-vgg"
    assert choose_backbone("lpips-alex", allow_download=True) == "lpips-alex"


def test_auto_prefers_lpips_when_cached_and_rejects_unknown_names(empty_hub):
    lpips_backbone_path("vgg").parent.mkdir(parents=True)
    lpips_backbone_path("vgg").touch()
    assert choose_backbone("auto") == "lpips-vgg"
    with pytest.raises(ValueError) as error:
        choose_backbone("vgg19")
    assert all(name in str(error.value) for name in BACKBONES)


def test_auto_says_in_the_log_that_it_picked_cached_lpips(monkeypatch, caplog):
    from ldm_mini import perceptual

    monkeypatch.setattr(perceptual, "lpips_backbone_cached", lambda net="vgg": net == "vgg")
    with caplog.at_level(logging.INFO, logger="ldm_mini.perceptual"):
        assert choose_backbone("auto") == "lpips-vgg"
    assert "Perceptual backbone: lpips-vgg" in caplog.text and "cached" in caplog.text
    assert choose_backbone("lpips-vgg") == "lpips-vgg"  # cached: no download needed
    with pytest.raises(PerceptualWeightsUnavailable):
        choose_backbone("lpips-alex")


@pytest.mark.parametrize(
    "failure",
    [urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
     OSError(28, "No space left on device"),
     RuntimeError("invalid hash value (expected \"397923af\", got \"00000000\")")],
)  # fmt: skip
def test_a_failed_download_is_one_clear_error(empty_hub, monkeypatch, failure):
    def fail(url, dst, hash_prefix=None, progress=True):
        raise failure

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(PerceptualWeightsUnavailable) as error:
        PerceptualDistance("lpips-vgg", allow_download=True)
    message = str(error.value)
    assert "\n" not in message and error.value.__cause__ is failure
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "where the network is" in message and "efficientnet-lite0" in message
    assert not lpips_backbone_path("vgg").exists()


def test_lpips_loads_cached_trunk_and_shipped_linear_layers(empty_hub):
    """A stand-in for torchvision's AlexNet file (random tensors of the right shapes)."""
    generator = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3)}
    shapes |= {8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    trunk = {}
    for index, shape in shapes.items():
        trunk[f"features.{index}.weight"] = 0.01 * torch.randn(shape, generator=generator)
        trunk[f"features.{index}.bias"] = torch.zeros(shape[0])
    trunk["classifier.6.bias"] = torch.zeros(1000)  # the ImageNet head LPIPS does not use
    lpips_backbone_path("alex").parent.mkdir(parents=True)
    torch.save(trunk, lpips_backbone_path("alex"))

    distance = PerceptualDistance("lpips-alex")
    assert distance.backbone_name == "lpips-alex"
    lpips_model = distance.network
    assert torch.equal(lpips_model.net.slice1[0].weight, trunk["features.0.weight"])
    trunk_state = lpips_model.net.state_dict()
    assert torch.equal(trunk_state["slice5.10.weight"], trunk["features.10.weight"])
    import lpips

    shipped = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth",
        map_location="cpu",
        weights_only=True,
    )
    assert torch.equal(lpips_model.lin2.model[1].weight, shipped["lin2.model.1.weight"])
    x, y = smooth_images(2, seed=6), smooth_images(2, seed=7)
    with torch.no_grad():
        assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
        assert (distance(x, y) > 0).all()


# ---------------------------------------------------------------- adversarial pieces


def test_l1_hinge_and_generator_losses_match_hand_values():
    x = torch.zeros(1, 1, 2, 2)
    assert l1_reconstruction(x, torch.tensor([[[[1.0, -1.0], [0.5, 0.5]]]])).item() == 0.75
    logits_real = torch.tensor([2.0, 0.5, -1.0])
    logits_fake = torch.tensor([-2.0, 0.0, 1.0])
    # 0.5 * (mean[0, 0.5, 2] + mean[0, 1, 2]) = 0.5 * (5/6 + 1)
    assert hinge_d_loss(logits_real, logits_fake).item() == pytest.approx(11 / 12)
    assert generator_adversarial_loss(logits_fake).item() == pytest.approx(1 / 3)
    # well separated logits: the hinge is satisfied, the loss is 0
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_adaptive_weight_is_the_gradient_norm_ratio_clamped_and_detached():
    weight = torch.randn(5, requires_grad=True)
    a = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0])  # ||a|| = 5
    b = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0])  # ||b|| = 3
    rec_loss, gan_loss = (a * weight).sum(), (b * weight).sum()
    value = adaptive_weight(rec_loss, gan_loss, weight)
    assert value.item() == pytest.approx(5 / (3 + 1e-4))
    assert not value.requires_grad
    assert rec_loss.requires_grad  # graph kept: the caller can still backpropagate
    # a GAN gradient of 0 gives 5 / 1e-4 = 5e4, clamped to max_weight
    flat_gan = (torch.zeros(5) * weight).sum()
    assert adaptive_weight(rec_loss, flat_gan, weight).item() == pytest.approx(1e4)
    assert adaptive_weight(rec_loss, flat_gan, weight, max_weight=7.0).item() == 7.0
    with pytest.raises(ValueError, match="last_layer"):
        adaptive_weight(rec_loss, gan_loss, torch.randn(5, requires_grad=True))


@pytest.mark.parametrize(
    ("size", "n_layers", "patches"), [(32, 3, 2), (32, 2, 6), (64, 3, 6), (64, 2, 14)]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_discriminator_gives_a_patch_map(size, n_layers, patches, channels):
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(channels, base_channels=8, n_layers=n_layers)
    logits = discriminator(smooth_images(2, channels, size))
    assert logits.shape == (2, 1, patches, patches)
    assert discriminator.receptive_field == {2: 34, 3: 70}[n_layers]


def test_discriminator_init_follows_taming():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(3, base_channels=64, n_layers=3)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in discriminator.modules() if isinstance(m, nn.GroupNorm)]
    assert len(convs) == 5 and len(norms) == 3
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(torch.equal(norm.bias, torch.zeros_like(norm.bias)) for norm in norms)


# ---------------------------------------------------------------- AutoencoderLoss


def make_loss(disc_start: int, kind: str = "kl", **overrides) -> AutoencoderLoss:
    torch.manual_seed(0)
    settings = dict(
        perceptual_backbone="efficientnet-lite0",
        perceptual_weight=0.7,
        kl_weight=0.01,
        vq_weight=0.3,
        disc_weight=0.5,
        disc_start=disc_start,
        disc_base_channels=8,
        disc_layers=2,
    )
    config = AutoencoderLossConfig(**(settings | overrides))
    return AutoencoderLoss(config, in_channels=1, kind=kind)


class TinyDecoder(nn.Module):
    """latent -> reconstruction through one conv: its weight is the last layer G_L."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.out = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, latent):
        return torch.tanh(self.out(latent))


def test_generator_loss_before_disc_start_has_no_gan_term():
    loss_module = make_loss(disc_start=100)
    decoder = TinyDecoder()
    x = smooth_images(2, channels=1, seed=8)
    reconstruction = decoder(torch.randn(2, 4, 32, 32))
    regularization = torch.tensor(3.0)
    loss, logs = loss_module.generator_loss(
        x, reconstruction, regularization, step=99, last_layer=decoder.out.weight
    )
    with torch.no_grad():
        perceptual = loss_module.perceptual(x, reconstruction).mean()
    expected = (x - reconstruction).abs().mean() + 0.7 * perceptual + 0.01 * 3.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["gan"] == 0.0 and logs["adaptive_weight"] == 0.0
    assert logs["regularization"] == 3.0 and logs["loss"] == pytest.approx(loss.item())
    assert set(logs) == {"loss", "l1", "perceptual", "regularization", "gan", "adaptive_weight"}
    loss.backward()
    assert all(p.grad is None for p in loss_module.discriminator.parameters())
    # kind "vq" weighs the same regulariser with vq_weight
    vq_loss, _ = make_loss(disc_start=100, kind="vq").generator_loss(
        x, reconstruction.detach(), regularization, step=0
    )
    assert vq_loss.item() == pytest.approx((expected - 0.03 + 0.9).item(), rel=1e-6)


def test_generator_loss_after_disc_start_adds_the_weighted_gan_term():
    loss_module = make_loss(disc_start=10)
    decoder = TinyDecoder()
    x = smooth_images(2, channels=1, seed=9)
    reconstruction = decoder(torch.randn(2, 4, 32, 32))
    regularization = torch.tensor(2.0)
    loss, logs = loss_module.generator_loss(
        x, reconstruction, regularization, step=10, last_layer=decoder.out.weight
    )
    # recompute every term by hand
    rec_loss = (x - reconstruction).abs().mean() + 0.7 * loss_module.perceptual(
        x, reconstruction
    ).mean()
    gan_loss = -loss_module.discriminator(reconstruction).mean()
    lam = adaptive_weight(rec_loss, gan_loss, decoder.out.weight)
    expected = rec_loss + 0.01 * 2.0 + 0.5 * lam * gan_loss
    assert logs["adaptive_weight"] == pytest.approx(lam.item(), rel=1e-5) and lam > 0
    assert logs["gan"] == pytest.approx(gan_loss.item(), rel=1e-5) and logs["gan"] != 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert decoder.out.weight.grad is not None
    # the generator step leaves the discriminator's gradients alone
    assert all(p.grad is None for p in loss_module.discriminator.parameters())
    assert all(p.requires_grad for p in loss_module.discriminator.parameters())

    # without last_layer lambda = 1; without gradients (validation) lambda = 0
    _, logs_plain = loss_module.generator_loss(x, reconstruction.detach(), regularization, step=10)
    assert logs_plain["adaptive_weight"] == 1.0
    with torch.no_grad():
        _, logs_eval = loss_module.generator_loss(
            x, decoder(torch.randn(2, 4, 32, 32)), regularization, 10, decoder.out.weight
        )
    assert logs_eval["adaptive_weight"] == 0.0
    assert logs_eval["loss"] == pytest.approx(
        logs_eval["l1"] + 0.7 * logs_eval["perceptual"] + 0.02
    )


def test_disc_warmup_delays_the_generator_gan_term_but_not_the_discriminator():
    loss_module = make_loss(disc_start=10, disc_warmup=5, max_adaptive_weight=3.0)
    decoder = TinyDecoder()
    x = smooth_images(2, channels=1, seed=11)
    reconstruction = decoder(torch.randn(2, 4, 32, 32))
    # steps 10..14: D trains, the generator has no GAN term yet
    _, logs = loss_module.generator_loss(
        x, reconstruction, torch.tensor(0.0), 14, decoder.out.weight
    )
    assert logs["gan"] == 0.0 and logs["adaptive_weight"] == 0.0
    d_loss, d_logs = loss_module.discriminator_loss(x, reconstruction, step=10)
    assert d_loss.requires_grad and d_logs["disc_loss"] > 0
    # from step 15 on the GAN term is on, lambda clamped to max_adaptive_weight
    _, logs = loss_module.generator_loss(
        x, reconstruction, torch.tensor(0.0), 15, decoder.out.weight
    )
    assert logs["gan"] != 0.0 and 0.0 < logs["adaptive_weight"] <= 3.0
    with pytest.raises(ValueError, match="disc_warmup must be >= 0"):
        AutoencoderLossConfig(disc_warmup=-1)
    with pytest.raises(ValueError, match="max_adaptive_weight must be > 0"):
        AutoencoderLossConfig(max_adaptive_weight=0.0)


def test_discriminator_loss_is_a_connected_zero_before_start():
    loss_module = make_loss(disc_start=5)
    x = smooth_images(2, channels=1, seed=10)
    loss, logs = loss_module.discriminator_loss(x, noisy(x, 0.3), step=4)
    assert loss.item() == 0.0 and logs == {"disc_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
    loss.backward()
    grads = [p.grad for p in loss_module.discriminator.parameters()]
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_discriminator_loss_is_the_hinge_and_training_separates_the_logits():
    loss_module = make_loss(disc_start=0)
    discriminator = loss_module.discriminator
    real = smooth_images(4, channels=1, seed=11)
    fake = noisy(real, 0.5, seed=12).requires_grad_(True)
    loss, logs = loss_module.discriminator_loss(real, fake, step=0)
    # one batched pass equals separate passes (GroupNorm is per image)
    with torch.no_grad():
        separate = hinge_d_loss(discriminator(real), discriminator(fake))
    assert loss.item() == pytest.approx(separate.item(), rel=1e-5)
    assert set(logs) == {"disc_loss", "logits_real", "logits_fake"}
    loss.backward()
    assert fake.grad is None  # the reconstruction is detached

    optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
    first = logs["disc_loss"]
    for _ in range(25):
        optimizer.zero_grad()
        loss, logs = loss_module.discriminator_loss(real, fake, step=0)
        loss.backward()
        optimizer.step()
    assert logs["disc_loss"] < 0.5 * first
    assert logs["logits_real"] > logs["logits_fake"]


def test_config_validates_the_backbone_and_passes_allow_download(empty_hub, monkeypatch):
    with pytest.raises(ValueError, match="perceptual_backbone") as error:
        AutoencoderLossConfig(perceptual_backbone="vgg19")
    assert all(name in str(error.value) for name in ("auto", *BACKBONES))
    with pytest.raises(ValueError, match="allow_download must be true or false"):
        AutoencoderLossConfig.from_dict({"allow_download": 1})
    assert AutoencoderLossConfig().allow_download is False
    lpips_config = AutoencoderLossConfig(perceptual_backbone="lpips-vgg")
    with pytest.raises(PerceptualWeightsUnavailable, match="loss.allow_download=true"):
        AutoencoderLoss(lpips_config, in_channels=1)
    # allowed: the loss asks for the download (here it fails, offline)
    attempts = []

    def offline(url, dst, hash_prefix=None, progress=True):
        attempts.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    allowed = AutoencoderLossConfig(perceptual_backbone="lpips-vgg", allow_download=True)
    with pytest.raises(PerceptualWeightsUnavailable, match="could not download"):
        AutoencoderLoss(allowed, in_channels=1)
    assert attempts == ["https://download.pytorch.org/models/vgg16-397923af.pth"]


def test_config_round_trip_and_unknown_keys():
    config = AutoencoderLossConfig(perceptual_weight=0.5, disc_start=50_001, disc_layers=2)
    assert AutoencoderLossConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="disc_wieght") as error:
        AutoencoderLossConfig.from_dict(config.to_dict() | {"disc_wieght": 1.0})
    assert "disc_weight" in str(error.value)  # the valid keys are listed
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLossConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="kind"):
        AutoencoderLoss(config, in_channels=3, kind="vae")


def test_perceptual_term_can_be_switched_off():
    loss_module = make_loss(disc_start=10, perceptual_weight=0.0)
    assert loss_module.perceptual is None and loss_module.perceptual_backbone_name is None
    x = smooth_images(2, channels=1, seed=13)
    loss, logs = loss_module.generator_loss(x, noisy(x, 0.1), torch.tensor(0.0), step=0)
    assert logs["perceptual"] == 0.0 and loss.item() == pytest.approx(logs["l1"])
    assert make_loss(disc_start=0).perceptual_backbone_name == "efficientnet-lite0"


# ---------------------------------------------------------------- through the command line

TRAIN_LPIPS = ["train-autoencoder", "--preset", "tiny", "--quiet", "--set", "train.steps=1",
               "--set", "data.limit=8", "--set", "loss.perceptual_backbone=lpips-vgg"]  # fmt: skip


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("device:")]
    assert len(lines) == 1 and lines[0].startswith("ldm-mini: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_presets_list_allow_download_and_print_it(tmp_path, capsys):
    from ldm_mini.cli import main
    from ldm_mini.configs import PRESETS, load_preset

    for name in PRESETS:
        loss = load_preset("autoencoder", name)["loss"]
        assert loss["perceptual_backbone"] == "efficientnet-lite0" and not loss["allow_download"]
        assert AutoencoderLossConfig.from_dict(loss).allow_download is False
    argv = [*TRAIN_LPIPS, "--set", "loss.allow_download=true", "--print-config"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    loss = json.loads(capsys.readouterr().out)["loss"]
    assert loss["perceptual_backbone"] == "lpips-vgg" and loss["allow_download"] is True


def test_cli_lpips_without_weights_is_one_line_that_says_what_to_type(empty_hub, tmp_path, capsys):
    from ldm_mini.cli import main

    out = tmp_path / "run"
    assert main([*TRAIN_LPIPS, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "--set loss.allow_download=true" in err
    assert "--set loss.perceptual_backbone=efficientnet-lite0" in err
    assert not out.exists()
    assert main([*TRAIN_LPIPS, "--set", "loss.perceptual_backbone=vgg19", "--out", str(out)]) == 2
    assert "'efficientnet-lite0'" in one_line_error(capsys)


def test_cli_failed_download_is_one_line(empty_hub, tmp_path, monkeypatch, capsys):
    from ldm_mini.cli import main

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out = tmp_path / "run"
    argv = [*TRAIN_LPIPS, "--set", "loss.allow_download=true", "--out", str(out)]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "could not download https://download.pytorch.org/models/vgg16-397923af.pth" in err
    assert "Temporary failure in name resolution" in err and "efficientnet-lite0" in err
    assert not out.exists()
