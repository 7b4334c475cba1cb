"""Attention: fast path vs hand-written softmax, padding masks, recorder, transformer blocks."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from ldm_mini.attention import (
    Attention,
    AttentionRecorder,
    FeedForward,
    SpatialTransformer,
    TransformerBlock,
)

pytestmark = pytest.mark.usefixtures("one_thread")

QUERY_DIM, CONTEXT_DIM, HEADS, HEAD_DIM = 12, 7, 3, 4


def reference_attention(
    layer: Attention, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V written out with the layer's weights, one head at a time."""
    queries = x @ layer.to_q.weight.T
    keys = context @ layer.to_k.weight.T
    values = context @ layer.to_v.weight.T
    heads_out = []
    for head in range(layer.heads):
        part = slice(head * layer.head_dim, (head + 1) * layer.head_dim)
        logits = queries[..., part] @ keys[..., part].transpose(1, 2) / math.sqrt(layer.head_dim)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        heads_out.append(torch.softmax(logits, dim=-1) @ values[..., part])
    return torch.cat(heads_out, dim=-1) @ layer.to_out.weight.T + layer.to_out.bias


def make_cross_inputs(seed: int = 0) -> tuple[Attention, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layer = Attention(QUERY_DIM, CONTEXT_DIM, heads=HEADS, head_dim=HEAD_DIM).eval()
    return layer, torch.randn(2, 5, QUERY_DIM), torch.randn(2, 6, CONTEXT_DIM)


PADDING_MASK = torch.tensor(
    [[True, True, True, False, False, False], [True, False, True, True, True, False]]
)


@pytest.mark.parametrize("use_mask", [False, True])
def test_fast_and_recording_paths_equal_hand_written_attention(use_mask: bool) -> None:
    layer, x, context = make_cross_inputs()
    mask = PADDING_MASK if use_mask else None
    expected = reference_attention(layer, x, context, mask)
    fast = layer(x, context, mask)
    assert layer.last_attention is None
    layer.record = True
    recorded = layer(x, context, mask)
    assert fast.shape == (2, 5, QUERY_DIM)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5)
    assert layer.last_attention is not None
    assert layer.last_attention.shape == (2, HEADS, 5, 6)
    assert not layer.last_attention.requires_grad


def test_self_attention_uses_x_as_context() -> None:
    torch.manual_seed(1)
    layer = Attention(QUERY_DIM, heads=HEADS, head_dim=HEAD_DIM)
    x = torch.randn(2, 5, QUERY_DIM)
    torch.testing.assert_close(layer(x), reference_attention(layer, x, x), atol=1e-5, rtol=1e-5)
    assert not layer.is_cross_attention


def test_padded_tokens_are_irrelevant_and_get_zero_probability() -> None:
    layer, x, context = make_cross_inputs()
    changed = context.clone()
    changed[~PADDING_MASK] = 100.0 * torch.randn(int((~PADDING_MASK).sum()), CONTEXT_DIM)
    torch.testing.assert_close(layer(x, context, PADDING_MASK), layer(x, changed, PADDING_MASK))
    # without the mask the padding does matter, so the check above can fail
    assert not torch.allclose(layer(x, context), layer(x, changed), atol=1e-3)

    layer.record = True
    layer(x, changed, PADDING_MASK)
    probabilities = layer.last_attention
    assert probabilities is not None
    padding = rearrange(~PADDING_MASK, "b m -> b 1 1 m").expand_as(probabilities)
    assert torch.all(probabilities[padding] == 0)
    assert torch.all(probabilities[~padding] > 0)
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(2, HEADS, 5))


def test_all_padding_sample_gives_bias_not_nan() -> None:
    layer, x, context = make_cross_inputs()
    mask = PADDING_MASK.clone()
    mask[1] = False
    fast = layer(x, context, mask)
    layer.record = True
    recorded = layer(x, context, mask)
    for out in (fast, recorded):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1], layer.to_out.bias.expand(5, QUERY_DIM))
        # the other sample is untouched
        torch.testing.assert_close(out[0], reference_attention(layer, x, context, mask)[0])
    assert layer.last_attention is not None
    assert torch.all(layer.last_attention[1] == 0)


def test_gradients_flow_from_context_to_key_and_value_weights() -> None:
    layer, x, context = make_cross_inputs()
    context.requires_grad_(True)
    layer(x, context, PADDING_MASK).square().sum().backward()
    for weight in (layer.to_k.weight, layer.to_v.weight, layer.to_q.weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert context.grad is not None
    assert torch.all(context.grad[~PADDING_MASK] == 0)
    assert torch.all(context.grad[PADDING_MASK].abs().sum(dim=-1) > 0)


def test_attention_rejects_bad_shapes() -> None:
    layer, x, context = make_cross_inputs()
    with pytest.raises(ValueError, match="query_dim=12"):
        layer(torch.randn(2, 5, QUERY_DIM + 1), context)
    with pytest.raises(ValueError, match="context_dim=7"):
        layer(x, torch.randn(2, 6, QUERY_DIM))
    with pytest.raises(ValueError, match="expects a context of width 7"):
        layer(x)
    with pytest.raises(ValueError, match="batch size 1"):
        layer(x, context[:1])
    with pytest.raises(ValueError, match=r"\(B, M\) = \(2, 6\)"):
        layer(x, context, PADDING_MASK[:, :5])
    with pytest.raises(ValueError, match="bool tensor"):
        layer(x, context, PADDING_MASK.float())
    with pytest.raises(ValueError, match="heads must be a positive int"):
        Attention(QUERY_DIM, heads=0)


def test_recorder_collects_maps_by_name_and_restores_flags() -> None:
    torch.manual_seed(2)
    model = SpatialTransformer(8, heads=2, head_dim=4, context_dim=CONTEXT_DIM, depth=2).eval()
    x, context = torch.randn(2, 8, 3, 2), torch.randn(2, 6, CONTEXT_DIM)
    plain = model(x, context, PADDING_MASK)
    with AttentionRecorder(model, kind="cross") as recorder:
        for _ in range(3):
            recorded = model(x, context, PADDING_MASK)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    assert sorted(recorder.maps) == [
        "transformer_blocks.0.cross_attention",
        "transformer_blocks.1.cross_attention",
    ]
    for maps in recorder.maps.values():
        assert len(maps) == 3
        assert all(m.shape == (2, 2, 6, 6) for m in maps)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(layers) == 4 and not any(layer.record for layer in layers)

    with AttentionRecorder(model, kind="self") as recorder:
        model(x, context, PADDING_MASK)
    assert sorted(recorder.maps) == [
        "transformer_blocks.0.self_attention",
        "transformer_blocks.1.self_attention",
    ]
    assert recorder.maps["transformer_blocks.0.self_attention"][0].shape == (2, 2, 6, 6)
    with AttentionRecorder(model, kind="all") as recorder:
        pass
    assert len(recorder.maps) == 4 and all(v == [] for v in recorder.maps.values())


def test_recorder_restores_flags_after_exception_and_rejects_unknown_kind() -> None:
    model = TransformerBlock(8, heads=2, head_dim=4, context_dim=CONTEXT_DIM)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(model, kind="all"):
            assert model.self_attention.record and model.cross_attention.record
            raise RuntimeError("boom")
    assert not model.self_attention.record and not model.cross_attention.record
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionRecorder(model, kind="crosss")


def test_feed_forward_is_geglu() -> None:
    torch.manual_seed(3)
    ff = FeedForward(6, mult=2)
    x = torch.randn(2, 3, 6)
    hidden = ff.proj_in(x)
    value, gate = hidden[..., :12], hidden[..., 12:]
    expected = ff.proj_out(value * torch.nn.functional.gelu(gate))
    torch.testing.assert_close(ff(x), expected)
    assert ff.proj_in.out_features == 24


def test_transformer_block_context_rules() -> None:
    torch.manual_seed(4)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 6, CONTEXT_DIM)
    conditioned = TransformerBlock(8, heads=2, head_dim=4, context_dim=CONTEXT_DIM)
    assert conditioned(x, context, PADDING_MASK).shape == x.shape
    with pytest.raises(ValueError, match="needs context"):
        conditioned(x)
    unconditioned = TransformerBlock(8, heads=2, head_dim=4)
    assert unconditioned(x).shape == x.shape
    with pytest.raises(ValueError, match="no cross-attention"):
        unconditioned(x, context)


def test_fresh_spatial_transformer_is_identity_and_trains() -> None:
    torch.manual_seed(5)
    model = SpatialTransformer(48, heads=2, head_dim=8, context_dim=CONTEXT_DIM)
    assert model.norm.num_groups == 24  # largest divisor of 48 up to 32
    x = torch.randn(2, 48, 3, 4)
    context = torch.randn(2, 6, CONTEXT_DIM, requires_grad=True)
    out = model(x, context, PADDING_MASK)
    assert torch.equal(out, x)
    out.sum().backward()
    # the zero conv gets a gradient, so the block leaves the identity once trained
    assert model.proj_out.weight.grad is not None and model.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels=48"):
        model(torch.randn(2, 32, 3, 4), context)
    with pytest.raises(ValueError, match="needs context"):
        model(x)


def test_block_without_feed_forward_is_attention_only() -> None:
    torch.manual_seed(6)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 6, CONTEXT_DIM)
    block = TransformerBlock(8, heads=2, head_dim=4, context_dim=CONTEXT_DIM, feed_forward=False)
    assert block.feed_forward is None and block.norm3 is None
    # x + SelfAttn(LN1 x), then + CrossAttn(LN2 x, tau): nothing after
    hidden = x + block.self_attention(block.norm1(x))
    expected = hidden + block.cross_attention(block.norm2(hidden), context, PADDING_MASK)
    torch.testing.assert_close(block(x, context, PADDING_MASK), expected)
    with_ff = TransformerBlock(8, heads=2, head_dim=4, context_dim=CONTEXT_DIM)
    with_ff.load_state_dict(block.state_dict(), strict=False)
    # the same attention weights plus an MLP give a different output
    assert not torch.allclose(with_ff(x, context, PADDING_MASK), expected)
    ff_parameters = sum(p.numel() for p in with_ff.feed_forward.parameters())
    ff_parameters += sum(p.numel() for p in with_ff.norm3.parameters())
    assert sum(p.numel() for p in with_ff.parameters()) - ff_parameters == sum(
        p.numel() for p in block.parameters()
    )


def test_token_attention_maps_average_halve_guidance_and_upsample():
    from ldm_mini.attention import token_attention_maps

    # layer "a" at 2x2: token 1 takes all the weight at the top-left query, token 0 elsewhere
    probs = torch.zeros(1, 2, 4, 3)
    probs[:, :, 0, 1] = 1.0
    probs[:, :, 1:, 0] = 1.0
    # a guided call: the conditional half first, then an unconditional half that must be ignored
    guided = torch.cat([probs, torch.full_like(probs, 1 / 3)])
    # layer "b" at 4x4: uniform over the 3 tokens
    uniform = torch.full((1, 2, 16, 3), 1 / 3)
    maps = {"a": [guided, probs], "b": [uniform]}
    only_a = token_attention_maps(maps, batch=1, size=(2, 2), layers=["a"])
    assert only_a.shape == (1, 3, 2, 2)
    torch.testing.assert_close(only_a[0, 1], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(only_a[0, 0], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    # averaging over layers: (a + b) / 2 per call; here one call of a, one of b
    mixed = token_attention_maps(maps, batch=1, size=(2, 2), steps=[-1])
    torch.testing.assert_close(mixed[0, 2], torch.full((2, 2), 1 / 6))
    # upsampling keeps the maps' mean; per-head selection works
    big = token_attention_maps(maps, batch=1, size=(8, 8), layers=["a"], heads=[0])
    torch.testing.assert_close(big[0].mean(dim=(1, 2)), only_a[0].mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="no recorded layer"):
        token_attention_maps(maps, 1, (2, 2), layers=["c"])
    with pytest.raises(ValueError, match="no step 5"):
        token_attention_maps(maps, 1, (2, 2), steps=[5])
    with pytest.raises(ValueError, match="recorded a batch of 2, not 3"):
        token_attention_maps(maps, 3, (2, 2), layers=["a"])
    with pytest.raises(ValueError, match="no attention records"):
        token_attention_maps({"a": []}, 1, (2, 2))


def test_attention_mass_splits_each_map_over_the_regions():
    from ldm_mini.attention import attention_mass

    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = 1.0  # spread evenly: each region gets its area fraction
    maps[0, 1, 0, 0] = 2.0  # all on the object's top-left pixel
    # token 2: padding, an all-zero map
    regions = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    regions[0, 0, :2, :2] = True  # the object: 4 of 16 pixels
    regions[0, 1] = ~regions[0, 0]  # the background
    mass = attention_mass(maps, regions)
    torch.testing.assert_close(mass[0, 0], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mass[0, 1], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(mass[0, 2], torch.zeros(2))
    with pytest.raises(ValueError, match="same batch and the same H, W"):
        attention_mass(maps, regions[..., :2])
    with pytest.raises(ValueError, match="cannot be negative"):
        attention_mass(-maps, regions)
    with pytest.raises(ValueError, match=r"\(B, M, H, W\)"):
        attention_mass(maps[0], regions)


def test_recorded_cross_attention_of_a_unet_gives_one_map_per_token():
    from ldm_mini.attention import token_attention_maps
    from ldm_mini.unet import UNet, unet_preset

    torch.manual_seed(0)
    unet = UNet(unet_preset("tiny", 4, context_dim=8)).eval()
    context = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    with AttentionRecorder(unet, kind="cross") as recorder, torch.no_grad():
        unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), context=context,
             key_padding_mask=mask)  # fmt: skip
    maps = token_attention_maps(recorder.maps, batch=2, size=(32, 32))
    assert maps.shape == (2, 5, 32, 32)
    # every query's weights sum to one over the real tokens; padding gets none
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 32, 32))
    assert float(maps[0, 3:].abs().max()) == 0.0
