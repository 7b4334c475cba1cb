"""Checkers for the exercises of notebook 07_cross_attention_conditioning: cross-attention
with an Attention layer's weights, the classifier-free guidance combination and condition
dropout."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ldm_mini.attention import Attention
from ldm_mini.checks._common import ExerciseCheckFailed, call, compare, passed
from ldm_mini.conditioning import TextEncoder, WordTokenizer
from ldm_mini.data.shapes import all_prompts
from ldm_mini.samplers import ClassifierFreeGuidance
from ldm_mini.unet import UNet, unet_preset


def check_cross_attention(fn: Callable) -> None:
    """Exercise (07): ``fn(x, context, mask, layer)`` with x (B, N, d_x), context (B, M, d_tau),
    mask (B, M) True for real tokens and ``layer`` an ldm_mini.attention.Attention -> its
    output (B, N, d_x), computed from the layer's to_q / to_k / to_v / to_out weights."""
    name = "cross_attention"
    generator = torch.Generator().manual_seed(701)
    for batch, n, m, dim_x, dim_tau, heads, head_dim in [
        (2, 16, 5, 32, 24, 4, 8),
        (3, 4, 11, 8, 8, 1, 16),
    ]:
        torch.manual_seed(batch)
        layer = Attention(dim_x, dim_tau, heads, head_dim).eval()
        x = torch.randn(batch, n, dim_x, generator=generator)
        context = torch.randn(batch, m, dim_tau, generator=generator)
        full = torch.ones(batch, m, dtype=torch.bool)
        padded = full.clone()
        padded[0, 2:] = False  # sample 0 has 2 real tokens, the rest is padding
        where = f"x {tuple(x.shape)}, context {tuple(context.shape)}, {heads} heads of {head_dim}"
        with torch.no_grad():
            got_full = call(name, fn, x.clone(), context.clone(), full.clone(), layer)
            want_full = layer(x, context, key_padding_mask=full)
            compare(
                name,
                got_full,
                want_full,
                where + ", no padding",
                atol=1e-5,
                rtol=1e-4,
                hint="scale by 1/sqrt(head_dim) (not 1/sqrt(heads * head_dim)), softmax over "
                "the keys (the last axis of Q K^T, size M), split heads as (h d) with h first, "
                "and finish with layer.to_out",
            )
            got_padded = call(name, fn, x.clone(), context.clone(), padded.clone(), layer)
            want_padded = layer(x, context, key_padding_mask=padded)
            compare(
                name,
                got_padded,
                want_padded,
                where + ", sample 0 padded after 2 tokens",
                mistakes=[
                    (
                        want_full,
                        "the mask is ignored: padded keys (mask False) must get "
                        "zero weight; set their logits to -inf before the softmax",
                    )
                ],
                atol=1e-5,
                rtol=1e-4,
                hint="padded keys (mask False) get logit -inf before the softmax "
                "(not 0, not after)",
            )
    passed(name, "2 layer sizes, with and without padding")


def _tiny_text_model() -> tuple[UNet, TextEncoder]:
    torch.manual_seed(702)
    tokenizer = WordTokenizer.from_captions(all_prompts(), max_length=16)
    encoder = TextEncoder(tokenizer, dim=32, depth=1, heads=2).eval()
    unet = UNet(unet_preset("tiny", 4, context_dim=32)).eval()
    for parameter in unet.parameters():  # a fresh U-Net outputs zeros: give it random weights
        torch.nn.init.normal_(parameter, std=0.05)
    return unet, encoder


def check_guided_eps(fn: Callable) -> None:
    """Exercise (07): ``fn(unet, z_t, t, cond, null, w)`` -> eps_null + w (eps_cond -
    eps_null), where eps_cond = unet(z_t, t, **cond) and eps_null = unet(z_t, t, **null);
    compared with ClassifierFreeGuidance at w = 1 (conditional), 0 (unconditional), 3, 7.5."""
    name = "guided_eps"
    unet, encoder = _tiny_text_model()
    generator = torch.Generator().manual_seed(703)
    z_t = torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        context, mask = encoder(
            ["a red circle", "a blue square below a green circle", "a yellow triangle"]
        )
        null_context, null_mask = encoder([""] * 3)
        cond = {"context": context, "key_padding_mask": mask}
        null = {"context": null_context, "key_padding_mask": null_mask}
        eps_cond, eps_null = unet(z_t, t, **cond), unet(z_t, t, **null)
        for w in [1.0, 0.0, 3.0, 7.5]:
            got = call(name, fn, unet, z_t.clone(), t.clone(), dict(cond), dict(null), w)
            want = ClassifierFreeGuidance(unet, w, null)(z_t, t, **cond)
            mistakes = [
                (
                    eps_cond + w * (eps_cond - eps_null),
                    "you start from eps(z_t, y); start from the "
                    "unconditional prediction: eps_null + w (eps_cond - eps_null)",
                ),
                (
                    eps_null + w * (eps_null - eps_cond),
                    "the difference is reversed: w (eps_cond - "
                    "eps_null) pushes towards the caption",
                ),
                (
                    w * eps_cond + (1 - w) * eps_cond,
                    "both predictions are conditional: call the "
                    "U-Net once with cond and once with null",
                ),
            ]
            if w == 1.0:
                hint = "with w = 1 guidance must give the plain conditional prediction eps(z_t, y)"
            elif w == 0.0:
                hint = "with w = 0 guidance must give the unconditional prediction eps(z_t, null)"
            else:
                hint = "eps_hat = eps_null + w (eps_cond - eps_null)"
            compare(
                name, got, want, f"w = {w:g}", mistakes=mistakes, hint=hint, atol=1e-5, rtol=1e-4
            )
    passed(name, "w = 1 (conditional), 0 (unconditional), 3 and 7.5")


def check_drop_captions(fn: Callable) -> None:
    """Exercise (07): ``fn(captions, p, generator)`` -> the captions with each replaced by ""
    (the null condition) independently with probability p, drawn with ``generator``; the
    measured rate must be within 4.5 standard deviations of p."""
    name = "drop_captions"
    prompts = all_prompts()
    captions = [prompts[i % len(prompts)] for i in range(20_000)]
    for p in [0.0, 1.0, 0.1, 0.5]:
        out = call(name, fn, list(captions), p, torch.Generator().manual_seed(704))
        if not isinstance(out, list) or len(out) != len(captions):
            size = len(out) if hasattr(out, "__len__") else "?"
            raise ExerciseCheckFailed(
                f"{name} must return a list of {len(captions)} captions, got "
                f"{type(out).__name__} of {size}"
            )
        if any(o not in ("", c) for o, c in zip(out, captions, strict=True)):
            raise ExerciseCheckFailed(
                f'{name}: a caption must stay as it is or become "" (the null condition), '
                "nothing else, and the order must be kept"
            )
        rate = sum(o != c for o, c in zip(out, captions, strict=True)) / len(captions)
        tolerance = 4.5 * math.sqrt(p * (1 - p) / len(captions)) + 1e-12
        if abs(rate - p) > tolerance:
            detail = (
                " (you drop with probability 1 - p: keep when the draw is >= p)"
                if abs(rate - (1 - p)) <= tolerance
                else ""
            )
            raise ExerciseCheckFailed(
                f"{name}: with p = {p} you dropped {rate:.4f} of the captions; expected {p} +- "
                f"{tolerance:.4f}{detail}: draw one uniform number per caption and drop "
                "if it is < p"
            )
    first = call(name, fn, list(captions[:2000]), 0.5, torch.Generator().manual_seed(705))
    second = call(name, fn, list(captions[:2000]), 0.5, torch.Generator().manual_seed(706))
    if first == second:
        raise ExerciseCheckFailed(
            f"{name}: two different generators dropped the same captions: use the generator "
            "you are given (torch.rand(n, generator=generator))"
        )
    repeated = call(name, fn, [captions[0]] * 2000, 0.5, torch.Generator().manual_seed(707))
    if len(set(repeated)) != 2:
        raise ExerciseCheckFailed(
            f"{name}: the same caption must sometimes be dropped and sometimes kept: draw per "
            "sample, not per caption text"
        )
    passed(name, "rates at p = 0, 1, 0.1 and 0.5 on 20,000 captions, seeded, per sample")
