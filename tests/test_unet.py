"""The denoising U-Net (ldm_mini.unet): shapes, zero init, conditioning, gradients, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_mini.configs import available_presets
from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.samplers import ddim_sample
from ldm_mini.toy import sinusoidal_embedding
from ldm_mini.unet import ResBlock, UNet, UNetConfig, timestep_embedding, unet_preset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    in_channels=2,
    out_channels=2,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_levels=(1,),
    heads=2,
)


def tiny(**overrides) -> UNetConfig:
    return UNetConfig(**{**TINY, **overrides})


def perturbed(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net whose parameters (zero-initialised ones included) are all non-zero."""
    torch.manual_seed(seed)
    model = UNet(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def inputs(config: UNetConfig, batch: int = 2, size: tuple[int, int] = (8, 8), seed: int = 1):
    """(x, t, kwargs) matching the config's conditioning."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *size, generator=generator)
    t = torch.tensor([3, 700][:batch] + [5] * max(0, batch - 2))
    kwargs = {}
    if config.context_dim is not None:
        kwargs["context"] = torch.randn(batch, 3, config.context_dim, generator=generator)
    if config.num_classes is not None:
        kwargs["class_labels"] = torch.arange(batch) % config.num_classes
    if config.concat_channels:
        kwargs["concat"] = torch.randn(batch, config.concat_channels, *size, generator=generator)
    return x, t, kwargs


# --------------------------------------------------------------------------------------
# Timestep embedding and ResBlock
# --------------------------------------------------------------------------------------


def test_timestep_embedding_closed_form_and_matches_toy():
    t = torch.tensor([0, 1, 250])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    # t = 0: cos = 1, sin = 0
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # w_i = 10000^(-i / 4): at t = 1, entry i is cos(w_i), entry 4 + i is sin(w_i)
    for i in range(4):
        frequency = 10000 ** (-i / 4)
        assert emb[1, i].item() == pytest.approx(math.cos(frequency), abs=1e-6)
        assert emb[1, 4 + i].item() == pytest.approx(math.sin(frequency), abs=1e-6)
    assert torch.equal(emb, sinusoidal_embedding(t, 8))
    # fractional timesteps work too
    assert timestep_embedding(torch.tensor([0.5]), 8).shape == (1, 8)


def test_timestep_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.tensor([[1]]), 8)
    with pytest.raises(ValueError, match="dtype"):
        timestep_embedding(torch.tensor([True]), 8)


def test_resblock_is_skip_at_init_and_film_uses_time():
    torch.manual_seed(0)
    block = ResBlock(4, 8, time_dim=16)
    x = torch.randn(2, 4, 6, 6)
    emb = torch.randn(2, 16)
    assert block(x, emb).shape == (2, 8, 6, 6)
    # norm1 2*4 + conv1 (4*8*9 + 8) + time_proj (16*16 + 16) + norm2 2*8 + conv2 (8*8*9 + 8)
    # + 1x1 skip (4*8 + 8)
    assert sum(p.numel() for p in block.parameters()) == 8 + 296 + 272 + 16 + 584 + 40
    # zero-initialised conv2: a fresh block is its 1x1 skip
    assert torch.allclose(block(x, emb), block.skip(x))
    same = ResBlock(4, 4, time_dim=16)
    assert torch.equal(same(x, emb), x)
    with torch.no_grad():
        block.conv2.weight.normal_()
    other = torch.randn(2, 16)
    assert not torch.allclose(block(x, emb), block(x, other))


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def test_config_round_trip_and_unknown_keys():
    config = tiny(context_dim=6, num_classes=3, concat_channels=1, head_dim=4)
    d = config.to_dict()
    assert d["channel_mult"] == [1, 2] and d["attention_levels"] == [1]
    assert UNetConfig.from_dict(d) == config
    with pytest.raises(ValueError, match=r"unknown UNetConfig key\(s\) \['attn'\]"):
        UNetConfig.from_dict({**d, "attn": True})
    with pytest.raises(ValueError, match="needs"):
        UNetConfig.from_dict({"base_channels": 8})


def test_config_heads_head_dim_wins():
    config = tiny(heads=2, head_dim=4)
    assert config.heads_for(16) == (4, 4)
    assert tiny(heads=2).heads_for(16) == (2, 8)
    assert tiny().downsampling_factor == 2
    assert UNetConfig(1, 1).downsampling_factor == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_levels": (2,)}, r"attention_levels must be .* \[0, 2\)"),
        ({"attention_levels": (1, 1)}, "repeated"),
        ({"heads": 3}, "heads=3 does not divide 16"),
        ({"head_dim": 5}, "head_dim=5 does not divide"),
        ({"heads": None, "head_dim": None}, "set heads or head_dim"),
        ({"channel_mult": ()}, "channel_mult must be a non-empty tuple"),
        ({"base_channels": 0}, "base_channels must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\)"),
        ({"context_dim": 0}, "context_dim must be None or a positive int"),
        ({"num_classes": True}, "num_classes must be None or a positive int"),
        ({"concat_channels": -1}, "concat_channels must be an int >= 0"),
        ({"transformer_depth": 0}, "transformer_depth must be a positive int"),
        ({"transformer_feed_forward": 1}, "transformer_feed_forward must be true or false"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


# --------------------------------------------------------------------------------------
# Shapes, zero init, structure
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_levels": ()},
        {},
        {"context_dim": 6},
        {"num_classes": 3},
        {"concat_channels": 3, "out_channels": 4},
        {"channel_mult": (1, 1, 2), "attention_levels": (0, 2), "head_dim": 4},
        {"context_dim": 5, "num_classes": 2, "concat_channels": 1, "transformer_depth": 2},
        {"context_dim": 5, "transformer_feed_forward": False},
    ],
)
@pytest.mark.parametrize("size", [(8, 8), (16, 8)])
def test_output_shape_and_fresh_unet_outputs_zeros(overrides, size):
    config = tiny(**overrides)
    model = UNet(config).eval()
    x, t, kwargs = inputs(config, size=size)
    with torch.no_grad():
        out = model(x, t, **kwargs)
    assert out.shape == (2, config.out_channels, *size)
    # conv_out is zero-initialised: a fresh U-Net predicts 0 everywhere
    assert torch.equal(out, torch.zeros_like(out))
    with torch.no_grad():
        assert perturbed(config)(x, t, **kwargs).shape == out.shape


@pytest.mark.parametrize(("mult", "size"), [((1, 2), (7, 8)), ((1, 2, 2), (8, 10))])
def test_size_not_divisible_is_rejected(mult, size):
    config = tiny(channel_mult=mult, attention_levels=())
    x = torch.randn(1, 2, *size)
    factor = 2 ** (len(mult) - 1)
    with pytest.raises(ValueError, match=f"not divisible by {factor}"):
        UNet(config)(x, torch.tensor([1]))


def test_skip_connections_count_and_channels():
    config = tiny(channel_mult=(1, 2, 3), num_res_blocks=2, attention_levels=())
    model = UNet(config)
    levels, blocks = 3, 2
    # conv_in + every down ResBlock + every Downsample
    assert len(model.skip_channels) == 1 + levels * blocks + (levels - 1)
    # the up path has num_res_blocks + 1 blocks per level, one skip each
    assert len(model.up) == levels * (blocks + 1) == len(model.skip_channels)
    channels = config.base_channels * config.channel_mult[-1]
    for block, skip in zip(model.up, reversed(model.skip_channels), strict=True):
        assert block.res.in_channels == channels + skip
        channels = block.res.out_channels


def test_attention_placement():
    model = UNet(tiny(channel_mult=(1, 2, 2), attention_levels=(0, 2)))
    down = [b.transformer is not None for b in model.down if hasattr(b, "transformer")]
    assert down == [True, False, True]
    up = [b.transformer is not None for b in model.up]
    assert up == [True, True, False, False, True, True]
    assert model.mid[0].transformer is not None


def test_parameter_count_is_pinned():
    model = UNet(tiny(context_dim=6, num_classes=3, concat_channels=1))
    assert sum(p.numel() for p in model.parameters()) == PINNED_PARAMETERS


PINNED_PARAMETERS = 66858


def test_presets_are_the_shipped_four():
    assert available_presets("unet") == ["colab-t4", "cpu", "gpu", "tiny"]


@pytest.mark.parametrize("name", ["tiny", "cpu", "colab-t4", "gpu"])
def test_every_preset_keeps_the_input_shape(name):
    # pixels (3 channels) and latents (c = 8; class labels, context, concat as later stages)
    for in_channels, extra in [(3, {}), (8, {"num_classes": 10, "context_dim": 16})]:
        config = unet_preset(name, in_channels, **extra)
        assert (config.in_channels, config.out_channels) == (in_channels, in_channels)
        torch.manual_seed(0)
        model = UNet(config).eval()
        with torch.no_grad():
            for parameter in model.conv_out.parameters():
                parameter.normal_()  # a fresh U-Net outputs zeros; make it say something
        factor = config.downsampling_factor
        # the smallest input leaves 2x2 at the bottom (GroupNorm needs more than one value)
        for size in [(2 * factor, 2 * factor), (2 * factor, 3 * factor), (8, 8), (32, 32)]:
            if size[0] % factor or size[1] % factor:
                continue
            x, t, kwargs = inputs(config, batch=1, size=size)
            with torch.no_grad():
                out = model(x, t, **kwargs)
            assert out.shape == x.shape, (name, in_channels, size)
            assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_preset_overrides_and_errors():
    config = unet_preset("tiny", 4, out_channels=2, concat_channels=3, dropout=0.1)
    assert (config.in_channels, config.out_channels, config.concat_channels) == (4, 2, 3)
    assert config.dropout == 0.1
    with pytest.raises(ValueError, match="unknown preset 'huge' for unet"):
        unet_preset("huge", 3)
    with pytest.raises(ValueError, match=r"unknown UNetConfig key\(s\) \['width'\]"):
        unet_preset("tiny", 3, width=8)


# --------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------


def test_time_conditioning_matters():
    config = tiny()
    model = perturbed(config)
    x, _, _ = inputs(config)
    with torch.no_grad():
        early = model(x, torch.tensor([1, 1]))
        late = model(x, torch.tensor([900, 900]))
        again = model(x, 900)  # an int broadcasts to the batch
    assert (early - late).abs().max() > 1e-3
    assert torch.equal(late, again)


def test_time_conditioning_after_two_optimizer_steps():
    torch.manual_seed(0)
    config = tiny()
    model = UNet(config)
    x, t, _ = inputs(config)
    early, late = torch.tensor([1, 1]), torch.tensor([900, 900])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randn_like(x)
    differences = []
    for _ in range(2):
        optimizer.zero_grad()
        (model(x, t) - target).pow(2).mean().backward()
        optimizer.step()
        with torch.no_grad():
            differences.append((model(x, early) - model(x, late)).abs().max().item())
    # step 1 moves only the zero-initialised conv_out (every other gradient passes through
    # its zero weight), so the output ignores t; step 2 moves the ResBlocks' zero-initialised
    # conv2, through which the time embedding enters
    assert differences[0] == 0.0
    assert differences[1] > 0.0


def test_context_changes_output_only_with_cross_attention():
    config = tiny(context_dim=6)
    model = perturbed(config)
    x, t, kwargs = inputs(config)
    other = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(x, t, **kwargs)
        assert (out - model(x, t, context=other)).abs().max() > 1e-4
        # key_padding_mask: True = real token. Hiding the last token changes the output;
        # keeping every token is the same as no mask
        mask = torch.tensor([[True, True, False]] * 2)
        masked = model(x, t, context=kwargs["context"], key_padding_mask=mask)
        assert (out - masked).abs().max() > 1e-4
        all_real = torch.ones(2, 3, dtype=torch.bool)
        same = model(x, t, context=kwargs["context"], key_padding_mask=all_real)
        assert torch.allclose(out, same, atol=1e-5)
    # without context_dim there is no cross-attention: a context is refused, not ignored
    plain = perturbed(tiny())
    with pytest.raises(ValueError, match="no cross-attention"):
        plain(x, t, context=other)


def test_class_labels_change_output():
    config = tiny(num_classes=3)
    model = perturbed(config)
    x, t, _ = inputs(config)
    with torch.no_grad():
        zero = model(x, t, class_labels=torch.tensor([0, 0]))
        one = model(x, t, class_labels=torch.tensor([1, 1]))
        null = model(x, t, class_labels=torch.tensor([3, 3]))  # the null label
    assert (zero - one).abs().max() > 1e-3
    assert (zero - null).abs().max() > 1e-3


def test_concat_changes_output():
    config = tiny(concat_channels=1)
    model = perturbed(config)
    x, t, kwargs = inputs(config)
    with torch.no_grad():
        out = model(x, t, **kwargs)
        assert (out - model(x, t, concat=torch.zeros_like(kwargs["concat"]))).abs().max() > 1e-3


def test_gradients_reach_every_parameter():
    config = tiny(context_dim=6, num_classes=3, concat_channels=1)
    model = perturbed(config).train()
    x, t, kwargs = inputs(config)
    model(x, t, **kwargs).pow(2).mean().backward()
    missing = [
        name
        for name, parameter in model.named_parameters()
        if parameter.grad is None or parameter.grad.abs().sum() == 0
    ]
    assert missing == []


def test_fits_the_sampler_protocol():
    config = tiny(num_classes=3)
    model = perturbed(config)
    schedule = NoiseSchedule.from_name("linear", num_timesteps=50)
    out = ddim_sample(
        model,
        schedule,
        (2, 2, 8, 8),
        num_steps=3,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        model_kwargs={"class_labels": torch.tensor([0, 2])},
    )
    assert out.sample.shape == (2, 2, 8, 8)
    assert torch.isfinite(out.sample).all()


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_inputs_are_rejected():
    config = tiny(context_dim=6, num_classes=3, concat_channels=1)
    model = UNet(config)
    x, t, kwargs = inputs(config)
    context, labels, concat = kwargs["context"], kwargs["class_labels"], kwargs["concat"]
    cases = [
        (dict(x=x[:, :1], t=t, **kwargs), r"x_t must be a batch \(B, 2, H, W\)"),
        (dict(x=x, t=t[:1], **kwargs), r"t must be an int or a tensor \(B,\) = \(2,\)"),
        (dict(x=x, t=t > 0, **kwargs), "integer timesteps"),
        (dict(x=x, t=t, class_labels=labels, concat=concat), "pass context"),
        (
            dict(x=x, t=t, context=context[..., :4], class_labels=labels, concat=concat),
            "context_dim=6",
        ),
        (
            dict(x=x, t=t, context=context[0], class_labels=labels, concat=concat),
            r"\(B, M, context_dim\)",
        ),
        (
            dict(x=x, t=t, **kwargs, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
            "key_padding_mask must be a bool tensor",
        ),
        (dict(x=x, t=t, context=context, concat=concat), "pass class_labels"),
        (dict(x=x, t=t, context=context, class_labels=labels + 3, concat=concat), r"\[0, 3\]"),
        (
            dict(x=x, t=t, context=context, class_labels=labels.float(), concat=concat),
            "integer tensor",
        ),
        (dict(x=x, t=t, context=context, class_labels=labels), "pass concat"),
        (
            dict(x=x, t=t, context=context, class_labels=labels, concat=concat[..., :4]),
            "concat must have shape",
        ),
        (dict(x=x, t=t, **kwargs, mask=concat), r"unknown U-Net input\(s\) \['mask'\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**call)
    plain = UNet(tiny())
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, t, class_labels=labels)
    with pytest.raises(ValueError, match="no concatenated input"):
        plain(x, t, concat=concat)
    with pytest.raises(ValueError, match="needs a UNetConfig"):
        UNet(TINY)


def test_an_empty_or_fully_masked_context_is_rejected():
    config = UNetConfig(
        in_channels=2, out_channels=2, base_channels=8, channel_mult=(1, 2),
        num_res_blocks=1, attention_levels=(1,), heads=2, context_dim=6,
    )  # fmt: skip
    model = UNet(config)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([0, 5])
    context = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"hides every token of sample\(s\) \[1\]"):
        model(x, t, context=context, key_padding_mask=mask)
    with pytest.raises(ValueError, match=r"context has no tokens \(M = 0\)"):
        model(x, t, context=torch.randn(2, 0, 6))
    mask[1, 2] = True
    assert model(x, t, context=context, key_padding_mask=mask).shape == (2, 2, 8, 8)


def test_coordinate_channels_tell_each_position_where_it_is():
    from ldm_mini.unet import coordinate_grid

    grid = coordinate_grid(torch.zeros(2, 3, 4, 8))
    assert grid.shape == (2, 2, 4, 8)
    # channel 0 is x (left -1 to right 1), channel 1 is y (top -1 to bottom 1)
    assert torch.allclose(grid[0, 0, 0], torch.linspace(-1, 1, 8))
    assert torch.allclose(grid[0, 1, :, 0], torch.linspace(-1, 1, 4))
    torch.manual_seed(0)
    config = dict(in_channels=2, out_channels=2, base_channels=16, channel_mult=(1,),
                  attention_levels=(), num_res_blocks=1)  # fmt: skip
    plain = UNet(UNetConfig(**config))
    placed = UNet(UNetConfig(**config, coordinate_channels=True))
    assert placed.conv_in.in_channels == plain.conv_in.in_channels + 2
    for model in (plain, placed):  # outputs are zero at init: make them depend on the input
        torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    # a constant input: a convolution sees the same thing everywhere except at the border;
    # with coordinates the interior positions differ too
    x = torch.ones(1, 2, 16, 16)
    interior = slice(4, 12)
    plain_out = plain(x, torch.tensor([10]))[0, :, interior, interior]
    placed_out = placed(x, torch.tensor([10]))[0, :, interior, interior]
    assert plain_out.std(dim=(1, 2)).max() < 1e-5
    assert placed_out.std(dim=(1, 2)).min() > 1e-4
    assert UNetConfig.from_dict({**config, "coordinate_channels": True}).coordinate_channels
    with pytest.raises(ValueError, match="coordinate_channels must be true or false"):
        UNetConfig(**config, coordinate_channels="yes")


def test_attention_positions_tell_every_attention_layer_where_each_query_is():
    from ldm_mini.attention import SpatialTransformer, position_features

    features = position_features(4, 8, 32)
    assert features.shape == (32, 32)
    # row by row: position 1 is one column right of position 0, position 8 one row down
    assert torch.allclose(features[1, 0], torch.sin(torch.tensor(1.5 / 8 * torch.pi)))
    assert torch.allclose(features[8, 8], torch.sin(torch.tensor(1.5 / 4 * torch.pi)))
    torch.manual_seed(0)
    block = SpatialTransformer(16, 2, 8, positions=True)
    x = torch.randn(2, 16, 4, 4)
    plain = SpatialTransformer(16, 2, 8)
    plain.load_state_dict({k: v for k, v in block.state_dict().items()
                           if not k.startswith("position_projection")})  # fmt: skip
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    torch.nn.init.normal_(plain.proj_out.weight, std=0.1)
    plain.proj_out.load_state_dict(block.proj_out.state_dict())
    # zero at initialisation: the same block as without positions
    assert torch.allclose(block(x), plain(x), atol=1e-6)
    torch.nn.init.normal_(block.position_projection.weight, std=0.5)
    assert not torch.allclose(block(x), plain(x), atol=1e-3)
    config = dict(in_channels=2, out_channels=2, base_channels=16, channel_mult=(1, 2),
                  attention_levels=(1,), num_res_blocks=1)  # fmt: skip
    model = UNet(UNetConfig(**config, attention_positions=True))
    assert all(m.position_projection is not None
               for m in model.modules() if isinstance(m, SpatialTransformer))  # fmt: skip
    assert "attention_positions" not in UNetConfig(**config).to_dict()
    placed = UNetConfig(**config, attention_positions=True)
    assert UNetConfig.from_dict(placed.to_dict()).attention_positions
    with pytest.raises(ValueError, match="attention_positions must be true or false"):
        UNetConfig(**config, attention_positions=1)
