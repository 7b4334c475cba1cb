"""2-D toy data, the timestep embedding, the toy and Gaussian denoisers, point-cloud distances."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_mini import samplers, toy
from ldm_mini.diffusion import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("make", [toy.spiral, toy.two_moons])
def test_toy_data_is_deterministic_and_unit_scale(make):
    points = make(20000, seeded(0))
    assert points.shape == (20000, 2) and points.dtype == torch.float32
    assert torch.equal(points, make(20000, seeded(0)))
    assert not torch.equal(points, make(20000, seeded(1)))
    assert points.mean(0).abs().max() < 0.03
    # unit std from the normalisation, plus the independent noise (std 0.05)
    assert torch.allclose(points.std(0), torch.full((2,), math.sqrt(1 + 0.05**2)), atol=0.03)


def test_noiseless_spiral_lies_on_the_spiral():
    points = toy.spiral(500, seeded(0), noise=0.0).double()
    x = points[:, 0] * toy.SPIRAL_STD_X + toy.SPIRAL_MEAN_X
    y = points[:, 1] * toy.SPIRAL_STD_Y + toy.SPIRAL_MEAN_Y
    # point = theta (cos theta, sin theta), so theta = |point| and point / theta = (cos, sin)
    theta = torch.sqrt(x**2 + y**2)
    assert theta.min() >= toy.SPIRAL_START - 1e-6 and theta.max() <= toy.SPIRAL_END + 1e-6
    assert torch.allclose(x / theta, torch.cos(theta), atol=1e-6)
    assert torch.allclose(y / theta, torch.sin(theta), atol=1e-6)


def test_noiseless_moons_lie_on_their_half_circles():
    points = toy.two_moons(501, seeded(0), noise=0.0).double()
    x = points[:, 0] * toy.MOONS_STD_X + toy.MOONS_MEAN_X
    y = points[:, 1] * toy.MOONS_STD_Y + toy.MOONS_MEAN_Y
    upper = ((x**2 + y**2 - 1).abs() < 1e-6) & (y >= -1e-9)
    lower = (((1 - x) ** 2 + (0.5 - y) ** 2 - 1).abs() < 1e-6) & (y <= 0.5 + 1e-9)
    assert upper.sum() == 250 and lower.sum() == 251 and (upper ^ lower).all()


def test_toy_data_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        toy.spiral(0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        toy.two_moons(10, noise=-0.1)


def test_sinusoidal_embedding_matches_the_formula():
    embedding = toy.sinusoidal_embedding(torch.tensor([0, 3, 7]), dim=4)
    assert embedding.shape == (3, 4)
    # half = 2, w = (1, 10000^(-1/2) = 0.01): [cos t, cos 0.01 t, sin t, sin 0.01 t]
    assert torch.allclose(embedding[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    expected = torch.tensor([math.cos(3), math.cos(0.03), math.sin(3), math.sin(0.03)])
    assert torch.allclose(embedding[1], expected, atol=1e-6)
    many = toy.sinusoidal_embedding(torch.arange(1000), dim=32)
    assert torch.cdist(many, many).add(torch.eye(1000)).min() > 1e-3  # all rows distinct


def test_sinusoidal_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="dim must be an even int"):
        toy.sinusoidal_embedding(torch.arange(3), dim=5)
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor \(B,\)"):
        toy.sinusoidal_embedding(torch.zeros(2, 3), dim=4)


def test_toy_denoiser_shapes_depends_on_t_and_gradients_flow():
    torch.manual_seed(0)
    model = toy.ToyDenoiser()
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [128, 128, 128, 2]  # 3 hidden layers
    x = torch.randn(5, 2)
    t = torch.tensor([0, 10, 100, 500, 999])
    output = model(x, t)
    assert output.shape == (5, 2)
    assert not torch.allclose(output, model(x, torch.zeros(5, dtype=torch.long)))
    output.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_toy_denoiser_rejects_bad_input():
    model = toy.ToyDenoiser(hidden=8, depth=1, num_timesteps=100)
    with pytest.raises(ValueError, match=r"x must be points \(B, 2\)"):
        model(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must be a tensor \(B,\) = \(3,\)"):
        model(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer timesteps"):
        model(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 100\)"):
        model(torch.zeros(3, 2), torch.tensor([0, 5, 100]))


def test_sliced_wasserstein_zero_symmetric_and_grows_with_shift():
    a = torch.randn(500, 2, generator=seeded(0))
    b = torch.randn(400, 2, generator=seeded(1))
    assert toy.sliced_wasserstein(a, a) == 0.0
    assert toy.sliced_wasserstein(a, b) == pytest.approx(toy.sliced_wasserstein(b, a), abs=1e-12)
    distances = [toy.sliced_wasserstein(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] < 0.2 < distances[1]


def test_sliced_wasserstein_matches_closed_form_for_shifted_gaussians():
    # W2(N(0, I), N(m, I)) projected on theta is |m . theta|; E[cos^2] = 1/2 in 2-D
    shift = torch.tensor([1.8, -2.4])  # |m| = 3
    a = torch.randn(2000, 2, generator=seeded(0))
    b = torch.randn(2000, 2, generator=seeded(1)) + shift
    distance = toy.sliced_wasserstein(a, b, n_projections=1000, generator=seeded(2))
    assert distance == pytest.approx(3 / math.sqrt(2), rel=0.03)


def test_sliced_wasserstein_unequal_sizes_compare_quantile_functions():
    # a 1-D hand case: quantiles of {0, 1} vs {0, 0.5, 1} differ by 0.5 on (1/3, 2/3]
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]])
    assert toy.sliced_wasserstein(a, b, n_projections=3) == pytest.approx(math.sqrt(1 / 12))
    # repeating every point leaves the empirical distribution, hence the distance, unchanged
    x = torch.randn(60, 2, generator=seeded(0))
    y = torch.randn(45, 2, generator=seeded(1))
    once = toy.sliced_wasserstein(x, y, generator=seeded(3))
    assert toy.sliced_wasserstein(x, torch.cat([y, y]), generator=seeded(3)) == pytest.approx(once)


def test_point_cloud_distances_reject_bad_input():
    with pytest.raises(ValueError, match="same dimension D"):
        toy.sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"a must be a non-empty point cloud \(N, D\)"):
        toy.energy_distance(torch.zeros(0, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="finite"):
        toy.sliced_wasserstein(torch.full((4, 2), math.nan), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="n_projections must be an int >= 1"):
        toy.sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 2), n_projections=0)


def test_energy_distance_hand_value_zero_and_symmetry():
    # one point each: 2 |(0, 0) - (3, 4)| - 0 - 0 = 10
    assert toy.energy_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])) == pytest.approx(
        math.sqrt(10)
    )
    a = torch.randn(300, 2, generator=seeded(0))
    b = torch.randn(200, 2, generator=seeded(1)) + 1.0
    assert toy.energy_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert toy.energy_distance(a, b) == pytest.approx(toy.energy_distance(b, a))
    assert toy.energy_distance(a, b) > toy.energy_distance(a, b - 0.5)


# ---------------------------------------------------------------------------- GaussianDenoiser


def linear_schedule(num_timesteps: int = 1000) -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", num_timesteps)


def correlated_points(n: int, seed: int) -> torch.Tensor:
    """N(mu, Sigma) in 2-D with mu = (1, -0.5), Sigma = [[2.0, 0.9], [0.9, 0.6]], float32."""
    scale = torch.linalg.cholesky(torch.tensor([[2.0, 0.9], [0.9, 0.6]], dtype=torch.float64))
    normal = torch.randn(n, 2, generator=seeded(seed), dtype=torch.float64)
    return (torch.tensor([1.0, -0.5], dtype=torch.float64) + normal @ scale.T).float()


def test_gaussian_denoiser_matches_the_scalar_formula_in_1d():
    schedule = linear_schedule()
    data = 0.7 + 1.5 * torch.randn(500, 1, generator=seeded(0))
    denoiser = toy.GaussianDenoiser.fit(data, schedule, shrinkage=0.0)
    mean, variance = data.double().mean(), data.double().var()  # divisor N - 1
    x_t = torch.linspace(-4, 4, 9, dtype=torch.float64).reshape(9, 1)
    for t in (0, 1, 500, 999):
        abar = schedule.alphas_cumprod[t]
        # E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)
        expected = (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / (abar * variance + 1 - abar)
        result = denoiser(x_t, torch.full((9,), t))
        assert result.dtype == torch.float64 and result.shape == (9, 1)
        assert torch.allclose(result, expected, rtol=1e-10, atol=1e-12), f"t = {t}"


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_gaussian_denoiser_matches_a_linear_solve_in_2d(shrinkage):
    schedule = linear_schedule()
    data = correlated_points(400, seed=1)
    denoiser = toy.GaussianDenoiser.fit(data, schedule, shrinkage=shrinkage)
    mean, covariance = data.double().mean(0), torch.cov(data.double().T)
    # the shrunk covariance, built directly rather than in the eigenbasis
    identity = torch.eye(2, dtype=torch.float64)
    covariance = (1 - shrinkage) * covariance + shrinkage * covariance.trace() / 2 * identity
    assert torch.allclose(denoiser.covariance, covariance, atol=1e-12)
    x_t = torch.randn(6, 2, generator=seeded(2), dtype=torch.float64) * 2
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    result = denoiser(x_t, t)
    for row in range(6):
        abar = schedule.alphas_cumprod[t[row]]
        system = abar * covariance + (1 - abar) * identity
        # eps_hat = sqrt(1 - abar) (abar Sigma + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu)
        expected = (1 - abar).sqrt() * torch.linalg.solve(system, x_t[row] - abar.sqrt() * mean)
        assert torch.allclose(result[row], expected, rtol=1e-9, atol=1e-12), f"t = {int(t[row])}"


def test_gaussian_denoiser_residual_is_orthogonal_to_x_t():
    # E[eps | x_t] is the projection of eps: the error eps - eps_hat has mean 0 and is
    # uncorrelated with x_t. Checked by simulation on fresh draws of the fitted Gaussian.
    schedule = linear_schedule()
    denoiser = toy.GaussianDenoiser.fit(correlated_points(1000, seed=3), schedule)
    x0 = denoiser.sample(100_000, seeded(4))
    noise = torch.randn(x0.shape, generator=seeded(5), dtype=torch.float64)
    for t in (10, 300, 700):
        x_t = schedule.q_sample(x0, t, noise)
        residual = noise - denoiser(x_t, t)
        assert residual.mean(0).abs().max() < 0.01, f"t = {t}"
        cross = residual.T @ (x_t - x_t.mean(0)) / len(x_t)
        assert cross.abs().max() < 0.01, f"t = {t}: E[(eps - eps_hat) x_t^T] = {cross}"
        # shifting the prediction costs its square: it sits at the minimum of the simple loss
        shifted = (noise - denoiser(x_t, t) - 0.05).square().mean()
        assert shifted - residual.square().mean() == pytest.approx(0.05**2, rel=0.2)


def test_gaussian_denoiser_exact_samples_have_the_fitted_moments():
    denoiser = toy.GaussianDenoiser.fit(correlated_points(300, seed=6), linear_schedule())
    samples = denoiser.sample(50_000, seeded(7))
    assert samples.shape == (50_000, 2) and samples.dtype == torch.float64
    assert torch.allclose(samples.mean(0), denoiser.mean, atol=0.02)
    assert torch.allclose(torch.cov(samples.T), denoiser.covariance, atol=0.04)


def test_ddpm_with_the_gaussian_denoiser_draws_the_fitted_gaussian():
    schedule = linear_schedule()
    denoiser = toy.GaussianDenoiser.fit(correlated_points(2000, seed=8), schedule)
    out = samplers.ddpm_sample(denoiser, schedule, (10_000, 2), generator=seeded(9), progress=False)
    # whitened, z = diag(lambda)^(-1/2) V^T (x - mu) should be N(0, I): each moment estimated
    # from 10,000 draws has a standard error of at most sqrt(2 / 10,000) = 0.014
    whitened = (out.sample.double() - denoiser.mean) @ denoiser.eigenvectors
    whitened = whitened / denoiser.eigenvalues.sqrt()
    assert whitened.mean(0).abs().max() < 0.04
    assert torch.allclose(torch.cov(whitened.T), torch.eye(2, dtype=torch.float64), atol=0.05)


def test_ddim_with_the_gaussian_denoiser_shrinks_each_variance_as_predicted():
    # Along an eigenvector (variance lambda, mean removed), one eta = 0 step t -> s multiplies x
    # by (sqrt(abar_s abar_t) lambda + sqrt((1 - abar_s)(1 - abar_t))) / (abar_t lambda + 1 -
    # abar_t), which is at most the exact ODE's ratio of stds (Cauchy-Schwarz): few steps
    # shrink the variance. The samples follow this product of ratios, not lambda itself.
    schedule = linear_schedule()
    denoiser = toy.GaussianDenoiser.fit(correlated_points(2000, seed=8), schedule)
    num_steps = 10
    out = samplers.ddim_sample(
        denoiser, schedule, (20_000, 2), num_steps=num_steps, generator=seeded(9), progress=False
    )
    coordinates = (out.sample.double() - denoiser.mean) @ denoiser.eigenvectors
    timesteps = samplers.ddim_timesteps(1000, num_steps)
    for index, variance in enumerate(denoiser.eigenvalues.tolist()):
        predicted = 1.0
        for step, t in enumerate(timesteps):
            abar_t = float(schedule.alphas_cumprod[t])
            last = step + 1 == len(timesteps)
            abar_s = 1.0 if last else float(schedule.alphas_cumprod[timesteps[step + 1]])
            numerator = math.sqrt(abar_s * abar_t) * variance
            numerator += math.sqrt((1 - abar_s) * (1 - abar_t))
            predicted *= (numerator / (abar_t * variance + 1 - abar_t)) ** 2
        measured = float(coordinates[:, index].var())
        assert predicted < 0.95 * variance  # 10 steps visibly shrink both directions
        assert measured == pytest.approx(predicted, rel=0.04), f"eigen-direction {index}"
    assert torch.allclose(coordinates.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.03)


def test_gaussian_denoiser_on_images_flattens_and_keeps_dtype():
    schedule = linear_schedule(50)
    images = torch.randn(40, 3, 4, 4, generator=seeded(10))
    denoiser = toy.GaussianDenoiser.fit(images, schedule)
    assert denoiser.sample_shape == (3, 4, 4) and denoiser.eigenvectors.shape == (48, 48)
    assert denoiser.num_timesteps == 50
    flat = toy.GaussianDenoiser.fit(images.reshape(40, 48), schedule)
    x_t = torch.randn(5, 3, 4, 4, generator=seeded(11))
    t = torch.tensor([0, 10, 20, 30, 49])
    output = denoiser(x_t, t)
    assert output.shape == (5, 3, 4, 4) and output.dtype == torch.float32
    assert torch.allclose(output.reshape(5, 48), flat(x_t.reshape(5, 48), t), atol=1e-6)
    assert torch.equal(denoiser(x_t, 20), denoiser(x_t, torch.full((5,), 20)))  # int t
    # with 40 samples in 48 dims Sigma is singular; the shrinkage keeps every eigenvalue > 0
    assert denoiser.eigenvalues.min() > 0
    assert toy.GaussianDenoiser.fit(images, schedule, shrinkage=0.0).eigenvalues.min() < 1e-9


def test_gaussian_denoiser_rejects_bad_input():
    schedule = linear_schedule(100)
    denoiser = toy.GaussianDenoiser.fit(torch.randn(10, 2, 3, generator=seeded(0)), schedule)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2, 3\)"):
        denoiser(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2, 3\)"):
        denoiser(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must be an int or a tensor \(B,\) = \(4,\)"):
        denoiser(torch.zeros(4, 2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer timesteps"):
        denoiser(torch.zeros(4, 2, 3), torch.zeros(4))
    for bad in (-1, 100):
        with pytest.raises(ValueError, match=r"must lie in \[0, 100\)"):
            denoiser(torch.zeros(4, 2, 3), torch.full((4,), bad))
    with pytest.raises(ValueError, match="at least 2 samples"):
        toy.GaussianDenoiser.fit(torch.zeros(1, 2), schedule)
    with pytest.raises(ValueError, match="finite float"):
        toy.GaussianDenoiser.fit(torch.tensor([[0.0, math.nan], [1.0, 2.0]]), schedule)
    with pytest.raises(ValueError, match=r"shrinkage must be a number in \[0, 1\]"):
        toy.GaussianDenoiser.fit(torch.zeros(5, 2), schedule, shrinkage=1.5)
    v_schedule = NoiseSchedule.from_name("linear", 100, parameterization="v")
    with pytest.raises(ValueError, match="predicts the noise eps"):
        toy.GaussianDenoiser.fit(torch.zeros(5, 2), v_schedule)
    with pytest.raises(ValueError, match="schedule must be a NoiseSchedule"):
        toy.GaussianDenoiser.fit(torch.zeros(5, 2), schedule.alphas_cumprod)
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        denoiser.sample(0)
