"""The forward process: schedules, q(x_t | x_0), the posterior, conversions, the training loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ldm_mini.diffusion import (
    MIN_SNR_GAMMA,
    SCHEDULES,
    NoiseSchedule,
    beta_schedule,
    broadcast_per_sample,
    rescale_zero_terminal_snr,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def schedule_for(parameterization: str = "eps", name: str = "linear", steps: int = 1000):
    return NoiseSchedule.from_name(name, steps, parameterization=parameterization)


# ---------------------------------------------------------------------------- schedules


def test_linear_schedule_is_ddpm_and_its_final_alphas_cumprod() -> None:
    betas = beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    # abar_{T-1} = prod_t (1 - beta_t), computed independently in plain Python
    independent = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(1000))
    final = NoiseSchedule(betas).alphas_cumprod[-1].item()
    assert final == pytest.approx(independent, rel=1e-10)
    assert 4.0355e-5 < final < 4.0360e-5  # 4.03583e-5: the "about 4e-5" of DDPM


def test_scaled_linear_schedule_is_the_ldm_one() -> None:
    betas = beta_schedule("scaled_linear", 1000)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # linear in sqrt(beta), not in beta
    steps = torch.diff(betas.sqrt())
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9, atol=0)
    assert not torch.allclose(torch.diff(betas), torch.diff(betas)[0].expand(999), rtol=1e-3)


def test_cosine_schedule_follows_its_alpha_bar_function() -> None:
    schedule = NoiseSchedule.from_name("cosine", 1000)
    alphas_cumprod = schedule.alphas_cumprod
    assert (torch.diff(alphas_cumprod) < 0).all()
    assert 0 < alphas_cumprod[-1].item() < 1e-8
    assert schedule.betas.max().item() == pytest.approx(0.999)  # the clip, at the last step
    assert (schedule.betas[:-1] < 0.999).all()

    # abar_t = f(t + 1) / f(0), f(u) = cos((u / T + s) / (1 + s) * pi / 2)^2, before the clip
    def f(u: float) -> float:
        return math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900, 998):
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_schedule_keyword_overrides_and_unknown_names() -> None:
    betas = beta_schedule("linear", 10, beta_start=0.1, beta_end=0.2)
    assert torch.allclose(betas, torch.linspace(0.1, 0.2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'.*linear"):
        beta_schedule("quadratic")
    with pytest.raises(ValueError, match=r"no argument\(s\) \['s'\]"):
        beta_schedule("linear", 10, s=0.1)
    with pytest.raises(ValueError, match="num_timesteps must be a positive int"):
        beta_schedule("cosine", 0)
    assert set(SCHEDULES) == {"linear", "scaled_linear", "cosine"}


@pytest.mark.parametrize("name", SCHEDULES)
def test_zero_terminal_snr_rescale(name: str) -> None:
    original = NoiseSchedule.from_name(name, 1000)
    rescaled = NoiseSchedule.from_name(name, 1000, zero_terminal_snr=True, parameterization="v")
    assert rescaled.alphas_cumprod[-1].item() == 0.0
    assert rescaled.betas[-1].item() == 1.0
    assert rescaled.snr(999).item() == 0.0
    assert rescaled.alphas_cumprod[0].item() == pytest.approx(
        original.alphas_cumprod[0].item(), rel=1e-12
    )
    # sqrt(abar) is shifted and scaled: an affine function of the original sqrt(abar)
    old, new = original.sqrt_alphas_cumprod, rescaled.sqrt_alphas_cumprod
    slope = (new[0] - new[-1]) / (old[0] - old[-1])
    assert torch.allclose(new, new[-1] + slope * (old - old[-1]), rtol=0, atol=1e-12)
    assert (torch.diff(rescaled.alphas_cumprod) < 0).all()


def test_rescale_zero_terminal_snr_rejects_too_short_betas() -> None:
    with pytest.raises(ValueError, match="at least 2 steps"):
        rescale_zero_terminal_snr(torch.tensor([0.5]))


# ---------------------------------------------------------------------------- the schedule


def test_schedule_tables() -> None:
    schedule = schedule_for(steps=10)
    assert schedule.num_timesteps == 10
    for name in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance"):
        table = getattr(schedule, name)
        assert table.dtype == torch.float64 and table.shape == (10,), name
    assert schedule.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(1 - schedule.betas, 0))
    snr = schedule.snr(torch.arange(10))
    assert torch.allclose(snr, schedule.alphas_cumprod / (1 - schedule.alphas_cumprod))
    assert (torch.diff(snr) < 0).all()
    assert "num_timesteps=10" in repr(schedule)


@pytest.mark.parametrize(
    ("betas", "message"),
    [
        ([0.0, 0.1], r"in \(0, 1\).*betas\[0\] = 0"),
        ([0.1, -0.1], r"betas\[1\] = -0.1"),
        ([0.5, 1.2], r"betas\[1\] = 1.2"),
        ([1.0, 0.1], r"exactly 1 is allowed only at the last step.*betas\[0\] = 1"),
        ([0.1, float("nan")], "NaN"),
        ([[0.1, 0.2]], "1-D"),
        ([], "non-empty"),
    ],
)
def test_bad_betas_are_rejected(betas: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


def test_beta_one_is_allowed_at_the_last_step_and_parameterization_is_checked() -> None:
    schedule = NoiseSchedule([0.1, 0.2, 1.0], parameterization="v")
    assert schedule.alphas_cumprod[-1].item() == 0.0
    with pytest.raises(ValueError, match="unknown parameterization 'score'.*'eps', 'x0', 'v'"):
        NoiseSchedule([0.1, 0.2], parameterization="score")


# ---------------------------------------------------------------------------- timesteps


def test_check_timesteps_accepts_ints_and_integer_tensors() -> None:
    schedule = schedule_for(steps=10)
    assert torch.equal(schedule.check_timesteps(3, 4), torch.full((4,), 3))
    assert torch.equal(schedule.check_timesteps(np.int64(9), 2), torch.tensor([9, 9]))
    t = schedule.check_timesteps(torch.tensor([0, 9], dtype=torch.int32), 2)
    assert t.dtype == torch.long and t.tolist() == [0, 9]
    assert schedule.check_timesteps(torch.tensor(5)).shape == ()


@pytest.mark.parametrize(
    ("t", "batch", "message"),
    [
        (torch.tensor([1.0, 2.0]), 2, "must be integers.*torch.float32.*t.long()"),
        (2.0, 2, "int or an integer tensor.*float"),
        (True, 2, "got booleans"),
        (-1, 2, r"in \[0, 9\].*from -1 to -1"),
        (torch.tensor([0, 10]), 2, r"in \[0, 9\] \(num_timesteps=10\).*from 0 to 10"),
        (torch.zeros(2, 2, dtype=torch.long), 2, r"scalar or of shape \(B,\).*\(2, 2\)"),
        (torch.tensor([1, 2, 3]), 2, "got 3 timesteps for a batch of 2"),
    ],
)
def test_bad_timesteps_are_rejected(t: object, batch: int, message: str) -> None:
    schedule = schedule_for(steps=10)
    with pytest.raises(ValueError, match=message):
        schedule.check_timesteps(t, batch)
    with pytest.raises(ValueError, match=message):  # and through any method that takes t
        schedule.q_sample(torch.zeros(batch, 3), t)


# ---------------------------------------------------------------------------- q(x_t | x_0)


@pytest.mark.parametrize("shape", [(5,), (5, 2), (5, 3, 4, 4), (5, 1, 2, 3, 3)])
def test_q_sample_closed_form_on_any_shape(shape: tuple[int, ...]) -> None:
    schedule = schedule_for()
    x0, noise = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    x_t = schedule.q_sample(x0, t, noise)
    assert x_t.shape == shape and x_t.dtype == torch.float64
    for b, step in enumerate(t.tolist()):
        abar = math.prod(1 - beta for beta in schedule.betas[: step + 1].tolist())
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, sample by sample
        expected = math.sqrt(abar) * x0[b] + math.sqrt(1 - abar) * noise[b]
        assert torch.allclose(x_t[b], expected, rtol=1e-12, atol=1e-12)
    mean, std = schedule.q_mean_std(x0, t)
    assert mean.shape == shape and std.shape == (5,) + (1,) * (len(shape) - 1)
    assert torch.allclose(x_t, mean + std * noise)
    assert broadcast_per_sample(t, x0).shape == (5,) + (1,) * (len(shape) - 1)


def test_q_sample_keeps_dtype_and_uses_the_generator() -> None:
    schedule = schedule_for()
    x0 = torch.randn(4, 2)
    first = schedule.q_sample(x0, 10, generator=torch.Generator().manual_seed(1))
    second = schedule.q_sample(x0, 10, generator=torch.Generator().manual_seed(1))
    assert first.dtype == torch.float32 and torch.equal(first, second)
    assert schedule.q_sample(x0.half(), 10).dtype == torch.float16
    with pytest.raises(ValueError, match=r"x0 and noise must have the same shape.*\(4, 2\).*\(4,"):
        schedule.q_sample(x0, 10, torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch dimension"):
        schedule.q_sample(torch.tensor(1.0), 0)


def test_closed_form_q_sample_matches_iterating_q_step_in_distribution() -> None:
    """Iterating x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps from x_0 gives q(x_t | x_0)."""
    schedule = schedule_for()
    generator = torch.Generator().manual_seed(0)
    samples = 20_000
    x0 = torch.rand(samples, 2, generator=generator) * 2 - 1  # fixed, different per sample
    checkpoints = {0, 9, 99, 499, 999}
    x = x0
    for t in range(1000):
        x = schedule.q_step(x, t, generator=generator)
        if t not in checkpoints:
            continue
        mean, std = schedule.q_mean_std(x0, t)
        closed = schedule.q_sample(x0, t, generator=generator)
        for draw in (x, closed):
            residual = (draw - mean) / std  # should be N(0, 1)
            assert abs(residual.mean().item()) < 4 / math.sqrt(residual.numel()), t
            assert residual.std().item() == pytest.approx(1.0, abs=0.015), t
            # and independent of x_0 (no leftover signal)
            correlation = torch.corrcoef(torch.stack([residual.flatten(), x0.flatten()]))[0, 1]
            assert abs(correlation.item()) < 0.02, t


# ---------------------------------------------------------------------------- posterior


def test_q_posterior_matches_the_gaussian_product_and_the_eps_form() -> None:
    schedule = schedule_for()
    t = torch.tensor([1, 2, 100, 500, 999])
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x_t = schedule.q_sample(x0, t, eps)
    mean, variance, log_variance = schedule.q_posterior(x0, x_t, t)
    assert mean.shape == (5, 3) and variance.shape == (5, 1)
    for b, step in enumerate(t.tolist()):
        beta = schedule.betas[step].item()
        abar, abar_prev = (
            math.prod(1 - b for b in schedule.betas[: k + 1].tolist()) for k in (step, step - 1)
        )
        # q(x_{t-1} | x_0) q(x_t | x_{t-1}): precisions add, means are precision-weighted
        precision = 1 / (1 - abar_prev) + (1 - beta) / beta
        expected_mean = (
            math.sqrt(abar_prev) * x0[b] / (1 - abar_prev) + math.sqrt(1 - beta) * x_t[b] / beta
        ) / precision
        assert variance[b].item() == pytest.approx(1 / precision, rel=1e-9)
        assert log_variance[b].item() == pytest.approx(-math.log(precision), rel=1e-9)
        assert torch.allclose(mean[b], expected_mean, rtol=1e-9, atol=1e-12)
        # DDPM Eq. 11: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
        eps_form = (x_t[b] - beta / math.sqrt(1 - abar) * eps[b]) / math.sqrt(1 - beta)
        assert torch.allclose(mean[b], eps_form, rtol=1e-9, atol=1e-12)


def test_q_posterior_at_t0_is_x0_with_zero_variance_and_clipped_log_variance() -> None:
    schedule = schedule_for()
    x0 = torch.randn(2, 3)
    x_t = schedule.q_sample(x0, 0)
    mean, variance, log_variance = schedule.q_posterior(x0, x_t, 0)
    assert torch.allclose(mean, x0, atol=1e-6)
    assert torch.all(variance == 0)
    assert torch.allclose(log_variance, torch.log(schedule.posterior_variance[1]).float())
    assert torch.isfinite(schedule.posterior_log_variance_clipped).all()


# ---------------------------------------------------------------------------- conversions


def _all_timesteps(dtype: torch.dtype, schedule: NoiseSchedule):
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(schedule.num_timesteps)
    x0 = torch.randn(len(t), 3, generator=generator, dtype=torch.float64).to(dtype)
    eps = torch.randn(len(t), 3, generator=generator, dtype=torch.float64).to(dtype)
    return t, x0, eps, schedule.q_sample(x0, t, eps)


def test_conversions_round_trip_to_float32_precision() -> None:
    schedule = schedule_for()
    t, x0, eps, x_t = _all_timesteps(torch.float32, schedule)
    # rounding errors are amplified by 1 / sqrt(abar) (x0 from eps) and 1 / sqrt(1 - abar)
    tolerance = 64 * EPS32
    to_x0 = tolerance / schedule.sqrt_alphas_cumprod.float()[:, None]
    to_eps = tolerance / schedule.sqrt_one_minus_alphas_cumprod.float()[:, None]
    v = schedule.v_from(x0, eps, t)
    checks = {
        "x0_from_eps": (schedule.x0_from_eps(x_t, t, eps), x0, to_x0),
        "eps_from_x0": (schedule.eps_from_x0(x_t, t, x0), eps, to_eps),
        "eps->x0->eps": (
            schedule.eps_from_x0(x_t, t, schedule.x0_from_eps(x_t, t, eps)),
            eps,
            to_eps + to_x0,
        ),
        "x0_from_v": (schedule.x0_from_v(x_t, t, v), x0, tolerance),
        "eps_from_v": (schedule.eps_from_v(x_t, t, v), eps, tolerance),
        "v->x0,eps->v": (
            schedule.v_from(schedule.x0_from_v(x_t, t, v), schedule.eps_from_v(x_t, t, v), t),
            v,
            tolerance,
        ),
    }
    for name, (got, expected, tol) in checks.items():
        assert got.dtype == torch.float32, name
        assert ((got - expected).abs() <= tol).all(), name
    # and exact in float64
    t, x0, eps, x_t = _all_timesteps(torch.float64, schedule)
    v = schedule.v_from(x0, eps, t)
    assert torch.allclose(schedule.x0_from_eps(x_t, t, eps), x0, rtol=0, atol=1e-12)
    assert torch.allclose(schedule.eps_from_x0(x_t, t, x0), eps, rtol=0, atol=1e-12)
    assert torch.allclose(schedule.x0_from_v(x_t, t, v), x0, rtol=0, atol=1e-13)
    assert torch.allclose(schedule.eps_from_v(x_t, t, v), eps, rtol=0, atol=1e-13)


def test_v_is_a_rotation_of_x0_and_eps() -> None:
    """(x_t, v) = rotation of (x_0, eps) by phi_t, cos phi = sqrt(abar): norms are preserved."""
    schedule = schedule_for()
    t, x0, eps, x_t = _all_timesteps(torch.float64, schedule)
    v = schedule.v_from(x0, eps, t)
    assert torch.allclose(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-12, atol=1e-12)
    # at the least noisy step v is almost eps; at the noisiest almost -x_0
    assert torch.allclose(v[0], eps[0], atol=0.05)
    assert torch.allclose(v[-1], -x0[-1], atol=0.05)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_predict_x0_and_eps_inverts_the_target(parameterization: str) -> None:
    schedule = schedule_for(parameterization)
    t, x0, eps, x_t = _all_timesteps(torch.float64, schedule)
    target = schedule.target(x0, eps, t)
    expected = {"eps": eps, "x0": x0, "v": schedule.v_from(x0, eps, t)}[parameterization]
    assert torch.equal(target, expected)
    got_x0, got_eps = schedule.predict_x0_and_eps(target, x_t, t)
    assert torch.allclose(got_x0, x0, rtol=0, atol=1e-11)
    assert torch.allclose(got_eps, eps, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match=r"x_t and model_output must have the same shape"):
        schedule.predict_x0_and_eps(target[:, :2], x_t, t)


# ---------------------------------------------------------------------------- training loss


class Oracle(nn.Module):
    """Outputs a fixed tensor and records what it was called with."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls.append((x_t, t, kwargs))
        return self.output


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_training_loss_is_the_mse_to_the_target(parameterization: str) -> None:
    schedule = schedule_for(parameterization)
    x0, noise = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    t = torch.tensor([0, 5, 100, 400, 800, 999])
    target = schedule.target(x0, noise, t)
    perfect = Oracle(target)
    assert schedule.training_loss(perfect, x0, t=t, noise=noise).item() == 0.0
    x_t, seen_t, _ = perfect.calls[0]
    assert torch.allclose(x_t, schedule.q_sample(x0, t, noise)) and torch.equal(seen_t, t)
    zero = Oracle(torch.zeros_like(x0))
    loss = schedule.training_loss(zero, x0, t=t, noise=noise)
    assert loss.item() == pytest.approx((target**2).mean().item(), rel=1e-6)


def test_min_snr_weighting_is_the_same_x0_weighting_in_every_parameterization() -> None:
    """Min-SNR-gamma weights the x_0 error by min(SNR, gamma), whatever the model predicts."""
    x0, noise = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 50, 200, 500, 900, 999])
    reference = schedule_for("x0")
    x_t = reference.q_sample(x0, t, noise)
    guess_x0 = 0.5 * x_t + 0.1  # a poor, arbitrary x_0 prediction
    x0_error = ((guess_x0 - x0) ** 2).mean(dim=1)
    snr = reference.snr(t)
    losses = {}
    for parameterization in ("eps", "x0", "v"):
        schedule = schedule_for(parameterization)
        guess_eps = schedule.eps_from_x0(x_t, t, guess_x0)
        output = {
            "eps": guess_eps,
            "x0": guess_x0,
            "v": schedule.v_from(guess_x0, guess_eps, t),
        }[parameterization]
        model = Oracle(output)
        plain = schedule.training_loss(model, x0, t=t, noise=noise)
        weighted = schedule.training_loss(model, x0, t=t, noise=noise, weighting="min_snr")
        # unweighted: an eps error is SNR x an x_0 error, a v error (SNR + 1) x
        factor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[parameterization]
        assert plain.item() == pytest.approx((factor * x0_error).mean().item(), rel=1e-9)
        losses[parameterization] = weighted.item()
    expected = (snr.clamp(max=MIN_SNR_GAMMA) * x0_error).mean().item()
    for parameterization, value in losses.items():
        assert value == pytest.approx(expected, rel=1e-9), parameterization


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_min_snr_weights_stay_finite_at_zero_terminal_snr(parameterization: str) -> None:
    schedule = NoiseSchedule.from_name(
        "linear", 100, zero_terminal_snr=True, parameterization=parameterization
    )
    weights = schedule.min_snr_weight(torch.arange(100))
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    expected_last = {"eps": 1.0, "x0": 0.0, "v": 0.0}[parameterization]
    assert weights[-1].item() == expected_last
    assert weights[0].item() == pytest.approx(
        {"eps": MIN_SNR_GAMMA / schedule.snr(0).item(), "x0": MIN_SNR_GAMMA, "v": 0.0}[
            parameterization
        ],
        abs=2e-3,
    )
    with pytest.raises(ValueError, match="gamma must be a positive number"):
        schedule.min_snr_weight(0, gamma=0)


def test_training_loss_draws_t_uniformly_and_reproducibly() -> None:
    schedule = schedule_for(steps=10)
    x0 = torch.randn(4000, 2)
    model = Oracle(torch.zeros_like(x0))
    first = schedule.training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    second = schedule.training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    assert first.item() == second.item()
    t = model.calls[0][1]
    assert t.dtype == torch.long and torch.equal(t, model.calls[1][1])
    counts = torch.bincount(t, minlength=10)
    assert counts.numel() == 10 and counts.min() > 330 and counts.max() < 470  # 400 +- 3.5 sd
    assert not torch.equal(model.calls[0][0], schedule.q_sample(x0, t, torch.zeros_like(x0)))


def test_training_loss_trains_a_model_and_forwards_model_kwargs() -> None:
    schedule = schedule_for(steps=10)

    class Conditional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x_t, t, *, label):
            return self.linear(x_t) + label[:, None]

    model = Conditional()
    x0 = torch.randn(8, 2)
    loss = schedule.training_loss(model, x0, model_kwargs={"label": torch.ones(8)})
    assert loss.ndim == 0
    loss.backward()
    assert model.linear.weight.grad is not None and model.linear.weight.grad.abs().sum() > 0


def test_training_loss_rejects_bad_input() -> None:
    schedule = schedule_for(steps=10)
    x0 = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"shape of x0 \(4, 3, 8, 8\), got \(4, 4, 8, 8\)"):
        schedule.training_loss(Oracle(torch.zeros(4, 4, 8, 8)), x0)
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        schedule.training_loss(Oracle(torch.zeros_like(x0)), x0, weighting="snr")
    with pytest.raises(ValueError, match=r"in \[0, 9\]"):
        schedule.training_loss(Oracle(torch.zeros_like(x0)), x0, t=10)
    with pytest.raises(ValueError, match="x0 and noise must have the same shape"):
        schedule.training_loss(Oracle(torch.zeros_like(x0)), x0, noise=torch.randn(4, 3))


def test_timestep_sampling_uniform_and_lognormal_in_the_noise_level():
    schedule = NoiseSchedule.from_name("scaled_linear", 1000)
    uniform = schedule.sample_timesteps(64, torch.Generator().manual_seed(3))
    reference = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(uniform, reference)  # the draws of every earlier run
    t = schedule.sample_timesteps(20_000, torch.Generator().manual_seed(0), "lognormal", -0.5, 1.2)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    # sigma_t = sqrt((1 - abar_t) / abar_t): ln sigma of the drawn t is N(-0.5, 1.2^2) up to the
    # grid (inside the schedule's range of sigma, [0.03, 14.6] here)
    log_sigma = 0.5 * torch.log((1 - schedule.alphas_cumprod[t]) / schedule.alphas_cumprod[t])
    assert abs(float(log_sigma.median()) + 0.5) < 0.05
    quartiles = torch.quantile(log_sigma.float(), torch.tensor([0.25, 0.75]))
    assert abs(float(quartiles[1] - quartiles[0]) - 2 * 0.6745 * 1.2) < 0.1
    # the same draws give the first t whose sigma_t reaches each drawn sigma
    generator = torch.Generator().manual_seed(1)
    drawn = -0.5 + 1.2 * torch.randn(8, generator=generator)
    t = schedule.sample_timesteps(8, torch.Generator().manual_seed(1), "lognormal", -0.5, 1.2)
    sigmas = 0.5 * torch.log((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
    for value, step in zip(drawn.double().tolist(), t.tolist(), strict=True):
        assert sigmas[step] >= value or step == 999
        assert step == 0 or sigmas[step - 1] < value
    with pytest.raises(ValueError, match="unknown timestep distribution"):
        schedule.sample_timesteps(4, distribution="logit")
    with pytest.raises(ValueError, match="log_sigma_std must be > 0"):
        schedule.sample_timesteps(4, distribution="lognormal", log_sigma_std=0)
