"""Checkers for the exercises of notebooks 01_perceptual_autoencoder and 02_vector_quantization.

Each runs the learner's function next to the package's version (``ldm_mini.autoencoder``,
``ldm_mini.losses``) on seeded inputs and raises :class:`ExerciseCheckFailed` with what is
wrong; it prints one line when everything matches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ldm_mini.autoencoder import DiagonalGaussianDistribution, VectorQuantizer
from ldm_mini.checks._common import ExerciseCheckFailed, call, compare, passed
from ldm_mini.losses import hinge_d_loss


def _moments(generator: torch.Generator, shape: tuple[int, ...]) -> DiagonalGaussianDistribution:
    """A posterior whose mean and logvar have ``shape`` (B, c, h, w)."""
    batch, channels, height, width = shape
    moments = torch.randn(batch, 2 * channels, height, width, generator=generator) * 1.5
    return DiagonalGaussianDistribution(moments)


def check_kl(fn: Callable) -> None:
    """Exercise (01): ``fn(mean, logvar)`` -> KL(N(mean, exp(logvar)) || N(0, I)) per image,
    summed over (c, h, w): shape (B,). Compared with DiagonalGaussianDistribution.kl."""
    name = "kl"
    generator = torch.Generator().manual_seed(101)
    cases = [(4, 16, 8, 8), (1, 2, 3, 5), (3, 8, 4, 4)]
    for shape in cases:
        posterior = _moments(generator, shape)
        mean, logvar = posterior.mean, posterior.logvar
        got = call(name, fn, mean.clone(), logvar.clone())
        elementwise_var = mean.pow(2) + logvar.exp() - 1 - logvar
        mistakes = [
            (
                0.5 * elementwise_var.flatten(1).mean(1),
                "you averaged over (c, h, w); the KL of independent dimensions is their sum",
            ),
            (elementwise_var.flatten(1).sum(1), "the factor 1/2 is missing"),
            (
                0.5 * (mean.pow(2) + logvar - 1 - logvar.exp()).flatten(1).sum(1),
                "sigma^2 and log sigma^2 are swapped: sigma^2 = exp(logvar), log sigma^2 = logvar",
            ),
            (
                0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(),
                "return one number per image (shape (B,)), not the sum over the batch",
            ),
            (
                0.5 * (mean + logvar.exp() - 1 - logvar).flatten(1).sum(1),
                "the mean enters squared: mu^2",
            ),
        ]
        compare(
            name,
            got,
            posterior.kl(),
            f"mean and logvar of shape {shape}",
            hint="KL = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) over c, h, w",
            mistakes=mistakes,
            rtol=1e-4,
            atol=1e-4,
        )
    # closed form: the prior itself has KL 0
    zero = call(name, fn, torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2))
    compare(name, zero, torch.zeros(2), "mean 0, logvar 0 (the prior itself: KL must be 0)")
    passed(name, f"{len(cases)} shapes and the closed form KL(N(0, I) || N(0, I)) = 0")


def check_reparameterize(fn: Callable) -> None:
    """Exercise (01): ``fn(mean, logvar, eps)`` -> z = mean + exp(logvar / 2) * eps, which must
    let gradients reach mean and logvar."""
    name = "reparameterize"
    generator = torch.Generator().manual_seed(102)
    for shape in [(4, 8, 8, 8), (1, 3, 2, 2)]:
        posterior = _moments(generator, shape)
        eps = torch.randn(shape, generator=generator)
        mean = posterior.mean.clone().requires_grad_(True)
        logvar = posterior.logvar.clone().requires_grad_(True)
        got = call(name, fn, mean, logvar, eps.clone())
        expected = posterior.mean + posterior.std * eps
        mistakes = [
            (
                posterior.mean + posterior.var * eps,
                "you scaled eps by the variance exp(logvar); "
                "scale it by the standard deviation exp(logvar / 2)",
            ),
            (
                posterior.mean + posterior.logvar * eps,
                "logvar is log sigma^2: sigma = exp(logvar / 2)",
            ),
            (
                posterior.mean + torch.exp(-0.5 * posterior.logvar) * eps,
                "sign: sigma = exp(+logvar / 2)",
            ),
        ]
        compare(
            name,
            got,
            expected,
            f"shape {shape}",
            mistakes=mistakes,
            hint="z = mu + sigma * eps with sigma = exp(logvar / 2)",
            rtol=1e-4,
            atol=1e-5,
        )
        if not got.requires_grad:
            raise ExerciseCheckFailed(
                f"{name}: no gradient reaches mean or logvar (the result does not require grad); "
                "compute z from them with tensor operations (no .detach(), no torch.no_grad())"
            )
        got.sum().backward()
        if mean.grad is None or logvar.grad is None:
            raise ExerciseCheckFailed(
                f"{name}: no gradient reaches mean or logvar; compute z from them with tensor "
                "operations (no .detach(), no torch.no_grad(), no sampling with torch.normal)"
            )
        compare(
            name,
            logvar.grad,
            0.5 * posterior.std * eps,
            "d z / d logvar",
            hint="the gradient with respect to logvar must be 0.5 * sigma * eps",
            rtol=1e-4,
            atol=1e-5,
        )
    passed(name, "values and gradients on 2 shapes")


def check_hinge_d_loss(fn: Callable) -> None:
    """Exercise (01): ``fn(logits_real, logits_fake)`` -> the discriminator's scalar hinge loss
    0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x~))]), as ldm_mini.losses.hinge_d_loss."""
    name = "hinge_d_loss"
    generator = torch.Generator().manual_seed(103)
    for shape in [(4, 1, 6, 6), (2, 1, 3, 3)]:
        real = torch.randn(shape, generator=generator) * 2
        fake = torch.randn(shape, generator=generator) * 2
        got = call(name, fn, real.clone(), fake.clone())
        mistakes = [
            (
                0.5 * (torch.relu(1 + real).mean() + torch.relu(1 - fake).mean()),
                "real and fake "
                "are swapped: D should push real logits up (relu(1 - D(x))) and fake ones down "
                "(relu(1 + D(x~)))",
            ),
            (
                torch.relu(1 - real).mean() + torch.relu(1 + fake).mean(),
                "the factor 1/2 is missing",
            ),
            (
                0.5 * ((1 - real).mean() + (1 + fake).mean()),
                "the relu is missing: logits already past the margin must cost nothing",
            ),
            (
                0.5 * (torch.relu(1 - real).sum() + torch.relu(1 + fake).sum()),
                "take the mean over the patches and the batch, not the sum",
            ),
        ]
        compare(
            name,
            got,
            hinge_d_loss(real, fake),
            f"patch logits of shape {shape}",
            mistakes=mistakes,
            rtol=1e-5,
            atol=1e-6,
        )
    # closed form: a perfect discriminator (past both margins) has loss 0
    perfect = call(name, fn, torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -3.0))
    compare(name, perfect, torch.tensor(0.0), "D(x) = 2 everywhere, D(x~) = -3 everywhere (loss 0)")
    passed(name, "2 shapes and the closed form for a perfect discriminator")


def _quantizer(generator: torch.Generator, size: int, dim: int) -> VectorQuantizer:
    quantizer = VectorQuantizer(codebook_size=size, dim=dim)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.randn(size, dim, generator=generator))
    return quantizer


def check_nearest_codes(fn: Callable) -> None:
    """Exercise (02): ``fn(z, codebook)`` with z (B, c, h, w) and codebook (K, c) -> the index
    of the nearest code (squared L2) at every position, (B, h, w) long."""
    name = "nearest_codes"
    generator = torch.Generator().manual_seed(201)
    for batch, dim, height, width, size in [(3, 4, 5, 5, 16), (2, 8, 4, 6, 64), (1, 2, 1, 1, 3)]:
        quantizer = _quantizer(generator, size, dim)
        codebook = quantizer.embedding.weight.detach()
        z = torch.randn(batch, dim, height, width, generator=generator)
        got = call(name, fn, z.clone(), codebook.clone())
        expected = quantizer.nearest_codes(z)
        where = f"z {tuple(z.shape)}, codebook {tuple(codebook.shape)}"
        if isinstance(got, torch.Tensor) and got.shape == (batch * height * width,):
            raise ExerciseCheckFailed(
                f"{name} returned a flat vector of {got.numel()} indices ({where}); rearrange it "
                "to (B, h, w) with the same order as the flattening"
            )
        flat = rearrange(z, "b c h w -> (b h w) c")
        farthest = torch.cdist(flat, codebook).argmax(1)
        transposed = rearrange(expected, "b h w -> b w h") if height == width else None
        mistakes = [
            (
                rearrange(farthest, "(b h w) -> b h w", b=batch, h=height),
                "you took the farthest code (argmax); the nearest is the argmin of the distance",
            )
        ]
        if transposed is not None:
            mistakes.append(
                (
                    transposed,
                    "h and w are swapped: flatten with 'b c h w -> (b h w) c' "
                    "and unflatten with the same order",
                )
            )
        compare(
            name,
            got,
            expected,
            where,
            mistakes=mistakes,
            check_dtype=False,
            hint="distance_k = ||z||^2 - 2 z . e_k + ||e_k||^2 per position, argmin over k",
        )
        if got.dtype not in (torch.int64, torch.int32):
            raise ExerciseCheckFailed(f"{name} must return integer indices, got {got.dtype}")
    passed(name, "3 latent and codebook sizes")


def check_quantize(fn: Callable) -> None:
    """Exercise (02): ``fn(z, codebook, beta)`` -> (z_q with the straight-through estimator,
    vq_loss = ||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2) as VectorQuantizer does it."""
    name = "quantize"
    generator = torch.Generator().manual_seed(202)
    for batch, dim, height, width, size, beta in [(2, 4, 5, 5, 16, 0.25), (1, 3, 2, 3, 8, 1.0)]:
        quantizer = _quantizer(generator, size, dim)
        z = torch.randn(batch, dim, height, width, generator=generator)
        weights = torch.randn(z.shape, generator=generator)
        mine_z = z.clone().requires_grad_(True)
        codebook = quantizer.embedding.weight.detach().clone().requires_grad_(True)
        result = call(name, fn, mine_z, codebook, beta)
        if not isinstance(result, tuple) or len(result) != 2:
            raise ExerciseCheckFailed(
                f"{name} must return a pair (z_q, vq_loss), got {type(result).__name__}"
            )
        z_q, vq_loss = result
        reference_z = z.clone().requires_grad_(True)
        expected_z_q, losses, _ = quantizer(reference_z)
        expected_loss = losses["codebook_loss"] + beta * losses["commitment_loss"]
        where = f"z {tuple(z.shape)}, K = {size}, beta = {beta}"
        compare(
            name + " (z_q)",
            z_q,
            expected_z_q.detach(),
            where,
            hint="the forward value of z_q is the nearest code at each position",
        )
        commitment = F.mse_loss(z, expected_z_q.detach())
        mistakes = [
            (
                losses["codebook_loss"] + losses["commitment_loss"],
                "beta must weight only the commitment term ||z - sg[z_q]||^2",
            ),
            (
                beta * losses["codebook_loss"] + commitment,
                "beta weights the wrong term: it goes on the commitment loss ||z - sg[z_q]||^2",
            ),
        ]
        if beta == 1.0:
            mistakes = []
        compare(
            name + " (vq_loss)",
            vq_loss,
            expected_loss.detach(),
            where,
            mistakes=mistakes,
            rtol=1e-5,
            atol=1e-6,
        )
        # gradients: straight through for z_q; the loss moves z by beta * commitment only
        if not z_q.requires_grad:
            raise ExerciseCheckFailed(
                f"{name}: z_q does not require grad, so no gradient reaches the encoder: use the "
                "straight-through estimator z_q = z + (z_q - z).detach()"
            )
        (z_q * weights).sum().backward()
        if mine_z.grad is None or not torch.allclose(mine_z.grad, weights, atol=1e-6):
            raise ExerciseCheckFailed(
                f"{name}: d(sum(w * z_q))/dz must equal w (the straight-through estimator "
                "z_q = z + (z_q - z).detach()); "
                + ("no gradient reached z" if mine_z.grad is None else "it does not")
            )
        mine_z.grad = None
        codebook.grad = None
        if not vq_loss.requires_grad:
            raise ExerciseCheckFailed(
                f"{name}: vq_loss does not require grad: compute it from z "
                "and the codebook without .detach() on both"
            )
        vq_loss.backward()
        expected_grad = torch.autograd.grad(
            beta * F.mse_loss(reference_z, expected_z_q.detach()), reference_z
        )[0]
        if mine_z.grad is None or not torch.allclose(mine_z.grad, expected_grad, atol=1e-6):
            raise ExerciseCheckFailed(
                f"{name}: the gradient of vq_loss with respect to z must come from the "
                "commitment term beta ||z - sg[z_q]||^2 only: detach z in the codebook term"
            )
        if codebook.grad is None or not codebook.grad.abs().sum() > 0:
            raise ExerciseCheckFailed(
                f"{name}: vq_loss must move the codebook (through ||sg[z] - z_q||^2); take z_q "
                "from the codebook with indexing, not with a detached copy"
            )
    passed(name, "forward values, the straight-through gradient and the loss gradients")
