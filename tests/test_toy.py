"""2-D toy data, the timestep embedding, the toy denoiser and point-cloud distances."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_mini import toy

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
