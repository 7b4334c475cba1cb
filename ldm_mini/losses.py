"""The first-stage autoencoder's training losses. Taught in notebook ``01_perceptual_autoencoder``.

Rombach et al. (Sec. 3.1, App. G) train the autoencoder "by a combination of a perceptual loss and
a patch-based adversarial objective", with a slight KL or VQ regularisation of the latent; the
code is CompVis' ``LPIPSWithDiscriminator`` (taming-transformers' VQLPIPSWithDiscriminator for VQ):

    L_AE = L_1 + w_p L_perc + w_reg L_reg + [step >= disc_start] w_disc lambda L_GAN

- L_1 = mean |x - x~|; L_perc = mean_b d(x_b, x~_b), d from :mod:`ldm_mini.perceptual`.
- L_reg is the KL term (kind "kl") or the codebook + commitment term (kind "vq").
- L_GAN = -E[D(x~)] with D a PatchGAN discriminator trained with the hinge loss
  L_D = 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x~))]).
- lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta), the adaptive weight of Esser et
  al. (taming transformers, eq. 7), balances the two gradients at the decoder's last layer G_L.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.configs import config_from_dict
from ldm_mini.distributed import all_reduce_mean, distributed_rank_and_size
from ldm_mini.perceptual import BACKBONES, PerceptualDistance

__all__ = [
    "AutoencoderLoss",
    "AutoencoderLossConfig",
    "PatchDiscriminator",
    "adaptive_weight",
    "generator_adversarial_loss",
    "hinge_d_loss",
    "l1_reconstruction",
]


def l2_reconstruction(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Scalar mean squared error between images of the same shape (B, C, H, W)."""
    if x.shape != reconstruction.shape:
        raise ValueError(
            f"x and reconstruction must have the same shape, got {tuple(x.shape)} "
            f"and {tuple(reconstruction.shape)}."
        )
    # L_2 = mean (x - x~)^2
    return ((x - reconstruction) ** 2).mean()


def l1_reconstruction(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Scalar mean absolute error between images of the same shape (B, C, H, W)."""
    if x.shape != reconstruction.shape:
        raise ValueError(
            f"x and reconstruction must have the same shape, got {tuple(x.shape)} "
            f"and {tuple(reconstruction.shape)}."
        )
    # L_1 = mean |x - x~|
    return (x - reconstruction).abs().mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix; taming's ``NLayerDiscriminator``): one logit per patch.

    conv4x4 s2 + LeakyReLU(0.2), then ``n_layers`` conv4x4 + norm + LeakyReLU(0.2) (stride 2
    except the last, stride 1), then conv4x4 s1 to 1 channel. Channels double per layer up to
    8 x ``base_channels``. Every conv has padding 1, so a stride-2 conv halves an even size and a
    stride-1 conv takes one pixel off: a 32x32 input gives a 2x2 logit map with n_layers=3 and
    6x6 with n_layers=2; 64x64 gives 6x6 and 14x14. The receptive field of one logit is
    70x70 pixels for n_layers=3 (the "70x70 PatchGAN") and 34x34 for n_layers=2, larger than a
    32x32 image (zero padding around it), so at 32x32 every patch sees most of the image.

    Norm: taming uses BatchNorm2d. We use GroupNorm (up to 32 groups), which normalises each
    image on its own: D's verdict on an image does not depend on the rest of its batch, real and
    fake can share one forward pass, and there are no running statistics to update during the
    generator step, keep in sync on resume, or switch between train and eval.

    Init as taming's ``weights_init``: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02),
    norm shifts 0.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}.")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base_channels
        for index in range(1, n_layers + 1):
            out_channels = base_channels * min(2**index, 8)
            stride = 1 if index == n_layers else 2
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(math.gcd(32, out_channels), out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        self.n_layers = n_layers
        self.apply(_taming_init)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input region that one output logit depends on."""
        field = 1
        # walk back from the output: r_in = (r_out - 1) * stride + kernel
        for layer in reversed(self.layers):
            if isinstance(layer, nn.Conv2d):
                field = (field - 1) * layer.stride[0] + layer.kernel_size[0]
        return field

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, 1, h', w'), one per patch, for images x (B, C, H, W) in [-1, 1]."""
        return self.layers(x)


def _taming_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Scalar hinge loss of the discriminator; 0 once D(x) >= 1 and D(x~) <= -1 everywhere."""
    # L_D = 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x~))])
    loss_real = torch.relu(1.0 - logits_real).mean()
    loss_fake = torch.relu(1.0 + logits_fake).mean()
    return 0.5 * (loss_real + loss_fake)


def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """Scalar adversarial loss of the generator (the autoencoder): raise D's logits on x~."""
    # L_GAN = -E[D(x~)]
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: Tensor,
    gan_loss: Tensor,
    last_layer: Tensor,
    delta: float = 1e-4,
    max_weight: float = 1e4,
) -> Tensor:
    """Detached scalar lambda that balances the GAN gradient against the reconstruction gradient.

    ``last_layer`` is the weight of the decoder's final layer G_L (both losses must depend on it).
    The graph is retained, so the caller can still backpropagate the total loss.
    """
    rec_grad, gan_grad = (
        torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)[0]
        for loss in (rec_loss, gan_loss)
    )
    if rec_grad is None or gan_grad is None:
        raise ValueError(
            "adaptive_weight: a loss does not depend on last_layer. Pass the weight of the "
            "decoder's final layer, the one that produced the reconstruction."
        )
    _, world_size = distributed_rank_and_size()
    if world_size > 1:  # the global batch's gradients: the mean of the processes' (linear)
        rec_grad, gan_grad = rec_grad.detach().clone(), gan_grad.detach().clone()
        all_reduce_mean([rec_grad, gan_grad], world_size)
    # lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta), clamped to [0, max_weight]
    weight = rec_grad.norm() / (gan_grad.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` do not require grad inside the block (inputs still get grads)."""
    previous = [parameter.requires_grad for parameter in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), previous, strict=True):
            parameter.requires_grad_(flag)


@dataclass
class AutoencoderLossConfig:
    """Weights of the autoencoder's loss terms (defaults follow CompVis' KL-f* configs).

    ``kl_weight`` multiplies the regularisation passed to :meth:`AutoencoderLoss.generator_loss`
    as given. CompVis sums the L1+LPIPS map over pixels (and the KL over latent entries) per
    image; here L_1 is a per-pixel mean, so with the same KL the regulariser weighs C*H*W times
    more relative to reconstruction than in CompVis (3072x for 3x32x32).
    """

    pixel_loss: str = "l1"  # "l1" (the paper's) or "l2" (to see why L2 alone blurs)
    perceptual_weight: float = 1.0
    # "efficientnet-lite0" (offline, every preset's), "lpips-vgg" / "lpips-alex" (the paper's
    # LPIPS: torchvision's ImageNet weights must be cached, or allow_download), or "auto"
    # (lpips-vgg when cached or allow_download, else efficientnet-lite0)
    perceptual_backbone: str = "auto"
    # let LPIPS download torchvision's weights (once, into torch's hub cache) when not cached
    allow_download: bool = False
    perceptual_min_size: int = 64  # images are upsampled to this size before the backbone
    kl_weight: float = 1e-6  # weight of the KL term (KL autoencoders)
    vq_weight: float = 1.0  # weight of the VQ codebook + commitment term (VQ autoencoders)
    disc_weight: float = 0.5
    disc_start: int = 0  # step at which the discriminator starts training
    # steps after disc_start during which only D trains: the generator's GAN term starts at
    # disc_start + disc_warmup, once D can tell reconstructions from images. Without it, a
    # fresh D's gradient is noise that the adaptive weight scales up to the size of L_rec's.
    disc_warmup: int = 0
    max_adaptive_weight: float = 1e4  # clamp of lambda (CompVis: 1e4)
    disc_base_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        for name in ("perceptual_weight", "kl_weight", "vq_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.perceptual_backbone not in ("auto", *BACKBONES):
            raise ValueError(
                f"perceptual_backbone must be 'auto' or one of {', '.join(map(repr, BACKBONES))}, "
                f"got {self.perceptual_backbone!r}."
            )
        if not isinstance(self.allow_download, bool):
            raise ValueError(f"allow_download must be true or false, got {self.allow_download!r}.")
        if self.pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {self.pixel_loss!r}.")
        if self.disc_start < 0 or self.disc_warmup < 0:
            raise ValueError(
                f"disc_start and disc_warmup must be >= 0, got {self.disc_start}, "
                f"{self.disc_warmup}."
            )
        if self.max_adaptive_weight <= 0:
            raise ValueError(f"max_adaptive_weight must be > 0, got {self.max_adaptive_weight}.")
        if self.disc_layers < 1 or self.disc_base_channels < 1:
            raise ValueError("disc_layers and disc_base_channels must be >= 1.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-friendly), the inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AutoencoderLossConfig:
        """Build from a dict; keys that are not fields are rejected (a typo is never ignored)."""
        return config_from_dict(cls, values, "loss")


class AutoencoderLoss(nn.Module):
    """L1 + perceptual + regulariser + adversarial terms, as CompVis' LPIPSWithDiscriminator.

    Holds the frozen :class:`~ldm_mini.perceptual.PerceptualDistance` (``perceptual``, None when
    ``perceptual_weight`` is 0) and the trainable :class:`PatchDiscriminator` (``discriminator``;
    give its parameters to a second optimiser and save its ``state_dict`` to resume).

    Args:
        config: the weights, see :class:`AutoencoderLossConfig`.
        in_channels: channels of the images (1 or 3), for the discriminator.
        kind: "kl" (regulariser weighted by ``kl_weight``) or "vq" (by ``vq_weight``).
    """

    def __init__(self, config: AutoencoderLossConfig, in_channels: int, kind: str = "kl"):
        super().__init__()
        if kind not in ("kl", "vq"):
            raise ValueError(f"kind must be 'kl' or 'vq', got {kind!r}.")
        self.config = config
        self.kind = kind
        self.regularization_weight = config.kl_weight if kind == "kl" else config.vq_weight
        self.perceptual: PerceptualDistance | None = (
            PerceptualDistance(
                config.perceptual_backbone,
                allow_download=config.allow_download,
                min_size=config.perceptual_min_size,
            )
            if config.perceptual_weight > 0
            else None
        )
        self.discriminator = PatchDiscriminator(
            in_channels, base_channels=config.disc_base_channels, n_layers=config.disc_layers
        )

    @property
    def perceptual_backbone_name(self) -> str | None:
        """The resolved perceptual backbone (to store in checkpoints), None when unused."""
        return None if self.perceptual is None else self.perceptual.backbone_name

    def generator_loss(
        self,
        x: Tensor,
        reconstruction: Tensor,
        regularization: Tensor,
        step: int,
        last_layer: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of the autoencoder and its logged terms (python floats).

        Args:
            x, reconstruction: images (B, C, H, W) in [-1, 1].
            regularization: scalar KL (kind "kl") or VQ codebook + commitment loss (kind "vq").
            step: global training step; the GAN term is on from
                ``config.disc_start + config.disc_warmup``.
            last_layer: weight of the decoder's final layer, for the adaptive weight lambda.
                Without it lambda = 1 (the GAN term is weighted by ``disc_weight`` alone).
        """
        regularization = torch.as_tensor(regularization, device=x.device)
        if regularization.ndim != 0:
            raise ValueError(
                f"regularization must be a scalar (e.g. kl.mean()), got shape "
                f"{tuple(regularization.shape)}."
            )
        pixel_fn = l1_reconstruction if self.config.pixel_loss == "l1" else l2_reconstruction
        pixel = pixel_fn(x, reconstruction)
        if self.perceptual is not None:
            perceptual = self.perceptual(x, reconstruction).mean()
        else:
            perceptual = torch.zeros((), device=x.device)
        # L_rec = L_pixel + w_p L_perc   (L_pixel: L_1 as in the paper, or L_2)
        rec_loss = pixel + self.config.perceptual_weight * perceptual
        # L = L_rec + w_reg L_reg
        loss = rec_loss + self.regularization_weight * regularization

        gan_loss = torch.zeros((), device=x.device)
        weight = torch.zeros((), device=x.device)
        if step >= self.config.disc_start + self.config.disc_warmup:
            # D is frozen here: this step trains the autoencoder, D's own grads stay untouched
            with _frozen(self.discriminator):
                gan_loss = generator_adversarial_loss(self.discriminator(reconstruction))
            if last_layer is None:
                weight = torch.ones((), device=x.device)
            elif torch.is_grad_enabled() and rec_loss.requires_grad and gan_loss.requires_grad:
                weight = adaptive_weight(
                    rec_loss, gan_loss, last_layer, max_weight=self.config.max_adaptive_weight
                )
            # else (validation, no_grad): no gradients to balance, lambda = 0 as in CompVis
            # L += w_disc lambda L_GAN
            loss = loss + self.config.disc_weight * weight * gan_loss

        logs = {
            "loss": loss.item(),
            self.config.pixel_loss: pixel.item(),
            "perceptual": perceptual.item(),
            "regularization": regularization.item(),
            "gan": gan_loss.item(),
            "adaptive_weight": weight.item(),
        }
        return loss, logs

    def discriminator_loss(
        self, x: Tensor, reconstruction: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar hinge loss of the discriminator on x (real) vs the detached reconstruction.

        Before ``config.disc_start`` it is a zero that is still connected to the discriminator's
        parameters (their grads become 0), so an optimiser step is harmless.
        """
        if step < self.config.disc_start:
            zero = sum(parameter.sum() for parameter in self.discriminator.parameters()) * 0.0
            return zero, {"disc_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
        # real and fake in one pass (GroupNorm: per-image, so this equals two passes)
        logits = self.discriminator(torch.cat([x.detach(), reconstruction.detach()], dim=0))
        logits_real, logits_fake = logits.chunk(2, dim=0)
        loss = hinge_d_loss(logits_real, logits_fake)
        logs = {
            "disc_loss": loss.item(),
            "logits_real": logits_real.mean().item(),
            "logits_fake": logits_fake.mean().item(),
        }
        return loss, logs
