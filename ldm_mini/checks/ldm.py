"""Checkers for the exercises of notebook 06_latent_diffusion: the scale factor, the LDM
objective and spherical interpolation of noise."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder
from ldm_mini.checks._common import ExerciseCheckFailed, call, compare, passed
from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion, estimate_scale_factor, slerp
from ldm_mini.unet import UNet, unet_preset


def check_scale_factor(fn: Callable) -> None:
    """Exercise (06): ``fn(latents)`` with latents (N, c, h, w) -> s = 1 / std over every
    entry (population std, one number for all channels), as estimate_scale_factor."""
    name = "scale_factor"
    generator = torch.Generator().manual_seed(601)
    cases = [
        3.0 * torch.randn(2, 1, 2, 2, generator=generator) + 1.0,  # 8 entries: N vs N-1 matters
        0.2 * torch.randn(16, 4, 8, 8, generator=generator) - 0.5,  # small spread, nonzero mean
        torch.cat(
            [
                torch.randn(8, 1, 4, 4, generator=generator),
                10 * torch.randn(8, 1, 4, 4, generator=generator),
            ],
            dim=1,
        ),  # channels differ
    ]
    for z in cases:
        got = call(name, fn, z.clone())
        expected = estimate_scale_factor(IdentityFirstStage(z.shape[1]), [z])["scale_factor"]
        where = f"latents of shape {tuple(z.shape)}"
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            raise ExerciseCheckFailed(
                f"{name} returned a tensor of shape {tuple(got.shape)} ({where}); s is one number "
                "for all channels: take the std over every entry, not per channel"
            )
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise ExerciseCheckFailed(
                f"{name} must return a number, got {type(got).__name__}"
            ) from None
        population, sample = float(z.double().std(unbiased=False)), float(z.double().std())
        if abs(value * population - 1) < 1e-6:
            continue
        if abs(value - population) < 1e-6 * max(population, 1e-12):
            raise ExerciseCheckFailed(
                f"{name} ({where}): you returned the std itself; s is one over it"
            )
        if abs(value * sample - 1) < 1e-6:
            raise ExerciseCheckFailed(
                f"{name} ({where}): you used the sample std (dividing by N - 1); use the "
                "population std (divide by N), as estimate_scale_factor does"
            )
        if abs(value * float(z.double().pow(2).mean().sqrt()) - 1) < 1e-6:
            raise ExerciseCheckFailed(
                f"{name} ({where}): that is 1 / sqrt(E[z^2]); subtract the mean first "
                "(std = sqrt(E[z^2] - E[z]^2))"
            )
        raise ExerciseCheckFailed(f"{name} ({where}): expected s = {expected:.6f}, got {value:.6f}")
    passed(name, f"{len(cases)} cases")


def _tiny_ldm(channels: int = 1) -> tuple[LatentDiffusion, torch.nn.Module, UNet, NoiseSchedule]:
    torch.manual_seed(0)
    autoencoder = build_autoencoder(
        AutoencoderConfig(
            kind="kl",
            f=4,
            in_channels=channels,
            latent_channels=4,
            base_channels=8,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention=False,
        )
    ).eval()
    unet = UNet(unet_preset("tiny", 4, num_classes=10)).eval()
    for parameter in unet.parameters():  # a fresh U-Net outputs zeros: give it random weights
        torch.nn.init.normal_(parameter, std=0.1)
    schedule = NoiseSchedule.from_name("scaled_linear")
    images = torch.rand(8, channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():  # s = 1 / std of the latents, as in training (about 4.5 here)
        scale = float(1 / autoencoder.encode_latent(images).std())
    return LatentDiffusion(autoencoder, unet, schedule, scale), autoencoder, unet, schedule


def check_ldm_loss(fn: Callable) -> None:
    """Exercise (06): ``fn(autoencoder, unet, alphas_cumprod, scale_factor, x, labels, t,
    noise)`` -> L_LDM = mean ||eps - eps_theta(z_t, t, y)||^2 with z_0 = s E(x) (a scalar
    tensor), compared with LatentDiffusion.training_loss without condition dropout."""
    name = "ldm_loss"
    ldm, autoencoder, unet, schedule = _tiny_ldm()
    scale = float(ldm.scale_factor)
    generator = torch.Generator().manual_seed(602)
    for t_values in ([0, 999], [500, 3, 998], list(range(0, 1000, 250))):
        t = torch.tensor(t_values)
        x = torch.rand(len(t_values), 1, 32, 32, generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (len(t_values),), generator=generator)
        noise = torch.randn(len(t_values), 4, 8, 8, generator=generator)
        with torch.no_grad():
            expected = ldm.training_loss(
                ldm.encode(x), labels, drop_probability=0.0, t=t, noise=noise
            )
            got = call(
                name,
                fn,
                autoencoder,
                unet,
                schedule.alphas_cumprod.clone(),
                scale,
                x.clone(),
                labels.clone(),
                t.clone(),
                noise.clone(),
            )
            unscaled = ldm.training_loss(ldm.encode(x) / scale, labels, 0.0, t=t, noise=noise)
            z0 = ldm.encode(x)
            abar = rearrange(schedule.alphas_cumprod[t].float(), "b -> b 1 1 1")
            z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
            x0_target = ((z0 - unet(z_t, t, class_labels=labels)) ** 2).mean()
        if isinstance(got, torch.Tensor) and got.ndim != 0:
            raise ExerciseCheckFailed(
                f"{name} must return a scalar tensor, got shape {tuple(got.shape)}: take the mean "
                "over everything"
            )
        mistakes = [
            (
                unscaled,
                "it matches the loss on unscaled latents: multiply E(x) by the scale factor s",
            ),
            (x0_target, "the target is the noise eps, not z_0"),
        ]
        compare(
            name,
            got,
            expected,
            f"t = {t_values}",
            mistakes=mistakes,
            rtol=1e-4,
            atol=1e-6,
            hint="z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (square roots, abar indexed "
            "at t), the labels passed as class_labels, and the target eps",
        )
    passed(name, "at t in {0, 3, 250, 500, 750, 998, 999}")


def check_slerp(fn: Callable) -> None:
    """Exercise (06): ``fn(a, b, alphas)`` with a, b of one shape S and alphas (K,) in [0, 1]
    -> (K, *S): spherical interpolation, as ldm_mini.ldm.slerp."""
    name = "slerp"
    generator = torch.Generator().manual_seed(603)
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    for shape in [(2,), (4, 3), (4, 8, 8)]:
        a, b = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        got = call(name, fn, a.clone(), b.clone(), alphas.clone())
        expected = slerp(a, b, alphas)
        broadcast = alphas.view(-1, *[1] * len(shape))
        mistakes = [
            (
                (1 - broadcast) * a + broadcast * b,
                "that is the straight line (1 - alpha) a + alpha b; use the sines of the angle",
            ),
            (slerp(b, a, alphas), "a and b are swapped: alpha = 0 must give a"),
        ]
        compare(
            name,
            got,
            expected,
            f"a, b of shape {shape}, alphas {alphas.tolist()}",
            mistakes=mistakes,
            atol=1e-5,
            hint="theta = arccos(<a, b> / (|a| |b|)); slerp = [sin((1 - alpha) theta) a + "
            "sin(alpha theta) b] / sin(theta)",
        )
    circle = call(name, fn, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5]))
    compare(
        name,
        circle,
        torch.tensor([[0.5**0.5, 0.5**0.5]]),
        "orthogonal unit vectors at alpha = 0.5 (stays on the unit circle)",
        atol=1e-6,
    )
    passed(name, "3 shapes and a closed form")
