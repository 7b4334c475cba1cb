"""The denoising U-Net eps_theta(z_t, t, y) of a Latent Diffusion Model. Taught in ``05_unet``.

LDM (Rombach et al., CVPR 2022, Sec. 3.2-3.3 and App. E) denoises latents with the U-Net of
DDPM / guided-diffusion, made conditional:

* **time**: t -> sinusoidal embedding -> MLP -> a vector that every :class:`ResBlock` turns
  into a per-channel (scale, shift) after its second GroupNorm (FiLM);
* **classes**: a learned class embedding is *added* to the time embedding (``num_classes``);
* **cross-attention**: at the levels in ``attention_levels`` (and always in the middle) a
  :class:`~ldm_mini.attention.SpatialTransformer` lets the features attend to themselves and,
  when ``context_dim`` is set, to a context tau_theta(y) (B, M, context_dim) (text tokens);
* **concatenation**: ``concat_channels`` extra input channels (a low-resolution image for
  super-resolution, a mask for inpainting) are concatenated to z_t before the first conv;
* **coordinates** (``coordinate_channels``, our addition for layouts, notebook 11): two fixed
  channels, x and y in [-1, 1], also concatenated before the first conv. A convolution is
  translation-equivariant, so it learns only slowly to turn a coordinate into a place (Liu et
  al. 2018, "CoordConv"); with them every position knows where it is, and cross-attention
  can match a box's corner tokens to the positions inside the box;
* **attention positions** (``attention_positions``, the same purpose): every SpatialTransformer
  adds to each pixel's token a learned projection of the Fourier features of its place, the
  basis a layout encoder uses for its boxes, so the queries of every attention layer say where
  they are (the input channels reach deeper layers only through convolutions).

Layout (CompVis ``openaimodel.UNetModel``, shrunk): ``conv_in``; per level ``num_res_blocks``
ResBlocks [+ transformer], then a stride-2 Downsample (not after the last level); middle
ResBlock, transformer, ResBlock; per level in reverse ``num_res_blocks + 1`` ResBlocks, each
fed the concatenation of the features and one skip saved on the way down, [+ transformer],
then an Upsample (not after level 0); GroupNorm, SiLU and a zero-initialised ``conv_out``.
Every residual branch ends in a zero-initialised layer, so a fresh U-Net outputs zeros.

It follows the model protocol of :mod:`ldm_mini.samplers`: ``unet(x_t, t, **model_kwargs)``.
``group_norm``, ``Downsample``, ``Upsample`` and :func:`timestep_embedding` (importable from
here too) are defined in :mod:`ldm_mini.blocks`, shared with the autoencoder.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldm_mini.attention import SpatialTransformer
from ldm_mini.blocks import Downsample, Upsample, group_norm, timestep_embedding
from ldm_mini.configs import check_keys, is_int, is_number

__all__ = [
    "ResBlock",
    "UNet",
    "UNetBlock",
    "UNetConfig",
    "timestep_embedding",
]


def _shape_of(value: object) -> str:
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def coordinate_grid(x: Tensor) -> Tensor:
    """(B, 2, H, W): the x and y of every position of ``x`` (B, C, H, W), from -1 to 1 at the
    centres of the first and last pixels."""
    batch, _, height, width = x.shape
    ys = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, then y
    return grid.expand(batch, -1, -1, -1)


@dataclass
class UNetConfig:
    """Hyper-parameters of the U-Net; JSON round trip via ``to_dict`` / ``from_dict``.

    ``in_channels`` / ``out_channels`` of x_t and of the prediction (both c for latents).
    Level ``i`` has ``base_channels * channel_mult[i]`` channels; the input is downsampled
    ``len(channel_mult) - 1`` times, so H and W must be multiples of ``2 ** (levels - 1)``.
    ``attention_levels``: indices of the levels with a transformer after each ResBlock (the
    middle always has one). Attention width: when ``head_dim`` is set it wins and each
    transformer has ``channels // head_dim`` heads; otherwise ``heads`` heads of width
    ``channels // heads``. ``context_dim``: cross-attention to a context (B, M, context_dim) in
    every transformer. ``num_classes``: labels 0..num_classes-1, plus ``num_classes`` itself as
    the null label of classifier-free guidance. ``concat_channels``: extra input channels
    concatenated to x_t. ``coordinate_channels``: two fixed channels (x, y in [-1, 1])
    concatenated to x_t too. ``attention_positions``: Fourier features of each position added
    to the attention tokens. ``transformer_depth``: transformer blocks per SpatialTransformer.
    ``transformer_feed_forward``: False drops the GEGLU MLP from every transformer block
    (attention only, as the DDPM/ADM U-Net and the paper's unconditional LDMs).
    """

    in_channels: int
    out_channels: int
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1, 2)
    heads: int | None = 4
    head_dim: int | None = None
    dropout: float = 0.0
    context_dim: int | None = None
    num_classes: int | None = None
    concat_channels: int = 0
    coordinate_channels: bool = False
    attention_positions: bool = False
    transformer_depth: int = 1
    transformer_feed_forward: bool = True

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_levels"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError, saying what to change, if any value is out of range."""
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not is_int(self.transformer_depth) or self.transformer_depth < 1:
            raise ValueError(
                f"transformer_depth must be a positive int, got {self.transformer_depth!r}."
            )
        if not isinstance(self.transformer_feed_forward, bool):
            raise ValueError(
                f"transformer_feed_forward must be true or false, "
                f"got {self.transformer_feed_forward!r}."
            )
        for name in ("coordinate_channels", "attention_positions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if not is_int(self.concat_channels) or self.concat_channels < 0:
            raise ValueError(
                f"concat_channels must be an int >= 0 (0: no concatenation), "
                f"got {self.concat_channels!r}."
            )
        for name in ("context_dim", "num_classes"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or a positive int, got {value!r}.")
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}.")
        if (
            not isinstance(self.channel_mult, tuple)
            or not self.channel_mult
            or not all(is_int(m) and m >= 1 for m in self.channel_mult)
        ):
            raise ValueError(
                f"channel_mult must be a non-empty tuple of positive ints (one per level), "
                f"got {self.channel_mult!r}."
            )
        levels = len(self.channel_mult)
        if not isinstance(self.attention_levels, tuple) or not all(
            is_int(level) and 0 <= level < levels for level in self.attention_levels
        ):
            raise ValueError(
                f"attention_levels must be a tuple of level indices in [0, {levels}) "
                f"(channel_mult has {levels} levels), got {self.attention_levels!r}."
            )
        if len(set(self.attention_levels)) != len(self.attention_levels):
            raise ValueError(f"attention_levels has repeated levels: {self.attention_levels!r}.")
        for name in ("heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or a positive int, got {value!r}.")
        if self.heads is None and self.head_dim is None:
            raise ValueError("set heads or head_dim (head_dim wins when both are set).")
        for channels in self.attention_channels:
            width = self.head_dim if self.head_dim is not None else self.heads
            if channels % width:
                what = "head_dim" if self.head_dim is not None else "heads"
                raise ValueError(
                    f"{what}={width} does not divide {channels}, the channel count of an "
                    f"attention block (levels {self.attention_levels} and the middle); choose "
                    f"a {what} that divides base_channels * channel_mult at those levels."
                )

    @property
    def num_levels(self) -> int:
        """Number of resolution levels, ``len(channel_mult)``."""
        return len(self.channel_mult)

    @property
    def downsampling_factor(self) -> int:
        """``2 ** (levels - 1)``: H and W must be multiples of it."""
        return 2 ** (self.num_levels - 1)

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (+ class) embedding, ``4 * base_channels`` as in DDPM."""
        return 4 * self.base_channels

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """Channel counts of the attention levels, then the middle's."""
        at_levels = [self.base_channels * self.channel_mult[i] for i in self.attention_levels]
        return (*at_levels, self.base_channels * self.channel_mult[-1])

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer on ``channels`` channels; head_dim wins."""
        if self.head_dim is not None:
            return channels // self.head_dim, self.head_dim
        assert self.heads is not None
        return self.heads, channels // self.heads

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists). ``coordinate_channels`` and
        ``attention_positions`` appear only when true, so the configs of U-Nets without them stay
        as they were before the fields existed (a run folder from then resumes: its model
        configuration is compared)."""
        out = dataclasses.asdict(self)
        out["channel_mult"] = list(out["channel_mult"])
        out["attention_levels"] = list(out["attention_levels"])
        for name in ("coordinate_channels", "attention_positions"):
            if not out[name]:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Build a config from ``to_dict()`` output (or a subset of it); rejects unknown keys."""
        check_keys(cls, d, "UNetConfig")
        missing = [name for name in ("in_channels", "out_channels") if name not in d]
        if missing:
            raise ValueError(f"UNetConfig needs {missing}; got keys {sorted(d)}.")
        return cls(**d)


def unet_preset(
    name: str, in_channels: int, out_channels: int | None = None, **overrides: object
) -> UNetConfig:
    """The U-Net preset ``name`` (tiny, cpu, colab-t4, gpu) for inputs with ``in_channels``.

    The presets (``ldm_mini/configs/unet/*.json``) fix widths, depth and attention; the stage
    that uses them sets ``in_channels`` / ``out_channels`` (the latent channels c, or 3 for
    pixels; ``out_channels`` defaults to ``in_channels``) and, through ``overrides``, the
    conditioning (``context_dim``, ``num_classes``, ``concat_channels``) or any other field.
    """
    from ldm_mini.configs import load_preset

    values = dict(load_preset("unet", name)["model"])
    values["in_channels"] = in_channels
    values["out_channels"] = in_channels if out_channels is None else out_channels
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown UNetConfig key(s) {unknown}; valid keys: {sorted(values)}.")
    values.update(overrides)
    return UNetConfig.from_dict(values)


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Time-conditioned residual block; x (B, C_in, H, W), emb (B, time_dim) -> (B, C_out, H, W).

    h = conv1(SiLU(GroupNorm(x))); (scale, shift) = Linear(SiLU(emb));
    h = conv2(dropout(SiLU(GroupNorm(h) * (1 + scale) + shift))), conv2 zero-initialised;
    out = skip(x) + h, skip a 1x1 conv when C_in != C_out. A fresh block is skip(x).
    """

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_ch
        self.out_channels = out_ch
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.time_proj(F.silu(emb)), "b c -> b c 1 1").chunk(2, dim=1)
        # FiLM: h = GroupNorm(h) * (1 + scale(t)) + shift(t)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        # y = skip(x) + F(x, t)
        return self.skip(x) + h


class UNetBlock(nn.Module):
    """A ResBlock, then an optional SpatialTransformer, then an optional Up/Downsample."""

    def __init__(
        self,
        res: ResBlock,
        transformer: SpatialTransformer | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res = res
        self.transformer = transformer
        self.resample = resample

    def forward(
        self, h: Tensor, emb: Tensor, context: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:
        h = self.res(h, emb)
        if self.transformer is not None:
            h = self.transformer(h, context=context, key_padding_mask=key_padding_mask)
        if self.resample is not None:
            h = self.resample(h)
        return h


# --------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, in_channels, H, W) -> (B, out_channels, H, W).

    See the module docstring for the layout. ``skip_channels`` lists the channel count of each
    skip saved on the way down (conv_in, every down ResBlock, every Downsample); the up path
    consumes them in reverse, one per up ResBlock.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(
                f"UNet needs a UNetConfig, got {type(config).__name__}; build one with "
                "UNetConfig(in_channels=..., out_channels=...) or UNetConfig.from_dict(d)."
            )
        config.validate()
        self.config = config
        base, time_dim, dropout = config.base_channels, config.time_embed_dim, config.dropout

        # t -> sinusoidal (B, base) -> MLP -> (B, 4 base)
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        # one extra row: label num_classes is the null label for classifier-free guidance
        self.class_embedding = (
            nn.Embedding(config.num_classes + 1, time_dim)
            if config.num_classes is not None
            else None
        )

        def transformer(channels: int) -> SpatialTransformer:
            heads, head_dim = config.heads_for(channels)
            return SpatialTransformer(
                channels,
                heads,
                head_dim,
                context_dim=config.context_dim,
                depth=config.transformer_depth,
                dropout=dropout,
                feed_forward=config.transformer_feed_forward,
                positions=config.attention_positions,
            )

        coordinates = 2 if config.coordinate_channels else 0
        self.conv_in = nn.Conv2d(
            config.in_channels + config.concat_channels + coordinates, base, kernel_size=3,
            padding=1,
        )
        channels = base
        skip_channels = [channels]
        self.down = nn.ModuleList()
        last = config.num_levels - 1
        for level, mult in enumerate(config.channel_mult):
            attention = level in config.attention_levels
            for _ in range(config.num_res_blocks):
                res = ResBlock(channels, base * mult, time_dim, dropout)
                channels = base * mult
                self.down.append(UNetBlock(res, transformer(channels) if attention else None))
                skip_channels.append(channels)
            if level != last:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)
        self.skip_channels = tuple(skip_channels)

        self.mid = nn.ModuleList(
            [
                UNetBlock(ResBlock(channels, channels, time_dim, dropout), transformer(channels)),
                UNetBlock(ResBlock(channels, channels, time_dim, dropout)),
            ]
        )

        pending = list(skip_channels)
        self.up = nn.ModuleList()
        for level in reversed(range(config.num_levels)):
            mult = config.channel_mult[level]
            attention = level in config.attention_levels
            for index in range(config.num_res_blocks + 1):
                res = ResBlock(channels + pending.pop(), base * mult, time_dim, dropout)
                channels = base * mult
                upsample = (
                    Upsample(channels) if level != 0 and index == config.num_res_blocks else None
                )
                self.up.append(
                    UNetBlock(res, transformer(channels) if attention else None, upsample)
                )

        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ----------------------------------------------------------------------------------
    # Input checks
    # ----------------------------------------------------------------------------------

    def _check_x(self, x: Tensor) -> None:
        config = self.config
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(
                f"x_t must be a batch (B, {config.in_channels}, H, W) "
                f"(in_channels={config.in_channels}), got {_shape_of(x)}."
            )
        height, width = x.shape[-2:]
        factor = config.downsampling_factor
        if height % factor or width % factor:
            raise ValueError(
                f"input size {height}x{width} is not divisible by {factor} = 2 ** "
                f"(levels - 1), the U-Net's total downsampling ({config.num_levels} levels); "
                f"pad or crop H and W to multiples of {factor}."
            )

    def _check_t(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            return torch.full((batch,), int(t), dtype=torch.long, device=device)
        if not torch.is_tensor(t) or t.shape != (batch,):
            raise ValueError(
                f"t must be an int or a tensor (B,) = ({batch},) of timesteps, got {_shape_of(t)}."
            )
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must hold integer timesteps (a LongTensor), got dtype {t.dtype}.")
        return t

    def _check_context(
        self, context: Tensor | None, key_padding_mask: Tensor | None, batch: int
    ) -> None:
        context_dim = self.config.context_dim
        if context_dim is None:
            if context is not None or key_padding_mask is not None:
                raise ValueError(
                    "this U-Net has no cross-attention (context_dim=None) but got a context "
                    "or key_padding_mask; drop them or build it with "
                    "UNetConfig(context_dim=...)."
                )
            return
        if context is None:
            raise ValueError(
                f"this U-Net cross-attends (context_dim={context_dim}): pass "
                f"context=tau_theta(y) of shape (B, M, {context_dim}) (for no condition, the "
                "embedding of the empty prompt)."
            )
        if not torch.is_tensor(context) or context.ndim != 3 or context.shape[0] != batch:
            raise ValueError(
                f"context must be a tensor (B, M, context_dim) = ({batch}, M, {context_dim}), "
                f"got {_shape_of(context)}."
            )
        if context.shape[-1] != context_dim:
            raise ValueError(
                f"context has {context.shape[-1]} features per token but the U-Net was built "
                f"with context_dim={context_dim}; project the context or rebuild with "
                f"context_dim={context.shape[-1]}."
            )
        if key_padding_mask is not None and (
            not torch.is_tensor(key_padding_mask)
            or key_padding_mask.dtype != torch.bool
            or key_padding_mask.shape != context.shape[:2]
        ):
            raise ValueError(
                f"key_padding_mask must be a bool tensor (B, M) = {tuple(context.shape[:2])} "
                f"like the context's first two dims, got {_shape_of(key_padding_mask)}"
                + (
                    f" of dtype {key_padding_mask.dtype}."
                    if torch.is_tensor(key_padding_mask)
                    else "."
                )
            )
        if key_padding_mask is not None and context.shape[1] > 0:
            empty = ~key_padding_mask.any(dim=1)
            if bool(empty.any()):
                raise ValueError(
                    f"key_padding_mask hides every token of sample(s) "
                    f"{empty.nonzero().flatten().tolist()}: cross-attention needs at least one "
                    "real token per sample (for no condition, pass the null condition's "
                    "embedding, e.g. the empty prompt's, with its tokens marked True)."
                )
        if context.shape[1] == 0:
            raise ValueError(
                "context has no tokens (M = 0): cross-attention needs at least one token per "
                "sample; pass the null condition's embedding for unconditional samples."
            )

    def _check_class_labels(self, class_labels: Tensor | None, batch: int) -> None:
        num_classes = self.config.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError(
                    "this U-Net is not class-conditional (num_classes=None) but got "
                    "class_labels; drop them or build it with UNetConfig(num_classes=...)."
                )
            return
        if class_labels is None:
            raise ValueError(
                f"this U-Net is class-conditional (num_classes={num_classes}): pass "
                f"class_labels (B,) in [0, {num_classes}] ({num_classes} is the null label)."
            )
        if (
            not torch.is_tensor(class_labels)
            or class_labels.shape != (batch,)
            or class_labels.is_floating_point()
            or class_labels.is_complex()
            or class_labels.dtype == torch.bool
        ):
            raise ValueError(
                f"class_labels must be an integer tensor (B,) = ({batch},), got "
                f"{_shape_of(class_labels)}"
                + (f" of dtype {class_labels.dtype}." if torch.is_tensor(class_labels) else ".")
            )
        if batch and (int(class_labels.min()) < 0 or int(class_labels.max()) > num_classes):
            raise ValueError(
                f"class_labels must lie in [0, {num_classes}] ({num_classes} is the null "
                f"label), got values in [{int(class_labels.min())}, {int(class_labels.max())}]."
            )

    def _check_concat(self, concat: Tensor | None, x: Tensor) -> None:
        concat_channels = self.config.concat_channels
        if concat_channels == 0:
            if concat is not None:
                raise ValueError(
                    "this U-Net takes no concatenated input (concat_channels=0) but got concat; "
                    "drop it or build it with UNetConfig(concat_channels=...)."
                )
            return
        expected = (x.shape[0], concat_channels, *x.shape[-2:])
        if concat is None:
            raise ValueError(
                f"this U-Net concatenates {concat_channels} channels to x_t: pass concat of "
                f"shape {expected} (e.g. the upsampled low-resolution image or a mask)."
            )
        if not torch.is_tensor(concat) or tuple(concat.shape) != expected:
            raise ValueError(
                f"concat must have shape (B, concat_channels, H, W) = {expected} like x_t, got "
                f"{_shape_of(concat)}; resize it to x_t's H and W."
            )

    # ----------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor | int,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        class_labels: Tensor | None = None,
        concat: Tensor | None = None,
        **unused: Any,
    ) -> Tensor:
        """Predict from x_t (B, in_channels, H, W) and t (B,) -> (B, out_channels, H, W).

        ``context`` (B, M, context_dim) and ``key_padding_mask`` (B, M) bool (True = real
        token, False = padding, as in :mod:`ldm_mini.attention`), required / refused by
        ``context_dim``; ``class_labels`` (B,) long in [0, num_classes] by ``num_classes``;
        ``concat`` (B, concat_channels, H, W) by ``concat_channels``.
        H and W must be multiples of ``config.downsampling_factor``.
        """
        if unused:
            raise ValueError(
                f"unknown U-Net input(s) {sorted(unused)}; it takes context, key_padding_mask, "
                "class_labels and concat."
            )
        self._check_x(x)
        batch = x.shape[0]
        t = self._check_t(t, batch, x.device)
        self._check_context(context, key_padding_mask, batch)
        self._check_class_labels(class_labels, batch)
        self._check_concat(concat, x)

        # emb = MLP(sinusoidal(t)) [+ E_class[y]]
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels)
        if concat is not None:
            # the concatenation condition: [z_t, c] along channels
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        if self.config.coordinate_channels:
            x = torch.cat([x, coordinate_grid(x)], dim=1)

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = (
                block(h, emb, context, key_padding_mask)
                if isinstance(block, UNetBlock)
                else block(h)
            )
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, context, key_padding_mask)
        for block in self.up:
            # U-Net skip: the up block sees [h, skip] along channels
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, key_padding_mask)
        return self.conv_out(F.silu(self.norm_out(h)))
