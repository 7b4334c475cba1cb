"""Checkers for the exercises of notebook 05_unet: the timestep embedding, FiLM and attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm_mini.checks._common import call, compare, passed
from ldm_mini.unet import ResBlock, timestep_embedding

NUM_TIMESTEPS = 1000


def check_timestep_embedding(fn: Callable) -> None:
    """Exercise (05): ``fn(t, dim)`` -> the sinusoidal embedding (B, dim) float32, cosines
    first, frequencies P^(-i/h) for i = 0..h-1, h = dim / 2 (ldm_mini.unet.timestep_embedding)."""
    name = "timestep_embedding"
    generator = torch.Generator().manual_seed(501)
    cases = [
        (torch.tensor([0]), 8),
        (torch.tensor([NUM_TIMESTEPS - 1]), 8),
        (torch.tensor([0, NUM_TIMESTEPS - 1]), 2),
        (torch.randint(0, NUM_TIMESTEPS, (16,), generator=generator), 64),
        (torch.rand(5, generator=generator) * NUM_TIMESTEPS, 32),
    ]
    for t, dim in cases:
        got = call(name, fn, t.clone(), dim)
        expected = timestep_embedding(t, dim)
        half = dim // 2
        sines_first = torch.cat([expected[:, half:], expected[:, :half]], dim=1)
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        angles = t.float()[:, None] * frequencies[None]
        off_by_one = torch.cat([angles.cos(), angles.sin()], dim=1)
        mistakes = [(sines_first, "the order is cosines first, then sines")]
        if half > 1:
            mistakes.append((off_by_one, "the exponent is i / h with h = dim / 2, not i / (h - 1)"))
        compare(
            name,
            got,
            expected,
            f"t = {t.tolist()[:4]}{'...' if len(t) > 4 else ''}, dim = {dim}",
            mistakes=mistakes,
            atol=1e-5,
            rtol=1e-5,
            hint="omega_i = exp(-ln(P) i / h), angle = t omega_i, [cos(angle), sin(angle)]",
        )
    passed(name, f"{len(cases)} cases, t = 0 and T-1 included")


def _resblock_with(
    film: Callable, block: ResBlock, x: torch.Tensor, emb: torch.Tensor
) -> torch.Tensor:
    """ResBlock.forward with its FiLM line replaced by ``film``."""
    h = block.conv1(F.silu(block.norm1(x)))
    time_params = block.time_proj(F.silu(emb))
    h = film(block.norm2(h), time_params)
    h = block.conv2(block.dropout(F.silu(h)))
    return block.skip(x) + h


def check_film(fn: Callable) -> None:
    """Exercise (05): ``fn(h, time_params)`` with h (B, C, H, W) and time_params (B, 2C) =
    [scale, shift] -> h * (1 + scale) + shift, broadcast over H and W; checked alone and
    inside a package ResBlock with random weights."""
    name = "film"
    generator = torch.Generator().manual_seed(502)
    for batch, channels, size in [(3, 16, 8), (1, 4, 3)]:
        h = torch.randn(batch, channels, size, size, generator=generator)
        params = torch.randn(batch, 2 * channels, generator=generator)
        scale, shift = rearrange(params, "b c -> b c 1 1").chunk(2, dim=1)
        got = call(name, fn, h.clone(), params.clone())
        mistakes = [
            (
                h * scale + shift,
                "the scale multiplies as (1 + scale): a zero scale must leave h unchanged",
            ),
            (h * (1 + shift) + scale, "scale is the first half of time_params, shift the second"),
            ((h + shift) * (1 + scale), "scale first, then add the shift: h (1 + scale) + shift"),
        ]
        compare(
            name,
            got,
            h * (1 + scale) + shift,
            f"h {tuple(h.shape)}, time_params {tuple(params.shape)}",
            mistakes=mistakes,
            atol=1e-5,
        )
    for seed, (in_ch, out_ch) in enumerate([(16, 32), (32, 32)]):
        torch.manual_seed(510 + seed)
        block = ResBlock(in_ch, out_ch, time_dim=64).eval()
        nn.init.normal_(block.conv2.weight, std=0.05)  # a fresh conv2 is zero: the block ignores t
        nn.init.normal_(block.conv2.bias, std=0.05)
        x = torch.randn(3, in_ch, 8, 8, generator=generator)
        emb = timestep_embedding(torch.tensor([0, 500, NUM_TIMESTEPS - 1]), 64)
        with torch.no_grad():
            got = _resblock_with(lambda h, p: call(name, fn, h, p), block, x, emb)
            expected = block(x, emb)
        compare(
            name, got, expected, f"inside ResBlock({in_ch}, {out_ch}) at t = 0, 500, T-1", atol=1e-5
        )
    passed(name, "alone and inside a ResBlock with random weights")


def check_attention(fn: Callable) -> None:
    """Exercise (05): ``fn(q, k, v, mask)`` -> softmax(Q K^T / sqrt(d)) V with q (..., N, d),
    k, v (..., M, d) and mask (..., M) True = keep (or None); compared with
    F.scaled_dot_product_attention."""
    name = "attention"
    generator = torch.Generator().manual_seed(503)
    shapes = [((4, 8), (3, 8)), ((2, 5, 16), (2, 7, 16)), ((2, 2, 6, 4), (2, 2, 1, 4))]
    for q_shape, k_shape in shapes:
        q = torch.randn(*q_shape, generator=generator)
        k = torch.randn(*k_shape, generator=generator)
        v = torch.randn(*k_shape, generator=generator)
        masks: list[torch.Tensor | None] = [None, torch.ones(k_shape[:-1], dtype=torch.bool)]
        if k_shape[-2] > 1:
            mask = torch.rand(k_shape[:-1], generator=generator) > 0.5
            mask[..., 0] = True  # at least one real token per row
            masks.append(mask)
        for mask in masks:
            expected = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if mask is None else mask[..., None, :]
            )
            got = call(name, fn, q.clone(), k.clone(), v.clone(), mask)
            logits = q @ k.transpose(-2, -1)
            mistakes = [
                (logits.softmax(-1) @ v, "scale the logits by 1 / sqrt(d)"),
                ((logits / q.shape[-1]).softmax(-1) @ v, "scale by 1 / sqrt(d), not 1 / d"),
            ]
            if q_shape[-2] == k_shape[-2]:
                mistakes.append(
                    (
                        (logits / math.sqrt(q.shape[-1])).softmax(-2) @ v,
                        "the softmax runs over the keys (the last axis), not the queries",
                    )
                )
            if mask is not None and not mask.all():
                mistakes.append(
                    (
                        F.scaled_dot_product_attention(q, k, v),
                        "the mask is ignored: "
                        "set the logits of masked keys to -inf before the softmax",
                    )
                )
            where = (
                f"q {q_shape}, k {k_shape}, mask {'none' if mask is None else mask.int().tolist()}"
            )
            compare(name, got, expected, where, mistakes=mistakes, atol=1e-5, rtol=1e-5)
    passed(name, f"{len(shapes)} shapes, with and without masks")
