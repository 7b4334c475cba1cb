"""The first-stage autoencoder: shapes, the KL and VQ maths, input checks, and that it learns."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldm_mini.autoencoder import (
    AutoencoderConfig,
    AutoencoderKL,
    AutoencoderVQ,
    DiagonalGaussianDistribution,
    Downsample,
    ResnetBlock,
    Upsample,
    VectorQuantizer,
    build_autoencoder,
    group_norm,
    latent_shape,
)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed, and run on one thread: these tensors are tiny, and with several threads a busy
    machine (other tests, other jobs) slows each op by 10-30x (OpenMP oversubscription)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> AutoencoderConfig:
    """A config small enough that a forward pass takes milliseconds."""
    values = dict(in_channels=1, base_channels=8, latent_channels=3, codebook_size=16)
    values.update(overrides)
    return AutoencoderConfig(**values)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_latent_and_reconstruction_shapes_for_every_f(kind: str, f: int) -> None:
    config = tiny(kind=kind, f=f, in_channels=3)
    model = build_autoencoder(config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = (2, *latent_shape(config, 32))
    assert expected == (2, 3, 32 // f, 32 // f)
    with torch.no_grad():
        assert model.encode_latent(x).shape == expected
        out = model(x)
        assert out.latent.shape == expected
        assert out.reconstruction.shape == x.shape
        assert out.regularization.dim() == 0
        assert model.decode_latent(model.encode_latent(x)).shape == x.shape
    # log2(f) stride-2 convs in the encoder, as many upsamplers in the decoder.
    assert sum(isinstance(m, Downsample) for m in model.encoder.modules()) == int(math.log2(f))
    assert sum(isinstance(m, Upsample) for m in model.decoder.modules()) == int(math.log2(f))
    assert config.num_levels == int(math.log2(f)) + 1
    assert config.resolved_channel_mult == (1, 2, 2, 4)[: config.num_levels]


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_non_square_images(kind: str) -> None:
    model = build_autoencoder(tiny(kind=kind, f=4))
    x = torch.rand(2, 1, 32, 64) * 2 - 1
    with torch.no_grad():
        out = model(x)
    assert out.latent.shape == (2, 3, 8, 16)
    assert out.reconstruction.shape == (2, 1, 32, 64)


def test_group_norm_picks_largest_dividing_group_count() -> None:
    assert group_norm(64).num_groups == 32
    assert group_norm(48).num_groups == 16
    assert group_norm(12).num_groups == 4
    assert group_norm(7).num_groups == 1


def test_resnet_block_skip_matches_channels() -> None:
    block = ResnetBlock(8, 16)
    assert block(torch.randn(2, 8, 4, 4)).shape == (2, 16, 4, 4)
    same = ResnetBlock(8, 8)
    assert isinstance(same.skip, torch.nn.Identity)


# ---------------------------------------------------------------------------- KL


def random_moments(batch: int = 3, channels: int = 4, size: int = 5) -> torch.Tensor:
    return torch.randn(batch, 2 * channels, size, size)


def test_kl_matches_torch_distributions() -> None:
    moments = random_moments()
    posterior = DiagonalGaussianDistribution(moments)
    reference = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0))
    assert posterior.kl().shape == (3,)
    torch.testing.assert_close(posterior.kl(), reference.sum(dim=(1, 2, 3)))
    # The standard normal itself has zero KL.
    assert torch.allclose(
        DiagonalGaussianDistribution(torch.zeros(2, 6, 3, 3)).kl(), torch.zeros(2)
    )


def test_mode_is_mean_and_logvar_is_clamped() -> None:
    moments = random_moments()
    moments[:, 4:, 0, 0] = 100.0
    moments[:, 4:, 0, 1] = -100.0
    posterior = DiagonalGaussianDistribution(moments)
    assert torch.equal(posterior.mode(), moments[:, :4])
    assert torch.equal(posterior.mean, moments[:, :4])
    assert torch.all(posterior.logvar[:, :, 0, 0] == 20.0)
    assert torch.all(posterior.logvar[:, :, 0, 1] == -30.0)
    assert torch.isfinite(posterior.var).all() and torch.isfinite(posterior.kl()).all()
    torch.testing.assert_close(posterior.std**2, posterior.var)


def test_sample_is_reproducible_and_has_the_right_statistics() -> None:
    mean = torch.randn(4, 2, 64, 64)
    logvar = torch.rand(4, 2, 64, 64) * 4 - 2
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    first = posterior.sample(torch.Generator().manual_seed(7))
    again = posterior.sample(torch.Generator().manual_seed(7))
    other = posterior.sample(torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # (z - mu) / sigma should be standard normal over the 32768 elements.
    eps = (first - mean) / torch.exp(0.5 * logvar)
    assert abs(eps.mean().item()) < 0.03
    assert abs(eps.std().item() - 1.0) < 0.03


def test_sample_is_differentiable_in_mean_and_logvar() -> None:
    moments = random_moments().requires_grad_(True)
    DiagonalGaussianDistribution(moments).sample().sum().backward()
    assert moments.grad is not None
    assert torch.all(moments.grad[:, :4] == 1.0)  # d(mu + sigma eps)/d mu = 1
    assert moments.grad[:, 4:].abs().sum() > 0


def test_kl_autoencoder_forward_regularization_and_determinism() -> None:
    model = build_autoencoder(tiny(kind="kl")).eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = model.encode(x)
        out = model(x, sample_posterior=False)
        torch.testing.assert_close(out.latent, posterior.mean)
        torch.testing.assert_close(out.regularization, posterior.kl().mean())
        torch.testing.assert_close(out.stats["kl"], posterior.kl().mean())
        torch.testing.assert_close(model.encode_latent(x), posterior.mean)
        a = model(x, generator=torch.Generator().manual_seed(3))
        b = model(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.latent, b.latent)
    assert not torch.equal(a.latent, out.latent)


# ---------------------------------------------------------------------------- VQ


def quantizer_with_codes(num_codes: int = 10, dim: int = 4) -> VectorQuantizer:
    quantizer = VectorQuantizer(num_codes, dim, beta=0.25)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.randn(num_codes, dim))
    return quantizer


def test_codebook_init_is_uniform_in_one_over_k() -> None:
    weight = VectorQuantizer(64, 3).embedding.weight
    assert weight.abs().max() <= 1 / 64
    assert weight.std() > 0


def test_nearest_code_matches_brute_force_cdist() -> None:
    quantizer = quantizer_with_codes()
    z = torch.randn(3, 4, 5, 6)
    z_q, _, indices = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, quantizer.embedding.weight).argmin(dim=1).reshape(3, 5, 6)
    assert indices.dtype == torch.long and indices.shape == (3, 5, 6)
    assert torch.equal(indices, brute)
    torch.testing.assert_close(z_q, quantizer.lookup(indices))
    torch.testing.assert_close(
        quantizer.lookup(indices)[1, :, 2, 3], quantizer.embedding.weight[indices[1, 2, 3]]
    )


def test_straight_through_gradient_is_identity_and_codes_learn_only_from_codebook_loss() -> None:
    quantizer = quantizer_with_codes()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    z_q, losses, _ = quantizer(z)
    (z_q * w).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, w)
    assert quantizer.embedding.weight.grad is None  # no gradient through the straight-through

    losses["commitment_loss"].backward(retain_graph=True)
    assert quantizer.embedding.weight.grad is None  # commitment moves the encoder only

    z.grad = None
    losses["codebook_loss"].backward()
    assert z.grad is None  # codebook loss moves the codes only
    assert quantizer.embedding.weight.grad.abs().sum() > 0


def test_commitment_and_codebook_loss_values() -> None:
    quantizer = quantizer_with_codes()
    z = torch.randn(2, 4, 3, 3)
    _, losses, indices = quantizer(z)
    codes = quantizer.embedding.weight.detach()
    squared = [
        ((z[b, :, i, j] - codes[indices[b, i, j]]) ** 2).sum().item()
        for b in range(2)
        for i in range(3)
        for j in range(3)
    ]
    by_hand = sum(squared) / z.numel()  # mean over all B * dim * h * w elements
    assert losses["commitment_loss"].item() == pytest.approx(by_hand, rel=1e-5)
    assert losses["codebook_loss"].item() == pytest.approx(by_hand, rel=1e-5)


def test_perplexity_of_uniform_and_single_code() -> None:
    assert VectorQuantizer.perplexity(torch.arange(5).repeat(4), 16).item() == pytest.approx(5.0)
    assert VectorQuantizer.perplexity(torch.full((3, 4, 4), 7), 16).item() == pytest.approx(1.0)
    two_to_one = torch.tensor([0, 0, 1])  # p = (2/3, 1/3)
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert VectorQuantizer.perplexity(two_to_one, 4).item() == pytest.approx(math.exp(entropy))


def test_usage_count_accumulates_in_training_mode_only() -> None:
    quantizer = quantizer_with_codes()
    z = torch.randn(2, 4, 3, 3)
    _, _, indices = quantizer.train()(z)
    quantizer(z)
    expected = 2 * torch.bincount(indices.flatten(), minlength=10).float()
    assert torch.equal(quantizer.usage_count, expected)
    quantizer.eval()(z)
    assert torch.equal(quantizer.usage_count, expected)


def test_reseed_replaces_exactly_the_dead_codes_with_encoder_outputs() -> None:
    quantizer = quantizer_with_codes(num_codes=8)
    quantizer.usage_count.copy_(torch.tensor([5.0, 0.0, 2.0, 0.0, 0.5, 9.0, 1.0, 0.0]))
    dead = torch.tensor([1, 3, 4, 7])
    alive = torch.tensor([0, 2, 5, 6])
    before = quantizer.embedding.weight.detach().clone()
    z = torch.randn(2, 4, 3, 3) * 3 + 10  # far from the old codes
    twin = quantizer_with_codes(num_codes=8)
    twin.load_state_dict(quantizer.state_dict())

    assert quantizer.reseed_dead_codes(z, generator=torch.Generator().manual_seed(1)) == 4
    after = quantizer.embedding.weight.detach()
    assert torch.equal(after[alive], before[alive])
    assert not torch.isclose(after[dead], before[dead]).any()
    # Each new code sits (up to tiny noise) on a distinct vector of z.
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    distance, source = torch.cdist(after[dead], flat).min(dim=1)
    assert distance.max() < 0.05
    assert len(set(source.tolist())) == 4
    assert torch.equal(quantizer.usage_count, torch.zeros(8))
    # Same generator, same result.
    twin.reseed_dead_codes(z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(twin.embedding.weight, quantizer.embedding.weight)
    # Nothing dead (everything used at least min_count times) -> nothing changes.
    quantizer.usage_count.fill_(3.0)
    assert quantizer.reseed_dead_codes(z, min_count=2.0) == 0


def test_vq_autoencoder_output_and_latent_interface() -> None:
    config = tiny(kind="vq", beta=0.5)
    model = build_autoencoder(config)
    assert isinstance(model, AutoencoderVQ)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    out = model(x)
    z = model.encode(x)
    z_q, losses, indices = model.quantize(z)
    torch.testing.assert_close(
        out.regularization, losses["codebook_loss"] + 0.5 * losses["commitment_loss"]
    )
    assert set(out.stats) == {"codebook_loss", "commitment_loss", "perplexity", "codebook_usage"}
    used = indices.unique().numel()
    assert out.stats["codebook_usage"].item() == pytest.approx(used / 16)
    assert 1.0 <= out.stats["perplexity"].item() <= used + 1e-4
    torch.testing.assert_close(out.latent, z_q)
    # Diffusion runs on the pre-quantisation latent; decode_latent quantises it first,
    # so a nudge smaller than the distance to another code decodes to the same image.
    with torch.no_grad():
        latent = model.encode_latent(x)
        torch.testing.assert_close(latent, z)
        torch.testing.assert_close(model.decode_latent(latent), model.decode(z_q))
        torch.testing.assert_close(model.decode_latent(latent + 1e-7), model.decode(z_q))
        torch.testing.assert_close(model.decode_indices(indices), model.decode(z_q))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_size_not_divisible_by_f_is_refused(kind: str) -> None:
    model = build_autoencoder(tiny(kind=kind, f=4))
    with pytest.raises(ValueError, match=r"f=4.*28x28 Fashion-MNIST to 32x32"):
        model(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="f=4"):
        model.encode(torch.zeros(1, 1, 32, 30))
    with pytest.raises(ValueError, match="f=4"):
        latent_shape(model.config, 30)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_wrong_channels_and_rank_are_refused(kind: str) -> None:
    model = build_autoencoder(tiny(kind=kind))
    with pytest.raises(ValueError, match=r"expected 1-channel images \(B, 1, H, W\).*channels=1"):
        model(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="latent_channels=3"):
        model.decode(torch.zeros(2, 4, 4, 4))


def test_unknown_config_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"\['latent_dim'\].*latent_channels.*codebook_size"):
        AutoencoderConfig.from_dict({"kind": "kl", "latent_dim": 4})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"f": 3}, r"f \(the downsampling factor\) must be one of \(1, 2, 4, 8\)"),
        ({"kind": "vae"}, "kind must be one of"),
        ({"in_channels": 2}, "in_channels must be 1"),
        ({"latent_channels": 0}, "latent_channels must be a positive int"),
        ({"base_channels": 8.0}, "base_channels must be a positive int"),
        ({"dropout": 1.5}, "dropout"),
        ({"f": 4, "channel_mult": [1, 2]}, r"f=4 needs log2\(f\) \+ 1 = 3"),
        ({"f": 2, "channel_mult": [1, 0]}, "positive ints"),
    ],
)
def test_invalid_config_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig.from_dict(values)
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def test_model_class_must_match_kind() -> None:
    with pytest.raises(ValueError, match="kind='kl'"):
        AutoencoderKL(tiny(kind="vq"))
    with pytest.raises(ValueError, match="kind='vq'"):
        AutoencoderVQ(tiny(kind="kl"))


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "config",
    [
        AutoencoderConfig(),
        AutoencoderConfig(kind="vq", in_channels=1, f=8, channel_mult=(1, 1, 2, 2), beta=0.5),
    ],
)
def test_config_json_round_trip(config: AutoencoderConfig) -> None:
    restored = AutoencoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    model = build_autoencoder(config.to_dict())
    assert model.config == config


# ---------------------------------------------------------------------------- learning


def smooth_images(count: int = 4, size: int = 16) -> torch.Tensor:
    """Products of low-frequency sines, in [-0.9, 0.9], shape (count, 1, size, size)."""
    generator = torch.Generator().manual_seed(1)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    freq = torch.rand(count, 2, 1, 1, generator=generator) * 2 + 0.5
    phase = torch.rand(count, 2, 1, 1, generator=generator) * 2 * math.pi
    waves = torch.sin(freq[:, 0] * math.pi * xx + phase[:, 0]) * torch.cos(
        freq[:, 1] * math.pi * yy + phase[:, 1]
    )
    return 0.9 * waves.unsqueeze(1)


def test_tiny_kl_autoencoder_overfits_one_batch() -> None:
    x = smooth_images()
    model = build_autoencoder(
        AutoencoderConfig(
            in_channels=1, f=2, base_channels=8, channel_mult=(1, 1), latent_channels=2
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, foreach=True)
    generator = torch.Generator().manual_seed(0)
    for step in range(150):
        out = model(x, generator=generator)
        l1 = (out.reconstruction - x).abs().mean()
        if step == 0:
            initial = l1.item()
        optimizer.zero_grad()
        (l1 + 1e-6 * out.regularization).backward()
        optimizer.step()
    with torch.no_grad():
        final = (model(x, sample_posterior=False).reconstruction - x).abs().mean().item()
    # Measured: initial L1 ~0.42, final ~0.02-0.03 (about 6% of the start); ~5 s on 2 CPU cores.
    assert final < 0.2 * initial, (initial, final)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_last_layer_is_decoder_conv_out_and_gets_gradient(kind: str) -> None:
    model = build_autoencoder(tiny(kind=kind))
    assert model.last_layer is model.decoder.conv_out.weight
    assert isinstance(model.last_layer, torch.nn.Parameter)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = model(x)
    (out.reconstruction - x).abs().mean().backward()
    assert model.last_layer.grad is not None and model.last_layer.grad.abs().sum() > 0
    grad = torch.autograd.grad(
        (model(x).reconstruction - x).abs().mean(), model.last_layer, retain_graph=False
    )[0]
    assert grad.shape == model.last_layer.shape
