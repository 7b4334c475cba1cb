"""Checkers for the exercises of notebooks 03_forward_diffusion and 04_reverse_diffusion.

Timesteps are code indices t in {0, ..., T-1} (``ldm_mini.diffusion``); every checker tries
t = 0 and t = T-1 and several schedules, shapes and dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange

from ldm_mini import samplers
from ldm_mini.checks._common import call, compare, passed
from ldm_mini.diffusion import NoiseSchedule


def _per_example(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return rearrange(values, "b -> b" + " 1" * (ndim - 1))


def _schedules() -> dict[str, NoiseSchedule]:
    return {
        "linear": NoiseSchedule.from_name("linear"),
        "cosine": NoiseSchedule.from_name("cosine"),
        "scaled_linear, zero terminal SNR": NoiseSchedule.from_name(
            "scaled_linear", zero_terminal_snr=True
        ),
        "linear, T = 10": NoiseSchedule.from_name("linear", num_timesteps=10),
    }


def _timestep_sets(batch: int, last: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "t = 0 for all": torch.zeros(batch, dtype=torch.long),
        "t = T-1 for all": torch.full((batch,), last, dtype=torch.long),
        "mixed, with 0 and T-1": torch.cat(
            [torch.tensor([0, last]), torch.randint(0, last + 1, (batch - 2,), generator=generator)]
        ),
    }


def check_q_sample(fn: Callable) -> None:
    """Exercise (03): ``fn(x0, t, noise, alphas_cumprod)`` -> x_t = sqrt(abar_t) x0 +
    sqrt(1 - abar_t) noise, one abar_t per example; x0 (B, ...), t (B,) long in [0, T-1]."""
    name = "q_sample"
    generator = torch.Generator().manual_seed(301)
    count = 0
    for schedule_name, schedule in _schedules().items():
        last = schedule.num_timesteps - 1
        for shape, dtype in (
            ((6, 2), torch.float32),
            ((5, 1, 32, 32), torch.float32),
            ((4, 8, 8, 8), torch.float32),
            ((3, 2), torch.float64),
        ):
            for label, t in _timestep_sets(shape[0], last, generator).items():
                x0 = torch.randn(shape, generator=generator, dtype=dtype)
                noise = torch.randn(shape, generator=generator, dtype=dtype)
                where = f"schedule {schedule_name!r}, x0 {tuple(shape)} {dtype}, {label}"
                expected = schedule.q_sample(x0, t, noise)
                got = call(
                    name, fn, x0.clone(), t.clone(), noise.clone(), schedule.alphas_cumprod.clone()
                )
                abar = _per_example(schedule.alphas_cumprod[t].to(dtype), x0.ndim)
                shifted = _per_example(
                    schedule.alphas_cumprod[(t - 1).clamp(min=0)].to(dtype), x0.ndim
                )
                mistakes = [
                    (
                        abar * x0 + (1 - abar) * noise,
                        "you used abar_t and 1 - abar_t; the coefficients are their square roots",
                    ),
                    (
                        shifted.sqrt() * x0 + (1 - shifted).sqrt() * noise,
                        "off by one: code index "
                        "t uses alphas_cumprod[t], not alphas_cumprod[t - 1]",
                    ),
                    (
                        (1 - abar).sqrt() * x0 + abar.sqrt() * noise,
                        "the coefficients are swapped: "
                        "sqrt(abar_t) multiplies x0, sqrt(1 - abar_t) the noise",
                    ),
                ]
                if label == "t = T-1 for all" and schedule_name.endswith("zero terminal SNR"):
                    hint = "at t = T-1 of a zero-terminal-SNR schedule abar = 0: x_t is the noise"
                else:
                    hint = (
                        "each example b uses its own alphas_cumprod[t[b]], reshaped from (B,) "
                        "to (B, 1, ..., 1) before multiplying"
                    )
                # float32 tolerance: sqrt(1 - abar_t) near t = 0 loses digits in float32
                tolerance = 1e-5 if dtype == torch.float32 else 1e-9
                compare(
                    name,
                    got,
                    expected,
                    where,
                    hint=hint,
                    mistakes=mistakes,
                    rtol=tolerance,
                    atol=tolerance,
                )
                count += 1
    passed(name, f"{count} cases: 4 schedules, 4 shapes/dtypes, t = 0, T-1 and mixed")


def _pairs(seed: int):
    """Inputs for the checkers of one-step formulas: three schedules x two shapes and dtypes x
    the timestep sets, with x0 and eps drawn from one seeded generator. Yields (schedule name,
    schedule, t, label, x0, eps)."""
    generator = torch.Generator().manual_seed(seed)
    for schedule_name in ("linear", "cosine", "linear, T = 10"):
        schedule = _schedules()[schedule_name]
        last = schedule.num_timesteps - 1
        for shape, dtype in (((6, 2), torch.float32), ((4, 3, 8, 8), torch.float64)):
            for label, t in _timestep_sets(shape[0], last, generator).items():
                x0 = torch.randn(shape, generator=generator, dtype=dtype)
                eps = torch.randn(shape, generator=generator, dtype=dtype)
                yield schedule_name, schedule, t, label, x0, eps


def check_x0_from_eps(fn: Callable) -> None:
    """Exercise (03): ``fn(x_t, t, eps, alphas_cumprod)`` -> x0 = (x_t - sqrt(1 - abar_t) eps)
    / sqrt(abar_t): q_sample solved for x0 (the prediction every sampler uses)."""
    name = "x0_from_eps"
    count = 0
    for schedule_name, schedule, t, label, x0, eps in _pairs(302):
        shape, dtype = tuple(x0.shape), x0.dtype
        x_t = schedule.q_sample(x0, t, eps)
        where = f"schedule {schedule_name!r}, x_t {tuple(shape)} {dtype}, {label}"
        expected = schedule.x0_from_eps(x_t, t, eps)
        got = call(name, fn, x_t.clone(), t.clone(), eps.clone(), schedule.alphas_cumprod.clone())
        abar = _per_example(schedule.alphas_cumprod[t].to(dtype), x_t.ndim)
        mistakes = [
            (
                (x_t - (1 - abar) * eps) / abar,
                "square roots missing: divide by sqrt(abar_t) and subtract sqrt(1 - abar_t) eps",
            ),
            ((x_t + (1 - abar).sqrt() * eps) / abar.sqrt(), "sign: subtract the noise"),
            (
                x_t * abar.sqrt() - (1 - abar).sqrt() * eps,
                "divide by sqrt(abar_t), do not multiply",
            ),
        ]
        compare(
            name,
            got,
            expected,
            where,
            mistakes=mistakes,
            rtol=1e-4,
            atol=1e-4,
            hint="x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), per example",
        )
        count += 1
    passed(name, f"{count} cases: it inverts q_sample at t = 0, T-1 and mixed")


def check_v_target(fn: Callable) -> None:
    """Exercise (04): ``fn(x0, eps, t, alphas_cumprod)`` -> v = sqrt(abar_t) eps -
    sqrt(1 - abar_t) x_0, the velocity a v-predicting network is trained to output."""
    name = "v_target"
    count = 0
    for schedule_name, schedule, t, label, x0, eps in _pairs(404):
        shape, dtype = tuple(x0.shape), x0.dtype
        where = f"schedule {schedule_name!r}, x0 {tuple(shape)} {dtype}, {label}"
        expected = schedule.v_from(x0, eps, t)
        got = call(name, fn, x0.clone(), eps.clone(), t.clone(),
                   schedule.alphas_cumprod.clone())  # fmt: skip
        abar = _per_example(schedule.alphas_cumprod[t].to(dtype), x0.ndim)
        mistakes = [
            (abar.sqrt() * x0 - (1 - abar).sqrt() * eps, "x_0 and eps swapped"),
            ((1 - abar).sqrt() * x0 - abar.sqrt() * eps, "the sign: this is -v"),
            (abar.sqrt() * eps + (1 - abar).sqrt() * x0, "sign: subtract the x_0 term"),
            (abar * eps - (1 - abar) * x0, "square roots missing on abar_t and 1 - abar_t"),
        ]
        hint = "v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, per example"
        compare(name, got, expected, where, mistakes=mistakes, rtol=1e-4, atol=1e-5,
                hint=hint)  # fmt: skip
        count += 1
    passed(name, f"{count} cases: v at t = 0, T-1 and mixed, three schedules")


def check_ddpm_step(fn: Callable) -> None:
    """Exercise (04): ``fn(schedule, x_t, t, eps_hat, noise)`` for an int t -> x_{t-1} =
    mu_theta + sigma_t z with sigma_t^2 = beta~_t (0 at t = 0); then a whole chain against
    samplers.ddpm_sample with the same noise."""
    name = "ddpm_step"
    check = NoiseSchedule.from_name("linear", num_timesteps=1000)
    for seed, t in enumerate([0, 1, 2, 137, 500, 998, 999]):
        generator = torch.Generator().manual_seed(400 + seed)
        x_t, eps_hat, noise = (torch.randn(16, 2, generator=generator) for _ in range(3))
        got = call(name, fn, check, x_t.clone(), t, eps_hat.clone(), noise.clone())
        x0_hat = check.x0_from_eps(x_t, t, eps_hat)
        mean, variance, _ = check.q_posterior(x0_hat, x_t, t)
        expected = mean + variance.sqrt() * noise
        beta = check.betas[t].item()
        mistakes = (
            [
                (
                    mean + math.sqrt(beta) * noise,
                    "sigma_t^2 must be beta~_t = beta_t (1 - "
                    "abar_{t-1}) / (1 - abar_t), not beta_t",
                )
            ]
            if t > 0
            else [(mean + math.sqrt(beta) * noise, "at t = 0 no noise is added (beta~_0 = 0)")]
        )
        mistakes.append((mean, "the noise term sigma_t z is missing"))
        compare(
            name,
            got,
            expected,
            f"t = {t}, x_t (16, 2)",
            mistakes=mistakes,
            rtol=1e-4,
            atol=1e-4,
            hint="mu = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)",
        )
    short = NoiseSchedule(torch.linspace(0.05, 0.4, 6, dtype=torch.float64))

    def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * rearrange(t + 1, "b -> b 1") / 6

    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(7))
    reference = samplers.ddpm_sample(
        fake_model, short, x_T, progress=False, generator=torch.Generator().manual_seed(8)
    ).sample
    generator, x = torch.Generator().manual_seed(8), x_T
    for t in reversed(range(short.num_timesteps)):
        eps_hat = fake_model(x, torch.full((len(x),), t))
        z = torch.randn(x.shape, generator=generator) if t > 0 else torch.zeros_like(x)
        x = call(name, fn, short, x, t, eps_hat, z)
    compare(
        name,
        x,
        reference,
        "a 6-step chain against samplers.ddpm_sample with the same noise",
        rtol=1e-4,
        atol=1e-4,
        check_dtype=False,
    )
    passed(name, "7 timesteps including 0 and T-1, and a whole chain")


def check_ddim_step(fn: Callable) -> None:
    """Exercise (04): ``fn(schedule, x_t, t, t_prev, eps_hat)`` -> x_{t_prev} with eta = 0
    (t_prev = -1 means abar = 1: x0_hat); then 10 steps against samplers.ddim_sample."""
    name = "ddim_step"
    check = NoiseSchedule.from_name("linear", num_timesteps=1000)
    pairs = [(999, 979), (999, -1), (500, 250), (250, 249), (20, 0), (1, 0), (0, -1)]
    for seed, (t, t_prev) in enumerate(pairs):
        generator = torch.Generator().manual_seed(410 + seed)
        x_t, eps_hat = (torch.randn(16, 2, generator=generator) for _ in range(2))
        got = call(name, fn, check, x_t.clone(), t, t_prev, eps_hat.clone())
        x0_hat = check.x0_from_eps(x_t, t, eps_hat)
        expected = x0_hat if t_prev < 0 else check.q_sample(x0_hat, t_prev, noise=eps_hat)
        mistakes = []
        if t_prev >= 0:
            wrong_prev = check.q_sample(
                x0_hat, t_prev + 1 if t_prev + 1 < 1000 else t_prev, noise=eps_hat
            )
            mistakes.append((wrong_prev, "off by one: use alphas_cumprod[t_prev] for the target"))
            mistakes.append(
                (
                    check.q_sample(x0_hat, t, noise=eps_hat),
                    "you noised x0_hat back to level t; the target level is t_prev",
                )
            )
        hint = (
            "t_prev = -1 means abar = 1: return x0_hat"
            if t_prev < 0
            else ("x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat with s = t_prev")
        )
        compare(
            name,
            got,
            expected,
            f"t = {t}, t_prev = {t_prev}",
            mistakes=mistakes,
            hint=hint,
            rtol=1e-4,
            atol=1e-4,
        )

    def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * rearrange(t + 1, "b -> b 1") / 1000

    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(7))
    reference = samplers.ddim_sample(
        fake_model, check, x_T, num_steps=10, eta=0.0, progress=False
    ).sample
    timesteps, x = samplers.ddim_timesteps(1000, 10), x_T
    for index, t in enumerate(timesteps):
        t_prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        x = call(name, fn, check, x, t, t_prev, fake_model(x, torch.full((len(x),), t)))
    compare(
        name,
        x,
        reference,
        f"10 steps over {timesteps} against samplers.ddim_sample",
        rtol=1e-4,
        atol=1e-4,
        check_dtype=False,
    )
    passed(name, "7 (t, t_prev) pairs including T-1 and -1, and a 10-step run")
