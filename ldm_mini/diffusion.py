"""Forward diffusion q(x_t | x_0), noise schedules, and the denoising objective.

Taught in notebooks ``03_forward_diffusion`` (schedules, q(x_t | x_0), SNR) and
``04_reverse_diffusion`` (the parameterisations, the training loss; the samplers that use this
module live in :mod:`ldm_mini.samplers`).

Everything here works on any tensor whose first dimension is the batch: pixels (B, C, H, W),
latents (B, c, h, w), or 2-D toy points (B, 2). Per-sample coefficients of shape (B,) are
reshaped to (B, 1, ..., 1) by :func:`broadcast_per_sample` to match ``x.ndim``.

Timestep convention (used by every function in this module and in ``samplers``)
--------------------------------------------------------------------------------
Timesteps are integers ``0 .. T-1`` (``T = num_timesteps``). Index ``t`` in code is DDPM's step
``t + 1``: ``x_t`` in code is noised with ``alphas_cumprod[t]``,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   abar_t = prod_{s <= t} (1 - beta_s),

so ``t = 0`` is the least noisy level (one beta applied) and ``t = T-1`` the noisiest. The clean
data sits "before" step 0: ``alphas_cumprod_prev[0] = 1``. This is the indexing of the DDPM,
guided-diffusion, CompVis and diffusers code (the papers count 1..T).

The three things a model may predict (``parameterization``)
-----------------------------------------------------------
* ``"eps"``: the noise eps (DDPM, and the LDM paper's Eq. 1);
* ``"x0"``: the clean sample x_0;
* ``"v"``: the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022).

Any one of them, with x_t, determines the other two (exact conversions below).

Tables are computed once in float64 on the CPU; methods cast the coefficients they use to the
dtype and device of their input (so they also work on devices without float64, such as MPS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from ldm_mini.configs import Section, is_int

__all__ = [
    "MIN_SNR_GAMMA",
    "NoiseSchedule",
    "PARAMETERIZATIONS",
    "SCHEDULES",
    "WEIGHTINGS",
    "beta_schedule",
    "broadcast_per_sample",
    "rescale_zero_terminal_snr",
]

SCHEDULES = ("linear", "scaled_linear", "cosine")
PARAMETERIZATIONS = ("eps", "x0", "v")
WEIGHTINGS = (None, "min_snr")
TIMESTEP_DISTRIBUTIONS = ("uniform", "lognormal")
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023: the truncation gamma of the Min-SNR-gamma weighting

# Default arguments of each named schedule, as in the papers.
_SCHEDULE_DEFAULTS: dict[str, dict[str, float]] = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02},  # DDPM (Ho et al. 2020)
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},  # LDM (Rombach et al. 2022)
    "cosine": {"s": 0.008, "max_beta": 0.999},  # improved DDPM (Nichol & Dhariwal 2021)
}


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


def beta_schedule(name: str, num_timesteps: int = 1000, **kwargs: float) -> Tensor:
    """The variances beta_t, t = 0..T-1, of a named schedule: float64 tensor of shape (T,).

    * ``"linear"`` (DDPM): ``linspace(beta_start=1e-4, beta_end=0.02, T)``. These endpoints were
      chosen for T = 1000 and are not rescaled: with T = 100 the last abar is about 0.37, far
      from noise. Pass larger ``beta_end`` or use ``"cosine"`` for short chains.
    * ``"scaled_linear"`` (LDM paper, Stable Diffusion):
      ``linspace(sqrt(beta_start=0.00085), sqrt(beta_end=0.012), T) ** 2``.
    * ``"cosine"`` (Nichol & Dhariwal 2021): abar(t) = f(t) / f(0) with
      f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2, s = 0.008, and
      beta_t = min(1 - abar(t + 1) / abar(t), max_beta=0.999).

    Keyword arguments override the defaults above; unknown names raise ValueError.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {SCHEDULES}.")
    if not is_int(num_timesteps) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}.")
    defaults = _SCHEDULE_DEFAULTS[name]
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(
            f"schedule {name!r} has no argument(s) {unknown}; it accepts {sorted(defaults)}."
        )
    options = {**defaults, **kwargs}
    steps = num_timesteps
    if name == "linear":
        # beta_t = linspace(beta_1, beta_T)
        return torch.linspace(
            options["beta_start"], options["beta_end"], steps, dtype=torch.float64
        )
    if name == "scaled_linear":
        # beta_t = linspace(sqrt(beta_1), sqrt(beta_T))^2
        return (
            torch.linspace(
                math.sqrt(options["beta_start"]),
                math.sqrt(options["beta_end"]),
                steps,
                dtype=torch.float64,
            )
            ** 2
        )
    # cosine: f(t) = cos((t/T + s) / (1 + s) * pi/2)^2,  abar(t) = f(t) / f(0)
    s = options["s"]
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    # beta_t = min(1 - abar(t+1) / abar(t), max_beta)
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=options["max_beta"])


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Betas rescaled so that the last step is pure noise (Lin et al. 2023, Algorithm 1).

    Shifts and scales sqrt(abar_t) so that sqrt(abar_0) is unchanged and sqrt(abar_{T-1}) = 0,
    i.e. SNR(T-1) = 0: training then sees the pure noise that sampling starts from. The last
    beta becomes exactly 1. Input: betas (T,), T >= 2; output float64 (T,).
    A model trained this way should predict ``"v"`` (or ``"x0"``): eps cannot give x_0 at
    t = T-1, where x_t is the noise itself.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(
            f"betas must be a 1-D tensor with at least 2 steps, got shape {tuple(betas.shape)}."
        )
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    sqrt_alphas_cumprod = alphas_cumprod.sqrt()
    first, last = sqrt_alphas_cumprod[0].item(), sqrt_alphas_cumprod[-1].item()
    # sqrt(abar)' = (sqrt(abar) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T))
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    # alpha_t = abar_t / abar_{t-1} (alpha_1 = abar_1);  beta_t = 1 - alpha_t
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


# --------------------------------------------------------------------------------------
# Broadcasting
# --------------------------------------------------------------------------------------


def broadcast_per_sample(values: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to (B, 1, ..., 1) with ``x.ndim`` dims, to multiply x."""
    if values.ndim != 1:
        raise ValueError(f"expected per-sample values of shape (B,), got {tuple(values.shape)}.")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension; got a 0-d tensor.")
    ones = " ".join(["1"] * (x.ndim - 1))
    return rearrange(values, f"b -> b {ones}")


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor, hint: str = "") -> None:
    if not isinstance(b, Tensor):
        raise ValueError(f"{name_b} must be a tensor, got {type(b).__name__}.")
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}.{(' ' + hint) if hint else ''}"
        )


def _check_batch(x: Tensor, name: str = "x") -> int:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}.")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(
            f"{name} must have a non-empty batch dimension first, e.g. (B, C, H, W) or (B, 2); "
            f"got shape {tuple(x.shape)}."
        )
    return x.shape[0]


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device, moved to x's."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return noise.to(x.device)


# --------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------


class NoiseSchedule:
    """A discrete forward process: the betas and every table derived from them (float64, CPU).

    Args:
        betas: the variances beta_t, shape (T,), each in (0, 1); exactly 1 is allowed at the
            last step only (zero terminal SNR, see :func:`rescale_zero_terminal_snr`).
        parameterization: what the model predicts, ``"eps"``, ``"x0"`` or ``"v"``.

    Attributes (all float64 tensors of shape (T,), indexed by t as in the module docstring):
    ``betas``, ``alphas`` (1 - beta), ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev``
    (abar_{t-1}, with abar_{-1} = 1), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_variance``, ``posterior_log_variance_clipped``, ``posterior_mean_coef1`` and
    ``posterior_mean_coef2``; plus ``num_timesteps`` (T) and ``parameterization``.
    """

    def __init__(self, betas: Tensor | Sequence[float], parameterization: str = "eps") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor (T,), got shape {tuple(betas.shape)}."
            )
        if not torch.isfinite(betas).all():
            raise ValueError("betas contain NaN or inf; every beta_t must be a number in (0, 1).")
        bad = (betas <= 0) | (betas > 1)
        bad[:-1] |= betas[:-1] >= 1
        if bad.any():
            index = int(bad.nonzero()[0])
            raise ValueError(
                f"every beta_t must be in (0, 1) (exactly 1 is allowed only at the last step, "
                f"for zero terminal SNR), got betas[{index}] = {betas[index].item():.6g}."
            )
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; choose one of "
                f"{PARAMETERIZATIONS} (what the model predicts: noise, clean sample, velocity)."
            )
        self.parameterization = parameterization
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        # alpha_t = 1 - beta_t;  abar_t = prod_{s<=t} alpha_s;  abar_{-1} = 1
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)    (DDPM Eq. 7; 0 at t = 0)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # log beta~_t with beta~_0 = 0 replaced by beta~_1 (as the DDPM code does)
        if self.num_timesteps > 1:
            first = self.posterior_variance[1:2]
        else:
            first = betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first, self.posterior_variance[1:]])
        )
        # mu~_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0
        #       + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t        (DDPM Eq. 7)
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_name(
        cls,
        name: str,
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        parameterization: str = "eps",
        **schedule_kwargs: float,
    ) -> NoiseSchedule:
        """A schedule from :func:`beta_schedule`, optionally rescaled to zero terminal SNR."""
        betas = beta_schedule(name, num_timesteps, **schedule_kwargs)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas, parameterization=parameterization)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_timesteps={self.num_timesteps}, "
            f"parameterization={self.parameterization!r}, "
            f"betas={self.betas[0].item():.3g}..{self.betas[-1].item():.3g}, "
            f"alphas_cumprod={self.alphas_cumprod[0].item():.4g}.."
            f"{self.alphas_cumprod[-1].item():.4g})"
        )

    # ---------------------------------------------------------------- timesteps and tables

    def check_timesteps(self, t: int | Tensor, batch: int | None = None) -> Tensor:
        """Validate timesteps and return them as a LongTensor (on t's device, CPU for ints).

        ``t`` is an int or an integer tensor of shape () or (B,), every value in [0, T-1].
        With ``batch`` given, a scalar is expanded to (batch,) and a (B,) tensor must have
        B == batch. Without it, the shape is kept. Anything else raises ValueError.
        """
        if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
            raise ValueError("timesteps must be integers, got booleans.")
        if is_int(t):
            t = torch.tensor(int(t), dtype=torch.long)
        elif isinstance(t, Tensor):
            if t.is_floating_point() or t.is_complex():
                raise ValueError(
                    f"timesteps must be integers in [0, {self.num_timesteps - 1}], got a "
                    f"{t.dtype} tensor; use t.long() if the values are whole numbers."
                )
        else:
            raise ValueError(
                f"timesteps must be an int or an integer tensor of shape (B,), got "
                f"{type(t).__name__} {t!r}."
            )
        if t.ndim > 1:
            raise ValueError(
                f"timesteps must be a scalar or of shape (B,), one per sample; got shape "
                f"{tuple(t.shape)}."
            )
        if batch is not None:
            if t.ndim == 0:
                t = rearrange(t, " -> 1").expand(batch)
            elif t.shape[0] != batch:
                raise ValueError(
                    f"got {t.shape[0]} timesteps for a batch of {batch}; pass one timestep per "
                    "sample (shape (B,)) or a single int."
                )
        if t.numel() > 0:
            low, high = int(t.min()), int(t.max())
            if low < 0 or high > self.num_timesteps - 1:
                raise ValueError(
                    f"timesteps must be in [0, {self.num_timesteps - 1}] "
                    f"(num_timesteps={self.num_timesteps}), got values from {low} to {high}. "
                    "Index t in code is DDPM's step t + 1: the noisiest step is T - 1."
                )
        return t.long()

    def _coefficient(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """table[t] as (B, 1, ..., 1) in x's dtype and device; t already checked, shape (B,)."""
        if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:
            # one timestep expanded to the batch (an int t, or a sampler's step): look up once
            values = table[t[:1].cpu()].to(dtype=x.dtype).to(x.device).expand(t.shape[0])
        else:
            values = table[t.cpu()].to(dtype=x.dtype).to(x.device)
        return broadcast_per_sample(values, x)

    def _prepare(self, x: Tensor, t: int | Tensor, name: str = "x") -> Tensor:
        return self.check_timesteps(t, _check_batch(x, name))

    def snr(self, t: int | Tensor) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t), float64 on the CPU, shaped like t."""
        t = self.check_timesteps(t).cpu()
        alphas_cumprod = self.alphas_cumprod[t]
        # SNR(t) = abar_t / (1 - abar_t)
        return alphas_cumprod / (1.0 - alphas_cumprod)

    def sample_timesteps(
        self,
        count: int,
        generator: torch.Generator | None = None,
        distribution: str = "uniform",
        log_sigma_mean: float = -0.5,
        log_sigma_std: float = 1.2,
    ) -> Tensor:
        """``count`` training timesteps (LongTensor on the CPU), drawn with ``generator``.

        ``"uniform"``: t ~ U{0, ..., T-1} (DDPM, LDM). ``"lognormal"``: the noise level
        sigma_t = sqrt((1 - abar_t) / abar_t) is drawn log-normal, ln sigma ~ N(mean, std^2),
        and mapped to the first t whose sigma_t reaches it (Karras et al. 2022, EDM's training
        distribution: most training where the loss can still be reduced, less at the extremes;
        their P_mean = -1.2 for data of std 0.5 is -1.2 + ln 2 = -0.5 for unit-variance latents).
        """
        if distribution not in TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                f"unknown timestep distribution {distribution!r}; choose one of "
                f"{TIMESTEP_DISTRIBUTIONS}."
            )
        if distribution == "uniform":
            return torch.randint(0, self.num_timesteps, (count,), generator=generator)
        if not log_sigma_std > 0:
            raise ValueError(f"log_sigma_std must be > 0, got {log_sigma_std!r}.")
        # ln sigma ~ N(P_mean, P_std^2)
        log_sigma = log_sigma_mean + log_sigma_std * torch.randn(count, generator=generator)
        # ln sigma_t = ln sqrt((1 - abar_t) / abar_t) = -ln SNR(t) / 2, increasing in t
        log_sigmas = -0.5 * torch.log(self.snr(torch.arange(self.num_timesteps)))
        t = torch.searchsorted(log_sigmas, log_sigma.double())
        return t.clamp(0, self.num_timesteps - 1)

    # ---------------------------------------------------------------- forward process

    def q_mean_std(self, x0: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean (shape of x0) and std (B, 1, ..., 1) of q(x_t | x_0) = N(sqrt(abar) x0, 1-abar)."""
        t = self._prepare(x0, t, "x0")
        # mean = sqrt(abar_t) x_0,  std = sqrt(1 - abar_t)
        mean = self._coefficient(self.sqrt_alphas_cumprod, t, x0) * x0
        std = self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return mean, std

    def q_sample(
        self,
        x0: Tensor,
        t: int | Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in closed form; x0 (B, ...), t int or (B,), noise like x0."""
        t = self._prepare(x0, t, "x0")
        if noise is None:
            noise = _randn_like(x0, generator)
        _check_same_shape("x0", x0, "noise", noise)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        return (
            self._coefficient(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_step(
        self,
        x_prev: Tensor,
        t: int | Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One step of the chain, x_t ~ q(x_t | x_{t-1}); at t = 0, x_prev is the data x_0.

        Iterating ``q_step`` for t = 0, 1, ..., k from x_0 gives a sample of q(x_k | x_0), the
        same distribution as :meth:`q_sample` at k.
        """
        t = self._prepare(x_prev, t, "x_prev")
        if noise is None:
            noise = _randn_like(x_prev, generator)
        _check_same_shape("x_prev", x_prev, "noise", noise)
        # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
        return (
            self._coefficient(self.alphas.sqrt(), t, x_prev) * x_prev
            + self._coefficient(self.betas.sqrt(), t, x_prev) * noise
        )

    def q_posterior(
        self, x0: Tensor, x_t: Tensor, t: int | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mean, variance): (mean, variance, log_variance_clipped).

        DDPM Eq. 6-7. ``mean`` has x0's shape; ``variance`` and ``log_variance_clipped`` are
        (B, 1, ..., 1). At t = 0 the "previous" sample is x_0 itself: variance 0, mean x_0, and
        the log variance is clipped to that of t = 1 (as in the DDPM code) to stay finite.
        """
        t = self._prepare(x_t, t, "x_t")
        _check_same_shape("x0", x0, "x_t", x_t)
        # mu~_t = coef1 x_0 + coef2 x_t
        mean = (
            self._coefficient(self.posterior_mean_coef1, t, x_t) * x0
            + self._coefficient(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._coefficient(self.posterior_variance, t, x_t)
        log_variance = self._coefficient(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # ---------------------------------------------------------------- conversions

    def x0_from_eps(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """x_0 from x_t and the noise; inf where abar_t = 0 (zero terminal SNR at T-1)."""
        t = self._prepare(x_t, t, "x_t")
        _check_same_shape("x_t", x_t, "eps", eps)
        # x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        noise = self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps
        return (x_t - noise) / self._coefficient(self.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """The noise eps from x_t and x_0."""
        t = self._prepare(x_t, t, "x_t")
        _check_same_shape("x_t", x_t, "x0", x0)
        # eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)
        signal = self._coefficient(self.sqrt_alphas_cumprod, t, x_t) * x0
        return (x_t - signal) / self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_from(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """The velocity v from x_0 and eps (Salimans & Ho 2022)."""
        t = self._prepare(x0, t, "x0")
        _check_same_shape("x0", x0, "eps", eps)
        # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
        return (
            self._coefficient(self.sqrt_alphas_cumprod, t, x0) * eps
            - self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def x0_from_v(self, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
        """x_0 from x_t and v."""
        t = self._prepare(x_t, t, "x_t")
        _check_same_shape("x_t", x_t, "v", v)
        # x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v
        return (
            self._coefficient(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def eps_from_v(self, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
        """The noise eps from x_t and v."""
        t = self._prepare(x_t, t, "x_t")
        _check_same_shape("x_t", x_t, "v", v)
        # eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v
        return (
            self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + self._coefficient(self.sqrt_alphas_cumprod, t, x_t) * v
        )

    def predict_x0_and_eps(
        self, model_output: Tensor, x_t: Tensor, t: int | Tensor
    ) -> tuple[Tensor, Tensor]:
        """(x_0, eps) implied by a model output in this schedule's ``parameterization``."""
        _check_same_shape(
            "x_t",
            x_t,
            "model_output",
            model_output,
            "The model must return a tensor shaped like its input x_t.",
        )
        if self.parameterization == "eps":
            return self.x0_from_eps(x_t, t, model_output), model_output
        if self.parameterization == "x0":
            return model_output, self.eps_from_x0(x_t, t, model_output)
        return self.x0_from_v(x_t, t, model_output), self.eps_from_v(x_t, t, model_output)

    def target(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """What the model should output for x_t = q_sample(x0, t, eps): eps, x0 or v."""
        _check_same_shape("x0", x0, "eps", eps)
        if self.parameterization == "eps":
            return eps
        if self.parameterization == "x0":
            return x0
        return self.v_from(x0, eps, t)

    # ---------------------------------------------------------------- training objective

    def min_snr_weight(self, t: int | Tensor, gamma: float = MIN_SNR_GAMMA) -> Tensor:
        """Per-sample Min-SNR-gamma loss weights (float64, CPU) for this parameterization.

        Hang et al. 2023 weight the x_0 error by min(SNR, gamma). An eps error is SNR times an
        x_0 error, a v error (SNR + 1) times, so the weight on the MSE of the target is
        min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1)
        for v. At SNR = 0 (zero terminal SNR) the eps weight is its limit, 1.
        """
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma <= 0:
            raise ValueError(f"gamma must be a positive number, got {gamma!r}.")
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        if self.parameterization == "eps":
            # w = min(SNR, gamma) / SNR = min(1, gamma / SNR)
            return (gamma / snr).clamp(max=1.0)
        if self.parameterization == "x0":
            # w = min(SNR, gamma)
            return clipped
        # w = min(SNR, gamma) / (SNR + 1)
        return clipped / (snr + 1.0)

    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        t: int | Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        weighting: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        min_snr_gamma: float = MIN_SNR_GAMMA,
    ) -> Tensor:
        """The simple denoising loss (LDM Eq. 1 / DDPM L_simple), a scalar with gradients.

        Draws t uniformly in [0, T) (when None) and eps ~ N(0, I) (when None), both with
        ``generator``; noises x0 with :meth:`q_sample`; calls ``model(x_t, t, **model_kwargs)``
        (t a LongTensor (B,) on x0's device) and returns the mean squared error to
        :meth:`target`. ``weighting="min_snr"`` weights each sample's MSE by
        :meth:`min_snr_weight` (Hang et al. 2023).
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
        batch = _check_batch(x0, "x0")
        if t is None:
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)
        t = self.check_timesteps(t, batch).to(x0.device)
        if noise is None:
            noise = _randn_like(x0, generator)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t, **(model_kwargs or {}))
        if not isinstance(output, Tensor) or output.shape != x0.shape:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"the model output must have the shape of x0 {tuple(x0.shape)}, got {shape}; "
                "check the model's output channels (they must equal the input channels)."
            )
        target = self.target(x0, noise, t)
        # L = E_{t, x_0, eps} || target - model(x_t, t) ||^2
        per_sample = rearrange((output - target) ** 2, "b ... -> b (...)").mean(dim=1)
        if weighting == "min_snr":
            weights = self.min_snr_weight(t, min_snr_gamma).to(per_sample.dtype)
            per_sample = per_sample * weights.to(per_sample.device)
        return per_sample.mean()


# --------------------------------------------------------------------------------------
# The diffusion section of a config
# --------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig(Section):
    """The noise schedule (see :func:`ldm_mini.diffusion.beta_schedule`)."""

    schedule: str = "scaled_linear"
    num_timesteps: int = 1000
    parameterization: str = "eps"
    # None: the plain MSE to the target (LDM Eq. 2); "min_snr": Min-SNR-gamma (Hang et al.)
    weighting: str | None = None
    min_snr_gamma: float = 5.0
    # how training draws t: "uniform", or "lognormal" in the noise level (EDM's, see
    # NoiseSchedule.sample_timesteps) with ln sigma ~ N(log_sigma_mean, log_sigma_std^2)
    timesteps: str = "uniform"
    log_sigma_mean: float = -0.5
    log_sigma_std: float = 1.2

    def __post_init__(self) -> None:
        if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                f"diffusion.timesteps must be one of {list(TIMESTEP_DISTRIBUTIONS)}, "
                f"got {self.timesteps!r}"
            )
        if not self.log_sigma_std > 0:
            raise ValueError(f"diffusion.log_sigma_std must be > 0, got {self.log_sigma_std!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"diffusion.weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if not self.min_snr_gamma > 0:
            raise ValueError(f"diffusion.min_snr_gamma must be > 0, got {self.min_snr_gamma!r}")

    def build(self) -> NoiseSchedule:
        return NoiseSchedule.from_name(
            self.schedule, self.num_timesteps, parameterization=self.parameterization
        )
