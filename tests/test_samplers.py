"""Samplers against data whose optimal denoiser is known in closed form, plus guidance and checks.

If the data are exactly Gaussian, x_0 ~ N(mu, s^2 I), then x_t ~ N(a mu, a^2 s^2 + sigma^2) with
a = sqrt(abar_t), sigma = sqrt(1 - abar_t), and the best possible model is

    E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2),
    E[x_0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + sigma^2).

Each sampler step is then affine in x_t, so what a sampler produces is known exactly too. This
shows something worth knowing: even with this perfect model, DDIM with few steps under-disperses.
A deterministic step from level t to level s multiplies the spread by cos(theta_t - theta_s),
where tan(theta) = sigma / (a s), and theta runs from about pi/2 (noise) to about 0 (data), so n
steps shrink the std by at least prod cos(pi / 2n) ~ exp(-pi^2 / 8n): 2.4% for n = 50, 12% for
n = 10. So DDPM (1000 steps) and DDIM with all steps must match (mu, s) within 2%, and DDIM with
10 or 50 steps must match mu and the std that its own closed-form chain predicts.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ldm_mini.diffusion import NoiseSchedule, broadcast_per_sample
from ldm_mini.samplers import (
    ClassifierFreeGuidance,
    SamplerOutput,
    ddim_invert,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    dpm_solver_pp_sample,
    start_timesteps,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 0.7, 0.3
SAMPLES = 20_000


class GaussianDenoiser:
    """The optimal model for data N(mean, std^2 I), in the schedule's parameterization.

    eps and x_0 are the closed forms of the module docstring; the x0 model goes through
    ``x0_from_eps`` and the v model through ``v_from``, so those conversions are exercised.
    ``mean`` may also be given per call (a tensor (B, 1)), for conditional models.
    """

    def __init__(self, schedule: NoiseSchedule, mean: float = MU, std: float = STD) -> None:
        self.schedule, self.mean, self.std = schedule, mean, std
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor, mean: Tensor | None = None) -> Tensor:
        self.calls += 1
        schedule = self.schedule
        mean = self.mean if mean is None else mean
        abar = broadcast_per_sample(schedule.alphas_cumprod[t.cpu()].to(x_t), x_t)
        variance = abar * self.std**2 + 1 - abar
        eps = (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / variance
        if schedule.parameterization == "eps":
            return eps
        if schedule.parameterization == "x0":
            return schedule.x0_from_eps(x_t, t, eps)
        x0 = mean + abar.sqrt() * self.std**2 * (x_t - abar.sqrt() * mean) / variance
        return schedule.v_from(x0, eps, t)


def linear(parameterization: str = "eps", **kwargs) -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000, parameterization=parameterization, **kwargs)


def start_noise(samples: int = SAMPLES, seed: int = 0) -> Tensor:
    return torch.randn(samples, 1, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ddim_chain(
    schedule: NoiseSchedule, timesteps: list[int], eta: float, mean: float = MU, std: float = STD
) -> tuple[float, float]:
    """(gain, noise variance) of DDIM with the Gaussian model, derived by hand for scalars:
    x_0 - mean = gain (x_T - a_T mean) + N(0, noise variance)."""
    gain, variance = 1.0, 0.0
    levels = [float(schedule.alphas_cumprod[t]) for t in timesteps] + [1.0]
    for abar_t, abar_s in zip(levels[:-1], levels[1:], strict=True):
        a_t, sigma_t, a_s = math.sqrt(abar_t), math.sqrt(1 - abar_t), math.sqrt(abar_s)
        extra = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        # x_s - a_s mean = (a_s a_t s^2 + sqrt(1 - abar_s - extra) sigma_t) / v_t (x_t - a_t mean)
        factor = (a_s * a_t * std**2 + math.sqrt(1 - abar_s - extra) * sigma_t) / (
            abar_t * std**2 + sigma_t**2
        )
        gain, variance = gain * factor, variance * factor**2 + extra
    return gain, variance


def ode_solution(schedule: NoiseSchedule, noise: Tensor) -> Tensor:
    """The exact probability-flow ODE map: the monotone affine map N(a_T mu, v_T) -> N(mu, s^2)."""
    abar = float(schedule.alphas_cumprod[-1])
    return MU + STD * (noise - math.sqrt(abar) * MU) / math.sqrt(abar * STD**2 + 1 - abar)


def assert_moments(x: Tensor, mean: float, std: float, rel: float = 0.02) -> None:
    assert x.mean().item() == pytest.approx(mean, rel=rel), "mean"
    assert x.std().item() == pytest.approx(std, rel=rel), "std"


def test_the_gaussian_model_is_consistent_in_every_parameterization() -> None:
    x_t, t = start_noise(50), torch.arange(0, 1000, 20)
    outputs = {}
    for parameterization in ("eps", "x0", "v"):
        schedule = linear(parameterization)
        outputs[parameterization] = schedule.predict_x0_and_eps(
            GaussianDenoiser(schedule)(x_t, t), x_t, t
        )
    for parameterization in ("x0", "v"):
        for got, expected in zip(outputs[parameterization], outputs["eps"], strict=True):
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), parameterization


# ---------------------------------------------------------------------------- closed-form bars


@pytest.mark.parametrize(("variance", "parameterization"), [("small", "eps"), ("large", "x0")])
def test_ddpm_samples_the_gaussian_data(variance: str, parameterization: str) -> None:
    schedule = linear(parameterization)
    model = GaussianDenoiser(schedule)
    out = ddpm_sample(
        model, schedule, start_noise(), variance=variance, generator=seeded(), progress=False
    )
    assert model.calls == 1000 and out.timesteps == list(range(999, -1, -1))
    assert_moments(out.sample, MU, STD)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_steps_follow_ddpm_equation_11(variance: str) -> None:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, step by step,
    sigma_t^2 = beta~_t (small) or beta_t (large), no noise at t = 0."""
    schedule = NoiseSchedule.from_name("cosine", 5)
    model, noise = GaussianDenoiser(schedule), start_noise(8)
    out = ddpm_sample(
        model,
        schedule,
        noise,
        variance=variance,
        generator=seeded(),
        return_trajectory=True,
        progress=False,
    )
    generator, x = seeded(), noise
    for step, t in enumerate(range(4, -1, -1)):
        beta, abar = float(schedule.betas[t]), float(schedule.alphas_cumprod[t])
        abar_prev = float(schedule.alphas_cumprod[t - 1]) if t > 0 else 1.0
        eps = model(x, torch.full((8,), t))
        x = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
        if t > 0:
            small = beta * (1 - abar_prev) / (1 - abar)
            x = x + math.sqrt(small if variance == "small" else beta) * torch.randn(
                x.shape, generator=generator
            )
        assert torch.allclose(out.trajectory[step + 1], x, rtol=0, atol=1e-5), t
    assert torch.equal(out.trajectory[-1], out.sample)


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_its_closed_form_chain(num_steps: int, eta: float) -> None:
    schedule = linear()
    noise = start_noise()
    out = ddim_sample(
        GaussianDenoiser(schedule),
        schedule,
        noise,
        num_steps=num_steps,
        eta=eta,
        generator=seeded(),
        progress=False,
    )
    gain, variance = ddim_chain(schedule, out.timesteps, eta)
    a_T = math.sqrt(float(schedule.alphas_cumprod[out.timesteps[0]]))
    assert_moments(out.sample, MU - gain * a_T * MU, math.sqrt(gain**2 + variance))
    assert out.sample.mean().item() == pytest.approx(MU, rel=0.02)
    # the few-step under-dispersion of the module docstring is real, not a bug
    bound = math.exp(-(math.pi**2) / (8 * num_steps))
    assert math.sqrt(gain**2 + variance) < STD * bound
    if eta == 0:  # deterministic: sample by sample
        expected = MU + gain * (noise - a_T * MU)
        assert torch.allclose(out.sample, expected, rtol=0, atol=1e-4)


def test_ddim_from_an_intermediate_step_finishes_the_data_sdedit() -> None:
    schedule = linear()
    data = MU + STD * start_noise(seed=2)
    kept = []
    for start in (100, 300, 650):
        # visits only the steps t <= start (50-step trailing grid: 999, 979, ..., 19)
        first = start_timesteps(ddim_timesteps(1000, 50), start)[0]
        assert first <= start < first + 20
        x_start = schedule.q_sample(data, first, generator=seeded(3))
        model = GaussianDenoiser(schedule)
        out = ddim_sample(
            model, schedule, x_start, num_steps=50, start_timestep=start, progress=False
        )
        assert out.timesteps[0] == first and model.calls == len(out.timesteps) == (first + 1) // 20
        # the closed-form chain of the kept steps, sample by sample, and the data's mean
        gain, _ = ddim_chain(schedule, out.timesteps, 0.0)
        a_first = math.sqrt(float(schedule.alphas_cumprod[first]))
        expected = MU + gain * (x_start - a_first * MU)
        assert torch.allclose(out.sample, expected, rtol=0, atol=1e-4)
        assert out.sample.mean().item() == pytest.approx(MU, rel=0.02)
        kept.append(torch.corrcoef(torch.cat([out.sample, data], 1).T)[0, 1].item())
    # the lower the start, the more of each sample's own data survives
    assert kept[0] > kept[1] > kept[2] and kept[0] > 0.6
    assert start_timesteps([999, 499], 999) == [999, 499]
    with pytest.raises(ValueError, match="below every visited step"):
        start_timesteps(ddim_timesteps(1000, 50), 10)
    with pytest.raises(ValueError, match="must be an int"):
        start_timesteps([999, 499], 500.0)


def test_ddim_with_all_steps_solves_the_ode_and_matches_the_data() -> None:
    schedule = linear()
    noise = start_noise()
    out = ddim_sample(GaussianDenoiser(schedule), schedule, noise, num_steps=1000, progress=False)
    assert (out.sample - ode_solution(schedule, noise)).abs().max().item() < 0.01
    assert_moments(out.sample, MU, STD)


def test_ddim_with_all_steps_and_eta_1_is_ddpm() -> None:
    schedule = NoiseSchedule.from_name("cosine", 50)
    model = GaussianDenoiser(schedule)
    noise = start_noise(500)
    ddpm = ddpm_sample(model, schedule, noise, generator=seeded(), progress=False)
    ddim = ddim_sample(
        model, schedule, noise, num_steps=50, eta=1.0, generator=seeded(), progress=False
    )
    assert ddim.timesteps == ddpm.timesteps
    assert torch.allclose(ddim.sample, ddpm.sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_ddim_gives_the_same_samples_for_every_parameterization(parameterization: str) -> None:
    noise = start_noise()
    reference = ddim_sample(GaussianDenoiser(linear()), linear(), noise, progress=False)
    schedule = linear(parameterization)
    out = ddim_sample(GaussianDenoiser(schedule), schedule, noise, progress=False)
    assert torch.allclose(out.sample, reference.sample, rtol=0, atol=1e-4)


def test_dpm_solver_pp_is_second_order_and_samples_the_data() -> None:
    noise = start_noise(2000)
    errors: dict[str, list[float]] = {"ddim": [], "dpm": []}
    references: dict[int, Tensor] = {}
    for parameterization in ("eps", "v"):
        schedule = linear(parameterization)
        model = GaussianDenoiser(schedule)
        exact = ode_solution(schedule, noise)
        for num_steps in (25, 50, 100):
            dpm = dpm_solver_pp_sample(model, schedule, noise, num_steps=num_steps, progress=False)
            assert dpm.timesteps == ddim_timesteps(1000, num_steps)
            if parameterization == "eps":
                ddim = ddim_sample(model, schedule, noise, num_steps=num_steps, progress=False)
                errors["ddim"].append((ddim.sample - exact).abs().max().item())
                errors["dpm"].append((dpm.sample - exact).abs().max().item())
                references[num_steps] = dpm.sample
            else:
                assert torch.allclose(dpm.sample, references[num_steps], rtol=0, atol=1e-4)
    # halving the step: DDIM's error halves (first order), DPM-Solver++(2M)'s drops >= 4x
    for coarse, fine in zip(errors["ddim"][:-1], errors["ddim"][1:], strict=True):
        assert 1.6 < coarse / fine < 2.4
    for coarse, fine in zip(errors["dpm"][:-1], errors["dpm"][1:], strict=True):
        assert coarse / fine > 4
    assert errors["dpm"][1] < 0.25 * errors["ddim"][1]
    schedule = linear()
    out = dpm_solver_pp_sample(
        GaussianDenoiser(schedule), schedule, start_noise(), progress=False, num_steps=50
    )
    assert_moments(out.sample, MU, STD)


def test_zero_terminal_snr_removes_the_mean_bias_of_a_noisy_last_step() -> None:
    """With abar_{T-1} > 0, pure noise is not what the model saw at T-1: the mean is pulled
    towards 0 by gain * a_T * mu. Zero terminal SNR (and a v model) removes that bias."""
    noise = start_noise()
    biases = {}
    for zero_terminal_snr in (False, True):
        schedule = NoiseSchedule.from_name(
            "scaled_linear", 1000, zero_terminal_snr=zero_terminal_snr, parameterization="v"
        )
        out = ddim_sample(GaussianDenoiser(schedule), schedule, noise, progress=False)
        gain, _ = ddim_chain(schedule, out.timesteps, 0.0)
        a_T = math.sqrt(float(schedule.alphas_cumprod[-1]))
        assert torch.allclose(out.sample, MU + gain * (noise - a_T * MU), rtol=0, atol=1e-4)
        biases[zero_terminal_snr] = out.sample.mean().item() / MU - 1
        # DPM-Solver++ copes with lambda = -inf at the first step (sigma = 1, alpha = 0); its
        # error here is mostly the last, first-order step from sigma ~ 0.09 down to 0
        dpm = dpm_solver_pp_sample(
            GaussianDenoiser(schedule), schedule, noise, num_steps=100, progress=False
        )
        assert (dpm.sample - ode_solution(schedule, noise)).abs().max().item() < 0.1
    assert biases[False] < -0.015  # about -2.3%
    assert abs(biases[True]) < 0.01  # sample noise only


def test_eps_model_cannot_sample_from_zero_terminal_snr() -> None:
    schedule = NoiseSchedule.from_name("linear", 10, zero_terminal_snr=True)
    for sampler in (ddpm_sample, ddim_sample, dpm_solver_pp_sample):
        kwargs = {} if sampler is ddpm_sample else {"num_steps": 5}
        with pytest.raises(ValueError, match="zero terminal SNR.*parameterization='v'"):
            sampler(GaussianDenoiser(schedule), schedule, (2, 1), progress=False, **kwargs)


# ---------------------------------------------------------------------------- DDIM specifics


def test_ddim_eta_0_is_deterministic_without_a_generator() -> None:
    schedule = linear()
    model = GaussianDenoiser(schedule)
    noise = start_noise(100)
    first = ddim_sample(model, schedule, noise, num_steps=20, progress=False)
    second = ddim_sample(model, schedule, noise.clone(), num_steps=20, progress=False)
    assert torch.equal(first.sample, second.sample)
    state = torch.get_rng_state()
    ddim_sample(model, schedule, noise, num_steps=20, progress=False)
    assert torch.equal(state, torch.get_rng_state())  # no random numbers drawn
    noisy = [
        ddim_sample(
            model, schedule, noise, num_steps=20, eta=0.5, generator=seeded(seed), progress=False
        ).sample
        for seed in (1, 1, 2)
    ]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])


def test_ddim_inversion_round_trip() -> None:
    """Inversion evaluates eps at the wrong end of each step, so it is approximate: with 50
    steps and this sharply peaked data the round trip is within 0.05 on average (0.2 at most);
    three fixed-point iterations per step bring it within 1e-3."""
    schedule = linear()
    model = GaussianDenoiser(schedule)
    x0 = MU + STD * start_noise(2000, seed=5)
    inverted = ddim_invert(model, schedule, x0, num_steps=50, progress=False)
    assert inverted.timesteps == ddim_timesteps(1000, 50)[::-1]
    assert inverted.sample.std().item() == pytest.approx(1.0, abs=0.1)  # looks like noise
    back = ddim_sample(model, schedule, inverted.sample, num_steps=50, progress=False).sample
    error = (back - x0).abs()
    assert error.mean().item() < 0.05 and error.max().item() < 0.2
    model.calls = 0
    refined = ddim_invert(
        model, schedule, x0, num_steps=50, fixed_point_iterations=3, progress=False
    )
    assert model.calls == 50 * 4
    back = ddim_sample(model, schedule, refined.sample, num_steps=50, progress=False).sample
    assert (back - x0).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="fixed_point_iterations must be an int >= 0"):
        ddim_invert(model, schedule, x0, fixed_point_iterations=-1)


def test_ddim_timesteps_examples() -> None:
    assert ddim_timesteps(1000, 10) == list(range(999, 0, -100))
    assert ddim_timesteps(1000, 3) == [999, 666, 332]
    assert ddim_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert ddim_timesteps(1000, 3, "leading") == [666, 333, 0]
    assert ddim_timesteps(1000, 5, "linspace") == [999, 749, 500, 250, 0]
    for spacing in ("trailing", "leading", "linspace"):
        assert ddim_timesteps(7, 7, spacing) == list(range(6, -1, -1))


@pytest.mark.parametrize("num_train_timesteps", [10, 1000])
def test_ddim_timesteps_properties_and_the_leading_off_by_one(num_train_timesteps: int) -> None:
    total = num_train_timesteps
    for num_steps in sorted({1, 2, 3, 7, total // 3, total // 2, total - 1, total}):
        lists = {
            spacing: ddim_timesteps(total, num_steps, spacing)
            for spacing in ("trailing", "leading", "linspace")
        }
        for spacing, steps in lists.items():
            assert len(steps) == num_steps, spacing
            assert all(a > b for a, b in zip(steps, steps[1:], strict=False)), spacing
            assert 0 <= steps[-1] and steps[0] <= total - 1, spacing
        assert lists["trailing"][0] == total - 1
        if num_steps < total:  # leading never starts at the noisiest step
            assert lists["leading"][0] == (num_steps - 1) * (total // num_steps) < total - 1
        if num_steps > 1:
            assert lists["linspace"][0] == total - 1 and lists["linspace"][-1] == 0


def test_leading_spacing_starts_from_a_level_that_is_not_noise() -> None:
    schedule = linear()
    first = ddim_timesteps(1000, 10, "leading")[0]
    assert first == 900 and schedule.snr(first).item() > 5 * schedule.snr(999).item()
    # one step, the extreme case: "leading" asks the model to denoise x_T as if it were x_0
    model, noise = GaussianDenoiser(schedule), start_noise()
    leading = ddim_sample(model, schedule, noise, num_steps=1, spacing="leading", progress=False)
    trailing = ddim_sample(model, schedule, noise, num_steps=1, progress=False)
    assert leading.timesteps == [0] and trailing.timesteps == [999]
    assert abs(leading.sample.mean().item()) < 0.05  # the noise, barely changed
    assert trailing.sample.mean().item() == pytest.approx(MU, rel=0.02)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1000, 0), r"num_steps must be an int in \[1, 1000\]"),
        ((1000, 1001), r"num_steps must be an int in \[1, 1000\]"),
        ((1000, 2.0), "num_steps must be an int"),
        ((1000, 10, "uniform"), "unknown spacing 'uniform'"),
        ((0, 1), "num_train_timesteps must be a positive int"),
    ],
)
def test_ddim_timesteps_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ddim_timesteps(*args)


# ---------------------------------------------------------------------------- common behaviour


SAMPLERS = {
    "ddpm": lambda model, schedule, noise, **kw: ddpm_sample(model, schedule, noise, **kw),
    "ddim": lambda model, schedule, noise, **kw: ddim_sample(
        model, schedule, noise, num_steps=4, eta=1.0, **kw
    ),
    "dpm": lambda model, schedule, noise, **kw: dpm_solver_pp_sample(
        model, schedule, noise, num_steps=4, **kw
    ),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_output_and_trajectory(name: str) -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    model = GaussianDenoiser(schedule)
    noise = start_noise(6)
    out = SAMPLERS[name](
        model, schedule, noise, generator=seeded(), progress=False, return_trajectory=True
    )
    assert isinstance(out, SamplerOutput)
    steps = len(out.timesteps)
    assert model.calls == steps == len(out.x0_predictions) == len(out.trajectory) - 1
    assert torch.equal(out.trajectory[0], noise) and torch.equal(out.trajectory[-1], out.sample)
    for tensor in out.trajectory + out.x0_predictions:
        assert tensor.device.type == "cpu" and not tensor.requires_grad
        assert tensor.shape == noise.shape
    assert torch.allclose(out.x0_predictions[-1], out.sample, atol=1e-6)  # last step: x_0 = x0^
    quiet = SAMPLERS[name](model, schedule, noise, generator=seeded(), progress=False)
    assert quiet.trajectory == [] and quiet.x0_predictions == []
    assert torch.equal(quiet.sample, out.sample)


def test_inversion_trajectory_runs_from_data_to_noise() -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    x0 = MU + STD * start_noise(4)
    out = ddim_invert(
        GaussianDenoiser(schedule),
        schedule,
        x0,
        num_steps=4,
        progress=False,
        return_trajectory=True,
    )
    assert out.timesteps == [1, 3, 5, 7]
    assert len(out.trajectory) == 5 and len(out.x0_predictions) == 4
    assert torch.equal(out.trajectory[0], x0) and torch.equal(out.trajectory[-1], out.sample)


@pytest.mark.parametrize("name", SAMPLERS)
def test_progress_bar_can_be_turned_off(name: str, capsys: pytest.CaptureFixture) -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    SAMPLERS[name](GaussianDenoiser(schedule), schedule, (2, 1), progress=False)
    assert capsys.readouterr().err == ""
    SAMPLERS[name](GaussianDenoiser(schedule), schedule, (2, 1), progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and ("it/s" in err or "s/it" in err)


class Recorder(nn.Module):
    """A tiny trainable model that records how it is called."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen: list[dict] = []

    def forward(self, x_t: Tensor, t: Tensor, **kwargs) -> Tensor:
        self.seen.append({"t": t, "grad": torch.is_grad_enabled(), **kwargs})
        return self.linear(x_t)


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_run_without_grad_and_pass_model_kwargs(name: str) -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    model = Recorder()
    label = torch.arange(3)
    out = SAMPLERS[name](model, schedule, (3, 2), progress=False, model_kwargs={"label": label})
    assert out.sample.shape == (3, 2) and not out.sample.requires_grad
    for call, t in zip(model.seen, out.timesteps, strict=True):
        assert call["grad"] is False and call["label"] is label
        assert call["t"].dtype == torch.long and call["t"].tolist() == [t] * 3


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_clip_x0_clamps_the_predicted_x0(name: str) -> None:
    schedule = NoiseSchedule.from_name("cosine", 8, parameterization="x0")

    def far_away(x_t: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x_t, 5.0)

    out = SAMPLERS[name](
        far_away,
        schedule,
        (4, 2),
        generator=seeded(),
        progress=False,
        clip_x0=1.0,
        return_trajectory=True,
    )
    assert all(x0.abs().max() <= 1.0 for x0 in out.x0_predictions)
    assert torch.allclose(out.sample, torch.ones(4, 2))
    free = SAMPLERS[name](far_away, schedule, (4, 2), generator=seeded(), progress=False)
    assert torch.allclose(free.sample, torch.full((4, 2), 5.0))


def test_clipped_ddim_steps_use_the_eps_of_the_clipped_x0() -> None:
    """After clamping x0^, eps^ is recomputed so that x_t = sqrt(abar) x0^ + sqrt(1 - abar) eps^
    still holds: the eta = 0 step moves along the line through x_t and the clamped x0^."""
    schedule = NoiseSchedule.from_name("cosine", 8, parameterization="x0")
    noise = start_noise(4)
    out = ddim_sample(
        lambda x_t, t: torch.full_like(x_t, 5.0),
        schedule,
        noise,
        num_steps=4,
        clip_x0=1.0,
        progress=False,
        return_trajectory=True,
    )
    first, second = (float(schedule.alphas_cumprod[t]) for t in out.timesteps[:2])
    eps = (noise - math.sqrt(first) * 1.0) / math.sqrt(1 - first)
    expected = math.sqrt(second) * 1.0 + math.sqrt(1 - second) * eps
    assert torch.allclose(out.trajectory[1], expected, rtol=0, atol=1e-6)


def test_samplers_reject_bad_input() -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    model = GaussianDenoiser(schedule)
    quiet = {"progress": False}
    few = {"progress": False, "num_steps": 4}
    with pytest.raises(ValueError, match="shape_or_noise must be a shape"):
        ddim_sample(model, schedule, (0, 2), **few)
    with pytest.raises(ValueError, match="shape_or_noise must be a shape"):
        ddpm_sample(model, schedule, (2, 1.5), **quiet)
    with pytest.raises(ValueError, match="batch dimension"):
        ddim_sample(model, schedule, torch.tensor(0.0), **few)
    with pytest.raises(ValueError, match="unknown variance 'fixed'"):
        ddpm_sample(model, schedule, (2, 1), variance="fixed", **quiet)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        ddim_sample(model, schedule, (2, 1), eta=1.5, **few)
    with pytest.raises(ValueError, match="clip_x0 must be None or a positive number"):
        ddim_sample(model, schedule, (2, 1), clip_x0=-1.0, **few)
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 8\]"):
        ddim_sample(model, schedule, (2, 1), num_steps=50, **quiet)
    with pytest.raises(ValueError, match="schedule must be a NoiseSchedule"):
        ddim_sample(model, "linear", (2, 1), **few)
    with pytest.raises(ValueError, match="model must return a tensor shaped like its input"):
        ddim_sample(lambda x, t: x[:, :1], schedule, (2, 3), **few)


def test_noise_comes_from_the_generator_on_the_model_device() -> None:
    schedule = NoiseSchedule.from_name("cosine", 8)
    out = ddim_sample(
        Recorder(),
        schedule,
        (3, 2),
        num_steps=4,
        generator=seeded(7),
        progress=False,
        return_trajectory=True,
    )
    assert out.sample.device.type == "cpu"
    assert torch.equal(out.trajectory[0], torch.randn(3, 2, generator=seeded(7)))
    given = ddim_sample(Recorder(), schedule, out.trajectory[0], num_steps=4, progress=False)
    assert given.sample.shape == (3, 2)


# ---------------------------------------------------------------------------- guidance


class Conditional(nn.Module):
    """model(x, t, label=(B,), flag=...) = x * (1 + label); records the batch it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    def forward(self, x_t: Tensor, t: Tensor, label: Tensor, flag: str = "") -> Tensor:
        assert t.shape[0] == x_t.shape[0] == label.shape[0]
        self.calls.append((x_t.shape[0], {"label": label, "flag": flag}))
        return x_t * (1 + label[:, None])


def test_guidance_combines_conditional_and_null_in_one_batch() -> None:
    model = Conditional()
    x_t, t, label = torch.randn(3, 2), torch.tensor([5, 5, 5]), torch.tensor([1.0, 2.0, 3.0])
    null = torch.zeros(3)
    guided = ClassifierFreeGuidance(model, 3.0, {"label": null, "flag": "on"})
    out = guided(x_t, t, label=label, flag="on")
    cond, uncond = x_t * (1 + label[:, None]), x_t
    assert torch.allclose(out, uncond + 3.0 * (cond - uncond))
    assert len(model.calls) == 1
    batch, kwargs = model.calls[0]
    assert batch == 6 and kwargs["flag"] == "on"
    assert torch.equal(kwargs["label"], torch.cat([label, null]))  # conditional first


def test_guidance_scale_1_is_the_conditional_model_and_0_the_unconditional() -> None:
    x_t, t, label = torch.randn(3, 2), torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0])
    conditional = ClassifierFreeGuidance(Conditional(), 1.0)  # no null condition needed
    assert torch.equal(conditional(x_t, t, label=label), x_t * (1 + label[:, None]))
    model = Conditional()
    unconditional = ClassifierFreeGuidance(model, 0.0, {"label": torch.zeros(1)})
    assert torch.equal(unconditional(x_t, t, label=label), x_t)
    assert model.calls[0][0] == 3  # one call, on the (expanded) null condition only


def test_guided_gaussian_sampling_moves_the_mean_by_the_scale() -> None:
    """Both models are Gaussian with the same std, so the guided eps is that of the data
    N(null + w (cond - null), s^2): guidance scale w = 2 doubles the distance from the null."""
    schedule = linear()
    noise = start_noise()
    cond_mean, null_mean = torch.full((SAMPLES, 1), 0.4), torch.zeros(1, 1)
    guided = ClassifierFreeGuidance(GaussianDenoiser(schedule), 2.0, {"mean": null_mean})
    out = ddim_sample(guided, schedule, noise, progress=False, model_kwargs={"mean": cond_mean})
    target = 0.0 + 2.0 * (0.4 - 0.0)
    gain, _ = ddim_chain(schedule, out.timesteps, 0.0, mean=target)
    a_T = math.sqrt(float(schedule.alphas_cumprod[-1]))
    assert torch.allclose(out.sample, target + gain * (noise - a_T * target), rtol=0, atol=1e-4)
    assert out.sample.mean().item() == pytest.approx(target, rel=0.02)


@pytest.mark.parametrize(
    ("null_kwargs", "call_kwargs", "message"),
    [
        ({"label": torch.zeros(3)}, {"label": torch.ones(3), "flag": "x"}, "same keys"),
        ({"label": None}, {"label": torch.ones(3)}, "null condition for 'label' is None"),
        ({"label": torch.zeros(2)}, {"label": torch.ones(3)}, r"null 'label' has shape \(2,\)"),
        ({"label": 0}, {"label": torch.ones(3)}, "tensor in one of"),
        (
            {"label": torch.zeros(3), "flag": "a"},
            {"label": torch.ones(3), "flag": "b"},
            "non-tensor keyword 'flag' differs",
        ),
        ({"label": torch.zeros(3)}, {"label": torch.ones(2)}, "needs batch size 3"),
    ],
)
def test_guidance_rejects_mismatched_conditions(
    null_kwargs: dict, call_kwargs: dict, message: str
) -> None:
    guided = ClassifierFreeGuidance(Conditional(), 2.0, null_kwargs)
    with pytest.raises(ValueError, match=message):
        guided(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), **call_kwargs)


def test_guidance_without_a_null_condition_is_an_error_unless_scale_is_1() -> None:
    with pytest.raises(ValueError, match="scale 7.5 needs the null"):
        ClassifierFreeGuidance(Conditional(), 7.5)
    with pytest.raises(ValueError, match="scale must be a number"):
        ClassifierFreeGuidance(Conditional(), "7.5", {"label": torch.zeros(1)})
    with pytest.raises(ValueError, match="scale must be finite"):
        ClassifierFreeGuidance(Conditional(), math.inf, {"label": torch.zeros(1)})


# ---------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_samplers_on_cuda_match_cpu_with_a_cpu_generator() -> None:
    schedule = NoiseSchedule.from_name("cosine", 50, parameterization="v")
    model = GaussianDenoiser(schedule)
    for sampler, kwargs in (
        (ddpm_sample, {}),
        (ddim_sample, {"num_steps": 10, "eta": 1.0}),
        (dpm_solver_pp_sample, {"num_steps": 10}),
    ):
        cpu = sampler(model, schedule, (64, 3, 4, 4), generator=seeded(), progress=False, **kwargs)
        gpu = sampler(
            model,
            schedule,
            (64, 3, 4, 4),
            generator=seeded(),
            progress=False,
            device="cuda",
            **kwargs,
        )
        assert gpu.sample.device.type == "cuda"
        assert torch.allclose(gpu.sample.cpu(), cpu.sample, rtol=0, atol=1e-4)
    guided = ClassifierFreeGuidance(model, 3.0, {"mean": torch.zeros(1, 1, 1, 1)})
    out = ddim_sample(
        guided,
        schedule,
        (8, 3, 4, 4),
        device="cuda",
        progress=False,
        model_kwargs={"mean": torch.full((8, 1, 1, 1), 0.5, device="cuda")},
    )
    assert out.sample.device.type == "cuda" and torch.isfinite(out.sample).all()
    x0 = torch.randn(4, 3, 4, 4, device="cuda")
    t = torch.tensor([0, 10, 30, 49], device="cuda")
    loss = schedule.training_loss(lambda x, t: torch.zeros_like(x), x0, t=t)
    assert loss.device.type == "cuda" and torch.isfinite(loss)
