"""Reverse diffusion: DDPM, DDIM (and its inversion), DPM-Solver++(2M), classifier-free guidance.

Taught in notebook ``04_reverse_diffusion`` (a 2-D toy first, then images and latents);
guidance is used again in ``07_cross_attention_conditioning``.

Timesteps follow the convention of :mod:`ldm_mini.diffusion`: integers 0..T-1, where x_t is
noised with ``alphas_cumprod[t]`` and the clean sample sits "before" t = 0 (abar = 1).

Model protocol: ``model(x_t, t, **model_kwargs) -> output``, with x_t of any shape (B, ...),
t a LongTensor (B,) on x_t's device, and output shaped like x_t in the schedule's
``parameterization`` ("eps", "x0" or "v"). Every sampler converts the output to a prediction
of (x_0, eps) with :meth:`NoiseSchedule.predict_x0_and_eps`, so one sampler serves all three.

Every sampler runs under ``torch.no_grad()``, shows a ``tqdm.auto`` progress bar unless
``progress=False``, and returns a :class:`SamplerOutput`. Noise is drawn on the generator's
device (or the sampling device) and moved to the sampling device, so a seeded CPU generator
gives the same samples on any device up to floating point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ldm_mini.configs import is_int
from ldm_mini.diffusion import NoiseSchedule

__all__ = [
    "ClassifierFreeGuidance",
    "DDPM_VARIANCES",
    "SPACINGS",
    "SamplerOutput",
    "ddim_invert",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpm_solver_pp_sample",
]

DDPM_VARIANCES = ("small", "large")
SPACINGS = ("trailing", "leading", "linspace")

Model = Callable[..., Tensor]


@dataclass
class SamplerOutput:
    """What a sampler returns.

    ``sample``: the final x_0 (for :func:`ddim_invert`: the final x_T), on the sampling device.
    ``timesteps``: the model's timesteps in the order they were used.
    ``trajectory``: x_T, then every x after each step, the last being ``sample``
    (for :func:`ddim_invert`: x_0 first, x_T last). ``x0_predictions``: the predicted x_0 of
    each model call. Both lists stay empty unless ``return_trajectory=True``; their tensors
    are detached copies on the CPU.
    """

    sample: Tensor
    timesteps: list[int] = field(default_factory=list)
    trajectory: list[Tensor] = field(default_factory=list)
    x0_predictions: list[Tensor] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_schedule(schedule: object) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(
            f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; build one with "
            "NoiseSchedule.from_name('linear')."
        )


def _default_device(model: object) -> torch.device:
    """The device of the model's first parameter (or buffer), else the CPU."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def _initial_noise(
    model: object,
    shape_or_noise: Sequence[int] | Tensor,
    generator: torch.Generator | None,
    device: str | torch.device | None,
) -> Tensor:
    """x_T: the given tensor (moved to ``device`` if given), or N(0, I) noise of that shape."""
    if isinstance(shape_or_noise, Tensor):
        if shape_or_noise.ndim < 1 or shape_or_noise.shape[0] < 1:
            raise ValueError(
                f"the starting noise must have a batch dimension first, got shape "
                f"{tuple(shape_or_noise.shape)}."
            )
        if not shape_or_noise.is_floating_point():
            raise ValueError(f"the starting noise must be float, got {shape_or_noise.dtype}.")
        return shape_or_noise if device is None else shape_or_noise.to(device)
    if (
        not isinstance(shape_or_noise, Sequence)
        or len(shape_or_noise) < 1
        or not all(is_int(size) and size >= 1 for size in shape_or_noise)
    ):
        raise ValueError(
            f"shape_or_noise must be a shape such as (B, C, H, W) or (B, 2) with positive "
            f"ints, or a noise tensor; got {shape_or_noise!r}."
        )
    target = torch.device(device) if device is not None else _default_device(model)
    source = generator.device if generator is not None else target
    noise = torch.randn(tuple(int(s) for s in shape_or_noise), generator=generator, device=source)
    return noise.to(target)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _check_clip(clip_x0: float | None) -> None:
    if clip_x0 is not None and (
        isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or clip_x0 <= 0
    ):
        raise ValueError(
            f"clip_x0 must be None or a positive number (e.g. 1.0 for images in [-1, 1]), "
            f"got {clip_x0!r}."
        )


def _check_can_start(schedule: NoiseSchedule, first_t: int) -> None:
    """An eps model cannot give x_0 where abar_t = 0 (zero terminal SNR): x_0 = (x_t - eps)/0."""
    if schedule.parameterization == "eps" and schedule.alphas_cumprod[first_t] == 0:
        raise ValueError(
            f"alphas_cumprod[{first_t}] is 0 (zero terminal SNR), where an eps-prediction model "
            "cannot recover x_0 (x_0 = (x_t - eps) / 0). Train and sample with "
            "parameterization='v' or 'x0' (Lin et al. 2023)."
        )


def _timestep_batch(t: int, x: Tensor) -> Tensor:
    """The LongTensor (B,) of one timestep t for a batch x (an expanded view, read-only)."""
    return torch.tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])


def _predict(
    model: Model,
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    model_kwargs: dict[str, Any],
    clip_x0: float | None,
) -> tuple[Tensor, Tensor]:
    """(x_0, eps) predicted at (x, t); with clip_x0, x_0 is clamped and eps recomputed from it."""
    t_batch = _timestep_batch(t, x)
    # the model gets its own contiguous copy; the schedule reads the expanded view in one lookup
    output = model(x, t_batch.contiguous(), **model_kwargs)
    x0, eps = schedule.predict_x0_and_eps(output, x, t_batch)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        # eps consistent with the clipped x_0: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    return x0, eps


def _to_cpu(x: Tensor) -> Tensor:
    return x.detach().to("cpu", copy=True)


def _abar(schedule: NoiseSchedule, t: int) -> float:
    """alphas_cumprod[t] as a python float; t = -1 is the clean data, abar = 1."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


# --------------------------------------------------------------------------------------
# DDPM
# --------------------------------------------------------------------------------------


@torch.no_grad()
def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    shape_or_noise: Sequence[int] | Tensor,
    *,
    variance: str = "small",
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    clip_x0: float | None = None,
    device: str | torch.device | None = None,
) -> SamplerOutput:
    """Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2) over all T steps.

    For t = T-1, ..., 0: predict x_0 from ``model(x_t, t)``, then draw
    x_{t-1} ~ N(mu~_t(x_0, x_t), sigma_t^2) with sigma_t^2 = beta~_t (``variance="small"``,
    the posterior variance) or beta_t (``"large"``); no noise is added at t = 0.

    ``shape_or_noise``: a shape (B, ...) to draw x_T ~ N(0, I) (with ``generator``, on
    ``device``; default the model's device, else CPU), or x_T itself.
    ``clip_x0``: clamp the predicted x_0 to [-clip_x0, clip_x0] (1.0 for images); None: no clamp.
    """
    _check_schedule(schedule)
    if variance not in DDPM_VARIANCES:
        raise ValueError(
            f"unknown variance {variance!r}; choose 'small' (posterior beta~_t) or 'large' "
            "(beta_t)."
        )
    _check_clip(clip_x0)
    timesteps = list(range(schedule.num_timesteps - 1, -1, -1))
    _check_can_start(schedule, timesteps[0])
    model_kwargs = model_kwargs or {}
    x = _initial_noise(model, shape_or_noise, generator, device)
    out = SamplerOutput(sample=x, timesteps=timesteps)
    if return_trajectory:
        out.trajectory.append(_to_cpu(x))
    for t in tqdm(timesteps, desc="DDPM", disable=not progress):
        x0, _ = _predict(model, schedule, x, t, model_kwargs, clip_x0)
        t_batch = _timestep_batch(t, x)
        mean, posterior_variance, _ = schedule.q_posterior(x0, x, t_batch)
        if t > 0:
            if variance == "small":
                # sigma_t^2 = beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
                std = posterior_variance.sqrt()
            else:
                # sigma_t^2 = beta_t
                std = math.sqrt(float(schedule.betas[t]))
            # x_{t-1} = mu~_t(x_0, x_t) + sigma_t z,  z ~ N(0, I)
            x = mean + std * _randn_like(x, generator)
        else:
            # x_0 = mu~_0 = predicted x_0 (posterior variance 0)
            x = mean
        if return_trajectory:
            out.trajectory.append(_to_cpu(x))
            out.x0_predictions.append(_to_cpu(x0))
    out.sample = x
    return out


# --------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------


def ddim_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "trailing"
) -> list[int]:
    """The ``num_steps`` timesteps a few-step sampler visits, descending (noisiest first).

    With T = ``num_train_timesteps`` and n = ``num_steps`` (1 <= n <= T):

    * ``"trailing"`` (Lin et al. 2023, the default): round(T - i T/n) - 1 for i = 0..n-1;
      starts exactly at T-1 and ends at round(T/n) - 1 (T=1000, n=10: 999, 899, ..., 99).
    * ``"leading"`` (CompVis "uniform", DDIM's original): i * (T // n) for i = n-1..0
      (the CompVis ``arange(0, T, T // n)``, cut to n steps; T=1000, n=10: 900, 800, ..., 0).
    * ``"linspace"``: round(linspace(0, T-1, n)), from T-1 down to 0.

    The off-by-one of "leading" (Lin et al. 2023, Sec. 3.3): for n < T it never visits
    t = T-1. Its first step is (n-1) * (T // n), e.g. 980 for n=50, 750 for n=4, and 0 for
    n=1, yet sampling still starts from pure N(0, I) noise. The model is told the input is
    less noisy than it is, and with few steps the samples are visibly off. (CompVis and
    Stable Diffusion add an offset of 1, giving 981, which does not fix it.)
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}.")
    if not is_int(num_train_timesteps) or num_train_timesteps < 1:
        raise ValueError(
            f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}."
        )
    if not is_int(num_steps) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be an int in [1, {num_train_timesteps}] (the number of training "
            f"timesteps), got {num_steps!r}."
        )
    total, steps = int(num_train_timesteps), int(num_steps)
    if spacing == "trailing":
        # t_i = round(T - i T / n) - 1
        values = np.round(np.arange(total, 0, -total / steps)[:steps]) - 1
    elif spacing == "leading":
        # t_i = i * (T // n), descending
        values = (np.arange(steps) * (total // steps))[::-1]
    else:
        # t_i = round(linspace(0, T - 1, n)), descending
        values = np.round(np.linspace(0, total - 1, steps))[::-1]
    return [int(value) for value in values]


def check_eta(eta: float) -> None:
    """Refuse an eta outside [0, 1] (the DDIM sampler's share of DDPM's noise), with the range."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(
            f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), "
            f"got {eta!r}."
        )


def start_timesteps(timesteps: list[int], start_timestep: int) -> list[int]:
    """The steps of ``timesteps`` (descending) at or below ``start_timestep``; at least one."""
    if isinstance(start_timestep, bool) or not isinstance(start_timestep, int):
        raise ValueError(f"start_timestep must be an int, got {start_timestep!r}")
    kept = [t for t in timesteps if t <= start_timestep]
    if not kept:
        raise ValueError(
            f"start_timestep {start_timestep} is below every visited step (the last is "
            f"{timesteps[-1]}); give at least {timesteps[-1]} or use more steps"
        )
    return kept


@torch.no_grad()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    shape_or_noise: Sequence[int] | Tensor,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    clip_x0: float | None = None,
    device: str | torch.device | None = None,
    start_timestep: int | None = None,
) -> SamplerOutput:
    """DDIM (Song et al. 2021, Eq. 12) over ``ddim_timesteps(T, num_steps, spacing)``.

    From step t to the next visited step s (abar_s = 1 after the last one):

        x_s = sqrt(abar_s) x0^ + sqrt(1 - abar_s - sigma^2) eps^ + sigma z,
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).

    eta = 0 is deterministic (no generator needed, no random numbers drawn after x_T); eta = 1
    matches DDPM's posterior noise. The last step returns the predicted x_0. Arguments as in
    :func:`ddpm_sample`. ``start_timestep``: visit only the steps t <= it, and
    ``shape_or_noise`` is then x_t at the first of them (:func:`start_timesteps`; SDEdit, Meng
    et al. 2022: a partly noised image is finished by the reverse process).
    """
    _check_schedule(schedule)
    check_eta(eta)
    _check_clip(clip_x0)
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
    if start_timestep is not None:
        timesteps = start_timesteps(timesteps, start_timestep)
    _check_can_start(schedule, timesteps[0])
    model_kwargs = model_kwargs or {}
    x = _initial_noise(model, shape_or_noise, generator, device)
    out = SamplerOutput(sample=x, timesteps=timesteps)
    if return_trajectory:
        out.trajectory.append(_to_cpu(x))
    for index, t in enumerate(tqdm(timesteps, desc="DDIM", disable=not progress)):
        x0, eps = _predict(model, schedule, x, t, model_kwargs, clip_x0)
        t_next = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        abar_t, abar_next = _abar(schedule, t), _abar(schedule, t_next)
        # sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)
        sigma = eta * math.sqrt((1 - abar_next) / (1 - abar_t) * (1 - abar_t / abar_next))
        # x_s = sqrt(abar_s) x0^ + sqrt(1 - abar_s - sigma^2) eps^ + sigma z
        x = math.sqrt(abar_next) * x0 + math.sqrt(max(1 - abar_next - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
        if return_trajectory:
            out.trajectory.append(_to_cpu(x))
            out.x0_predictions.append(_to_cpu(x0))
    out.sample = x
    return out


@torch.no_grad()
def ddim_invert(
    model: Model,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    num_steps: int = 50,
    spacing: str = "trailing",
    fixed_point_iterations: int = 0,
    progress: bool = True,
    return_trajectory: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> SamplerOutput:
    """Deterministic DDIM inversion x_0 -> x_T over the same steps as :func:`ddim_sample`.

    Runs the eta = 0 update backwards: from level s (abar_s, 1 for the data) to the next
    noisier visited step t,

        x_t = sqrt(abar_t) x0^ + sqrt(1 - abar_t) eps^,
        x0^ = (x_s - sqrt(1 - abar_s) eps^) / sqrt(abar_s),

    where eps^ should be the model's eps at (x_t, t), which is unknown yet. Plain inversion
    (``fixed_point_iterations=0``) uses eps^ at (x_s, t), so ``ddim_sample`` from the result
    returns x_0 only approximately (an error that shrinks with the step size). Each fixed-point
    iteration re-evaluates eps^ at the current guess of x_t (one more model call per step) and
    makes the round trip much tighter.

    ``sample`` is x_T; ``timesteps`` ascending; ``trajectory`` from x_0 to x_T.
    """
    _check_schedule(schedule)
    if not isinstance(x0, Tensor) or x0.ndim < 1 or not x0.is_floating_point():
        raise ValueError("x0 must be a float tensor with a batch dimension first, (B, ...).")
    if not is_int(fixed_point_iterations) or fixed_point_iterations < 0:
        raise ValueError(
            f"fixed_point_iterations must be an int >= 0, got {fixed_point_iterations!r}."
        )
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)[::-1]
    model_kwargs = model_kwargs or {}
    x = x0
    out = SamplerOutput(sample=x, timesteps=timesteps)
    if return_trajectory:
        out.trajectory.append(_to_cpu(x))
    for index, t in enumerate(tqdm(timesteps, desc="DDIM inversion", disable=not progress)):
        t_prev = timesteps[index - 1] if index > 0 else -1
        abar_prev, abar_t = _abar(schedule, t_prev), _abar(schedule, t)
        guess = x
        for _ in range(fixed_point_iterations + 1):
            x0_hat, eps = _predict(model, schedule, guess, t, model_kwargs, None)
            # x0^ = (x_s - sqrt(1 - abar_s) eps^) / sqrt(abar_s)
            x0_hat = (x - math.sqrt(1 - abar_prev) * eps) / math.sqrt(abar_prev)
            # x_t = sqrt(abar_t) x0^ + sqrt(1 - abar_t) eps^
            guess = math.sqrt(abar_t) * x0_hat + math.sqrt(1 - abar_t) * eps
            if return_trajectory:
                out.x0_predictions.append(_to_cpu(x0_hat))
        x = guess
        if return_trajectory:
            out.trajectory.append(_to_cpu(x))
    out.sample = x
    return out


# --------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# --------------------------------------------------------------------------------------


@torch.no_grad()
def dpm_solver_pp_sample(
    model: Model,
    schedule: NoiseSchedule,
    shape_or_noise: Sequence[int] | Tensor,
    *,
    num_steps: int = 20,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    clip_x0: float | None = None,
    device: str | torch.device | None = None,
) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep ODE solver.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
    and h_i = lambda_{t_i} - lambda_{t_{i-1}}, each step is

        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0^_{i-1} - 1 / (2 r_i) x0^_{i-2},   r_i = h_{i-1} / h_i,

    first order (D_i = x0^_{i-1}, i.e. DDIM) on the first step and on the last step, which goes
    to sigma = 0 and returns the predicted x_0. Deterministic; uses the timesteps of
    :func:`ddim_timesteps`. Arguments as in :func:`ddim_sample`; it reaches the accuracy of
    DDIM with fewer model calls.
    """
    _check_schedule(schedule)
    _check_clip(clip_x0)
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
    _check_can_start(schedule, timesteps[0])
    model_kwargs = model_kwargs or {}
    x = _initial_noise(model, shape_or_noise, generator, device)
    out = SamplerOutput(sample=x, timesteps=timesteps)
    if return_trajectory:
        out.trajectory.append(_to_cpu(x))

    def log_snr_half(abar: float) -> float:
        # lambda = log(alpha / sigma) = 0.5 log(abar / (1 - abar)); -inf at abar = 0
        return -math.inf if abar == 0 else 0.5 * math.log(abar / (1 - abar))

    previous_x0: Tensor | None = None
    previous_h = math.nan
    for index, t in enumerate(tqdm(timesteps, desc="DPM-Solver++(2M)", disable=not progress)):
        x0, _ = _predict(model, schedule, x, t, model_kwargs, clip_x0)
        t_next = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        if t_next < 0:
            # last step to sigma = 0: x_0 = x0^
            x = x0
        else:
            abar_t, abar_next = _abar(schedule, t), _abar(schedule, t_next)
            alpha_next = math.sqrt(abar_next)
            sigma_t, sigma_next = math.sqrt(1 - abar_t), math.sqrt(1 - abar_next)
            h = log_snr_half(abar_next) - log_snr_half(abar_t)
            if previous_x0 is None or not math.isfinite(previous_h):
                # D = x0^ (first order: the DDIM step)
                direction = x0
            else:
                r = previous_h / h
                # D = (1 + 1/(2r)) x0^_{i-1} - 1/(2r) x0^_{i-2}
                direction = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            # x_{t_i} = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) D
            x = (sigma_next / sigma_t) * x - alpha_next * math.expm1(-h) * direction
            previous_h = h
        previous_x0 = x0
        if return_trajectory:
            out.trajectory.append(_to_cpu(x))
            out.x0_predictions.append(_to_cpu(x0))
    out.sample = x
    return out


# --------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------


class ClassifierFreeGuidance(nn.Module):
    """A model wrapper for classifier-free guidance (Ho & Salimans 2022), usable by any sampler.

    ``guided(x_t, t, **cond) = uncond + scale * (cond - uncond)``, where ``cond`` is
    ``model(x_t, t, **cond)`` and ``uncond`` is ``model(x_t, t, **null_kwargs)``. Both run in
    one batch of 2B: x_t, t and every tensor keyword are concatenated along dim 0
    (conditional first); non-tensor keywords must be equal in both and are passed through.
    A null tensor with batch size 1 (e.g. one empty-prompt embedding) is expanded to B.

    ``scale = 1`` is the conditional model (one call of batch B), ``scale = 0`` the
    unconditional one (one call on the null condition); LDM samples used 1.5 to 10.
    ``null_kwargs`` must have the same keys as the conditional keywords and may be None only
    when scale is 1.
    """

    def __init__(
        self, model: Model, scale: float, null_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"scale must be a number, got {scale!r}.")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}.")
        if null_kwargs is None and scale != 1:
            raise ValueError(
                f"classifier-free guidance with scale {scale} needs the null (unconditional) "
                "condition: pass null_kwargs, e.g. {'context': empty_prompt_embedding}. Only "
                "scale 1 (the plain conditional model) works without it."
            )
        if null_kwargs is not None and not isinstance(null_kwargs, dict):
            raise ValueError(f"null_kwargs must be a dict, got {type(null_kwargs).__name__}.")
        self.model = model
        self.scale = float(scale)
        self.null_kwargs = dict(null_kwargs) if null_kwargs is not None else None

    def extra_repr(self) -> str:
        keys = None if self.null_kwargs is None else sorted(self.null_kwargs)
        return f"scale={self.scale}, null_kwargs={keys}"

    def _null_for(self, model_kwargs: dict[str, Any], batch: int, device: torch.device) -> dict:
        """The null keywords, checked against the conditional ones and moved to ``device``."""
        assert self.null_kwargs is not None
        if set(model_kwargs) != set(self.null_kwargs):
            raise ValueError(
                f"null_kwargs must have the same keys as the conditional model_kwargs: got "
                f"null keys {sorted(self.null_kwargs)} and conditional keys "
                f"{sorted(model_kwargs)}."
            )
        null = {}
        for key, value in self.null_kwargs.items():
            cond = model_kwargs[key]
            if value is None and cond is not None:
                raise ValueError(
                    f"the null condition for {key!r} is None; pass a null tensor (e.g. the "
                    "embedding of the empty prompt, or the 'no class' label)."
                )
            if isinstance(cond, Tensor) != isinstance(value, Tensor):
                raise ValueError(
                    f"{key!r} is a tensor in one of the conditional and null keywords but not in "
                    "the other; both must be tensors (concatenated) or both the same non-tensor."
                )
            if isinstance(value, Tensor):
                value = value.to(device)
                if value.ndim >= 1 and value.shape[0] == 1 and batch != 1:
                    value = value.expand(batch, *value.shape[1:])
                if value.shape != cond.shape:
                    raise ValueError(
                        f"null {key!r} has shape {tuple(value.shape)} but the conditional one "
                        f"has {tuple(cond.shape)}; they must match (a batch of 1 is expanded)."
                    )
            elif value != cond:
                raise ValueError(
                    f"non-tensor keyword {key!r} differs between the conditional ({cond!r}) and "
                    f"null ({value!r}) calls; it cannot be batched. Make them equal."
                )
            null[key] = value
        return null

    def forward(self, x_t: Tensor, t: Tensor, **model_kwargs: Any) -> Tensor:
        """uncond + scale * (cond - uncond) for x_t (B, ...), t (B,)."""
        if self.scale == 1:
            return self.model(x_t, t, **model_kwargs)
        batch = x_t.shape[0]
        for key, value in model_kwargs.items():
            if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != batch):
                raise ValueError(
                    f"tensor keyword {key!r} has shape {tuple(value.shape)}; classifier-free "
                    f"guidance concatenates along dim 0, so it needs batch size {batch} first."
                )
        null = self._null_for(model_kwargs, batch, x_t.device)
        if self.scale == 0:
            return self.model(x_t, t, **null)
        joint = {
            key: torch.cat([value, null[key]]) if isinstance(value, Tensor) else value
            for key, value in model_kwargs.items()
        }
        output = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **joint)
        cond, uncond = output.chunk(2, dim=0)
        # eps~ = eps(x_t, null) + w (eps(x_t, c) - eps(x_t, null))
        return uncond + self.scale * (cond - uncond)
