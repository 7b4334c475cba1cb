"""Self- and cross-attention for the denoising U-Net, and a recorder for attention maps.

Taught in notebooks ``05_unet`` (self-attention inside the U-Net) and
``07_cross_attention_conditioning`` (cross-attention, padding masks, attention maps).

LDM (Rombach et al., CVPR 2022, Sec. 3.3) conditions the U-Net on ``y`` (text, a class, ...)
through cross-attention. An encoder ``tau_theta`` turns ``y`` into a sequence of M tokens
``tau_theta(y)`` of shape (M, d_tau), and every :class:`SpatialTransformer` in the U-Net lets
its N = H * W pixels attend to them::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
    Q = W_Q phi_i(z_t),   K = W_K tau_theta(y),   V = W_V tau_theta(y),

where ``phi_i(z_t)`` is the flattened (N, d_eps) feature map of the U-Net. Without ``y`` the
same layer is self-attention (K and V also come from ``phi_i(z_t)``).

* :class:`Attention`: multi-head attention; fast path through
  :func:`torch.nn.functional.scaled_dot_product_attention`; a key padding mask for
  variable-length text; an opt-in slow path (``record = True``) that computes the softmax by
  hand and keeps the probabilities for visualisation.
* :class:`AttentionRecorder`: a context manager that records every attention map of a model.
* :class:`FeedForward` (GEGLU), :class:`TransformerBlock` and :class:`SpatialTransformer`:
  the blocks of LDM's ``ldm/modules/attention.py``, shrunk to the essentials.

Masks follow one convention everywhere: ``key_padding_mask`` is a bool tensor (B, M) with
``True`` for a real token and ``False`` for padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "RECORDER_KINDS",
    "Attention",
    "AttentionRecorder",
    "attention_mass",
    "FeedForward",
    "SpatialTransformer",
    "TransformerBlock",
]

RECORDER_KINDS = ("cross", "self", "all")


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _check_dropout(value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {value!r}.")


# --------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self- or cross-attention; (B, N, query_dim) -> (B, N, query_dim).

    ``query_dim`` is the width of the queries' source x (the U-Net features); ``context_dim``
    the width of the context tau (the conditioning tokens), or None for self-attention only.
    The module is a *cross*-attention layer when built with a ``context_dim`` (this is what
    :class:`AttentionRecorder` uses to pick layers by kind). Each of the ``heads`` heads works
    in ``head_dim`` dimensions and scales its logits by ``1 / sqrt(head_dim)``.

    Set ``record = True`` (or use :class:`AttentionRecorder`) to take the slow path, which
    computes the probabilities by hand and stores them, detached, in ``last_attention``
    with shape (B, heads, N, M).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 4,
        head_dim: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive_int("query_dim", query_dim)
        if context_dim is not None:
            _check_positive_int("context_dim", context_dim)
        _check_positive_int("heads", heads)
        _check_positive_int("head_dim", head_dim)
        _check_dropout(dropout)
        self.query_dim = query_dim
        self.context_dim = context_dim
        self.heads = heads
        self.head_dim = head_dim
        inner_dim = heads * head_dim
        key_source_dim = query_dim if context_dim is None else context_dim
        # Q = W_Q x, K = W_K tau, V = W_V tau (no biases, as in LDM)
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(key_source_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(key_source_dim, inner_dim, bias=False)
        # concat(head_1, ..., head_h) W_O + b_O, then dropout
        self.to_out = nn.Linear(inner_dim, query_dim)
        self.dropout = nn.Dropout(dropout)
        self.record = False
        self.last_attention: Tensor | None = None

    @property
    def is_cross_attention(self) -> bool:
        """True when built with a ``context_dim`` (keys and values come from a context)."""
        return self.context_dim is not None

    def _check_inputs(
        self, x: Tensor, context: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:
        """Validate shapes and return the key/value source (context, or x itself)."""
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(
                f"x must have shape (B, N, query_dim={self.query_dim}), got {tuple(x.shape)}."
            )
        if context is None:
            if self.context_dim is not None and self.context_dim != self.query_dim:
                raise ValueError(
                    f"This cross-attention layer expects a context of width "
                    f"{self.context_dim}; pass context=tau(y) of shape (B, M, {self.context_dim})."
                )
            source = x
        else:
            expected = self.query_dim if self.context_dim is None else self.context_dim
            if context.ndim != 3 or context.shape[-1] != expected:
                raise ValueError(
                    f"context must have shape (B, M, context_dim={expected}), got "
                    f"{tuple(context.shape)}. Build the layer with context_dim equal to the "
                    "width of the conditioning tokens."
                )
            if context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context has batch size {context.shape[0]} but x has {x.shape[0]}; "
                    "give one context sequence per sample."
                )
            source = context
        if key_padding_mask is not None:
            batch, num_keys = source.shape[0], source.shape[1]
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be a bool tensor (True = real token, False = "
                    f"padding), got dtype {key_padding_mask.dtype}."
                )
            if tuple(key_padding_mask.shape) != (batch, num_keys):
                raise ValueError(
                    f"key_padding_mask must have shape (B, M) = ({batch}, {num_keys}), one "
                    f"flag per key token, got {tuple(key_padding_mask.shape)}."
                )
        return source

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from x (B, N, query_dim) to context (B, M, context_dim); -> (B, N, query_dim).

        ``context`` None means self-attention (keys and values from x; then ``context_dim``
        must be None or equal ``query_dim``). ``key_padding_mask`` (B, M) bool: True for a
        real token, False for padding, which then gets exactly zero weight. A sample whose
        keys are *all* padding attends to nothing: its heads output zeros, so every query of
        that sample gets the output projection's bias (no NaN), and its recorded
        probabilities are all zero.
        """
        source = self._check_inputs(x, context, key_padding_mask)
        if source is x:
            # self-attention: Q, K, V = x W_Q, x W_K, x W_V as one matrix product (the weights
            # stay three named matrices; one larger GEMM is faster than three small ones)
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            queries, keys, values = rearrange(
                F.linear(x, weight), "b n (three h d) -> three b h n d", three=3, h=self.heads
            )
        else:
            queries = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
            # K, V = tau(y) W_K, tau(y) W_V, as one matrix product
            weight = torch.cat([self.to_k.weight, self.to_v.weight])
            keys, values = rearrange(
                F.linear(source, weight), "b m (two h d) -> two b h m d", two=2, h=self.heads
            )

        attn_mask = None
        has_keys = None
        if key_padding_mask is not None:
            # a sample with no real token would give softmax over only -inf (NaN): let it see
            # every key, then zero its result
            has_keys = key_padding_mask.any(dim=-1)
            safe_mask = key_padding_mask | ~has_keys[:, None]
            attn_mask = rearrange(safe_mask, "b m -> b 1 1 m")

        if self.record:
            # softmax(Q K^T / sqrt(d)) by hand, kept for visualisation
            logits = torch.einsum("bhnd,bhmd->bhnm", queries, keys) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            probabilities = logits.float().softmax(dim=-1).to(values.dtype)
            if has_keys is not None:
                probabilities = probabilities * rearrange(has_keys, "b -> b 1 1 1")
            self.last_attention = probabilities.detach()
            heads_out = torch.einsum("bhnm,bhmd->bhnd", probabilities, values)
        else:
            heads_out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attn_mask)
            if has_keys is not None:
                heads_out = heads_out * rearrange(has_keys, "b -> b 1 1 1").to(heads_out.dtype)

        out = rearrange(heads_out, "b h n d -> b n (h d)")
        return self.dropout(self.to_out(out))

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, context_dim={self.context_dim}, heads={self.heads}, "
            f"head_dim={self.head_dim}"
        )


# --------------------------------------------------------------------------------------
# Recording attention maps
# --------------------------------------------------------------------------------------


class AttentionRecorder:
    """Record the attention probabilities of every matching :class:`Attention` in a model.

    ``with AttentionRecorder(model, kind="cross") as recorder:`` switches the matching layers
    to the recording (slow) path; after each forward of such a layer its probabilities
    (B, heads, N, M), detached, are appended to ``recorder.maps[name]``, where ``name`` is the
    layer's qualified name in ``model`` (one entry per call, e.g. per sampling step).
    ``kind``: "cross" (layers built with a ``context_dim``), "self" (the others) or "all".
    Every matching layer has a key in ``maps`` from the start, even before it runs. On exit,
    also after an exception, the layers' ``record`` flags are restored and the hooks removed.
    """

    def __init__(self, model: nn.Module, kind: str = "cross") -> None:
        if kind not in RECORDER_KINDS:
            raise ValueError(f"kind must be one of {RECORDER_KINDS}, got {kind!r}.")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.kind = kind
        self.maps: dict[str, list[Tensor]] = {}
        self._previous_flags: dict[str, bool] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _matches(self, module: Attention) -> bool:
        if self.kind == "all":
            return True
        return module.is_cross_attention == (self.kind == "cross")

    def __enter__(self) -> AttentionRecorder:
        self.maps = {}
        for name, module in self.model.named_modules():
            if isinstance(module, Attention) and self._matches(module):
                self.maps[name] = []
                self._previous_flags[name] = module.record
                module.record = True
                self._hooks.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if module.last_attention is not None:
                self.maps[name].append(module.last_attention)

        return hook

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        modules = dict(self.model.named_modules())
        for name, previous in self._previous_flags.items():
            modules[name].record = previous
        self._previous_flags = {}


def token_attention_maps(
    maps: dict[str, list[Tensor]],
    batch: int,
    size: tuple[int, int],
    layers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Tensor:
    """Per-token cross-attention maps (B, M, H, W) from an :class:`AttentionRecorder`'s maps.

    Each record (b, heads, N, M) of a layer is one call: N = h * w query positions of that
    layer's resolution, M context tokens. Under classifier-free guidance the U-Net runs the
    conditional and the unconditional batch together (b = 2 * batch, conditional first): only
    the conditional half is used. The probabilities are averaged over ``heads`` (default:
    all), reshaped to (batch, M, h, w), upsampled bilinearly to ``size`` and averaged over
    ``layers`` (names, default: all recorded) and ``steps`` (call indices, negative allowed,
    default: all). Each map of a token then sums to about H * W times its average weight.
    """
    names = list(maps) if layers is None else list(layers)
    unknown = [name for name in names if name not in maps]
    if unknown:
        raise ValueError(f"no recorded layer(s) {unknown}; recorded: {list(maps)}")
    total: Tensor | None = None
    count = 0
    for name in names:
        records = maps[name]
        chosen = range(len(records)) if steps is None else steps
        for step in chosen:
            if not -len(records) <= step < len(records):
                raise ValueError(f"layer {name} has {len(records)} recorded calls, no step {step}")
            probs = records[step]
            if probs.ndim != 4:
                raise ValueError(f"a record must be (b, heads, N, M), got {tuple(probs.shape)}")
            if probs.shape[0] == 2 * batch:
                probs = probs[:batch]  # the conditional half of a guided call
            elif probs.shape[0] != batch:
                raise ValueError(
                    f"layer {name} recorded a batch of {probs.shape[0]}, not {batch} (or "
                    f"{2 * batch} with guidance)"
                )
            if heads is not None:
                probs = probs[:, list(heads)]
            side = int(round(probs.shape[2] ** 0.5))
            if side * side != probs.shape[2]:
                raise ValueError(f"layer {name}: {probs.shape[2]} query positions are not square")
            # mean over heads, then (N, M) -> (M, h, w)
            per_token = rearrange(probs.float().mean(dim=1), "b (h w) m -> b m h w", h=side)
            upsampled = F.interpolate(per_token, size=size, mode="bilinear", align_corners=False)
            total = upsampled if total is None else total + upsampled
            count += 1
    if total is None:
        raise ValueError("no attention records selected: run the model inside the recorder")
    return total / count


def attention_mass(token_maps: Tensor, regions: Tensor) -> Tensor:
    """The fraction of each token's attention mass inside each region: (B, M, K).

    ``token_maps``: (B, M, H, W) non-negative maps from :func:`token_attention_maps`;
    ``regions``: (B, K, H, W) masks (bool or 0/1) at the same size, e.g. the ground-truth
    object masks of ``shapes`` and the background. A map spread evenly over the image gives
    each region its area fraction; the ratio of the two says whether a token prefers a region.
    Tokens whose map is all zero (padding) get zeros.
    """
    if token_maps.ndim != 4 or regions.ndim != 4:
        raise ValueError(
            f"token_maps must be (B, M, H, W) and regions (B, K, H, W), got "
            f"{tuple(token_maps.shape)} and {tuple(regions.shape)}"
        )
    if token_maps.shape[0] != regions.shape[0] or token_maps.shape[2:] != regions.shape[2:]:
        raise ValueError(
            f"token_maps {tuple(token_maps.shape)} and regions {tuple(regions.shape)} need the "
            "same batch and the same H, W (upsample the maps with token_attention_maps(size=...))"
        )
    if float(token_maps.min()) < 0:
        raise ValueError("attention maps are probabilities: they cannot be negative")
    maps = token_maps.float()
    # mass of token m in region k: sum over the pixels of A_m(p) * R_k(p), over the total of A_m
    inside = torch.einsum("bmhw,bkhw->bmk", maps, regions.float())
    total = maps.sum(dim=(2, 3))[..., None]
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(inside))


# --------------------------------------------------------------------------------------
# Transformer blocks
# --------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """GEGLU feed-forward, as in LDM; (B, N, dim) -> (B, N, dim), hidden width mult * dim."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("mult", mult)
        _check_dropout(dropout)
        inner_dim = dim * mult
        self.proj_in = nn.Linear(dim, 2 * inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, dim) -> (B, N, dim)."""
        # GEGLU(x) = (x W + b) * GELU(x V + c)
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(value * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention (optional), GEGLU MLP.

    (B, N, dim) -> (B, N, dim). Cross-attention exists only when ``context_dim`` is given; a
    block built with one requires a context, and a block built without one rejects it.
    ``feed_forward=False`` drops the MLP: attention only, as in the DDPM/ADM U-Net's attention
    block (and diffusers' ``UNet2DModel``), at about a third of the block's FLOPs.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        feed_forward: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.context_dim = context_dim
        self.norm1 = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, None, heads, head_dim, dropout)
        self.norm2: nn.LayerNorm | None = None
        self.cross_attention: Attention | None = None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attention = Attention(dim, context_dim, heads, head_dim, dropout)
        self.norm3: nn.LayerNorm | None = None
        self.feed_forward: FeedForward | None = None
        if feed_forward:
            self.norm3 = nn.LayerNorm(dim)
            self.feed_forward = FeedForward(dim, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, dim), context (B, M, context_dim), key_padding_mask (B, M) -> (B, N, dim)."""
        if self.cross_attention is None or self.norm2 is None:
            if context is not None or key_padding_mask is not None:
                raise ValueError(
                    "This block has no cross-attention (built with context_dim=None) but got a "
                    "context or key_padding_mask; build it with context_dim to condition on y."
                )
        elif context is None:
            raise ValueError(
                f"This block has cross-attention (context_dim={self.context_dim}) and needs "
                f"context=tau(y) of shape (B, M, {self.context_dim})."
            )
        # x <- x + SelfAttn(LN(x))
        x = x + self.self_attention(self.norm1(x))
        if self.cross_attention is not None and self.norm2 is not None:
            # x <- x + CrossAttn(LN(x), tau(y))
            x = x + self.cross_attention(self.norm2(x), context, key_padding_mask)
        if self.feed_forward is not None and self.norm3 is not None:
            # x <- x + FF(LN(x))
            x = x + self.feed_forward(self.norm3(x))
        return x


def _group_count(channels: int) -> int:
    """32, or the largest number of groups below 32 that divides ``channels``."""
    return max(groups for groups in range(1, 33) if channels % groups == 0)


def fourier_features(points: Tensor, dim: int) -> Tensor:
    """(K, 2) points in [0, 1] -> (K, dim) sines and cosines of dim/4 frequencies per axis."""
    if dim % 4:
        raise ValueError(f"Fourier features need a dim divisible by 4, got {dim}")
    frequencies = 2.0 ** torch.arange(dim // 4, dtype=torch.float32) * math.pi
    # gamma(p) = [sin(2^k pi p), cos(2^k pi p)] for each axis
    angles = rearrange(points[..., None] * frequencies, "k a f -> k (a f)")
    return torch.cat([angles.sin(), angles.cos()], -1)


def position_features(height: int, width: int, dim: int, device=None) -> Tensor:
    """(height * width, dim) Fourier features of each position's centre ((j + 0.5) / width,
    (i + 0.5) / height) in [0, 1], row by row: the same basis as a layout's box corners."""
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    columns = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y, x = torch.meshgrid(rows, columns, indexing="ij")
    return fourier_features(torch.stack([x, y], -1).reshape(-1, 2), dim)


class SpatialTransformer(nn.Module):
    """LDM's transformer on a feature map; (B, C, H, W) -> (B, C, H, W).

    GroupNorm, 1x1 conv to ``heads * head_dim`` channels, flatten the H * W pixels into
    tokens, ``depth`` :class:`TransformerBlock` s (cross-attending to ``context`` when built
    with ``context_dim``), unflatten, a zero-initialised 1x1 conv back to ``channels``, plus
    the input. Because of the zero conv a freshly built block is the identity.
    ``feed_forward=False`` builds the blocks without their MLP (attention only).
    ``positions=True`` adds to each pixel's token a learned projection (zero at initialisation)
    of the Fourier features of its place, so every attention layer knows where each query is
    (our addition for layouts, notebook 11).
    """

    POSITION_FEATURES = 32  # 8 frequencies per axis, as a layout's box corners'


    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        depth: int = 1,
        dropout: float = 0.0,
        feed_forward: bool = True,
        positions: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        _check_positive_int("heads", heads)
        _check_positive_int("head_dim", head_dim)
        _check_positive_int("depth", depth)
        self.channels = channels
        self.context_dim = context_dim
        inner_dim = heads * head_dim
        self.norm = nn.GroupNorm(_group_count(channels), channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner_dim, heads, head_dim, context_dim, dropout, feed_forward)
            for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.position_projection = None
        if positions:
            self.position_projection = nn.Linear(self.POSITION_FEATURES, inner_dim)
            nn.init.zeros_(self.position_projection.weight)
            nn.init.zeros_(self.position_projection.bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, C, H, W), context (B, M, context_dim), key_padding_mask (B, M) -> (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must have shape (B, channels={self.channels}, H, W), got {tuple(x.shape)}."
            )
        height, width = x.shape[-2:]
        hidden = self.proj_in(self.norm(x))
        # phi_i(z_t): (B, C, H, W) -> (B, N = H * W, C) tokens
        tokens = rearrange(hidden, "b c h w -> b (h w) c")
        if self.position_projection is not None:
            # token_i + W gamma(x_i, y_i): where pixel i is
            where = position_features(height, width, self.POSITION_FEATURES, x.device)
            tokens = tokens + self.position_projection(where.to(tokens.dtype))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, key_padding_mask)
        hidden = rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)
        # out = x + Conv_out(...), Conv_out zero at initialisation
        return x + self.proj_out(hidden)
