"""2-D toy data, a tiny denoiser and an exact Gaussian one. Taught in ``04_reverse_diffusion``.

Before diffusing images, notebook 04 learns diffusion where everything is visible: points in
the plane. A :class:`ToyDenoiser` (an MLP on the point and a sinusoidal embedding of t) learns
eps_theta(x_t, t) on a :func:`spiral` or :func:`two_moons` in about a minute on a CPU, and
:func:`sliced_wasserstein` (or :func:`energy_distance`) measures how far the generated points
are from the true ones, which makes the trade-off between sampling steps and quality a curve.

For images, :class:`GaussianDenoiser` is the exact optimal eps-predictor E[eps | x_t] when the
data are Gaussian, N(mu, Sigma), with mu and Sigma fitted to a data set: no training, so every
sampler can run on images (or latents) before the U-Net of notebook ``05_unet`` exists.

Point clouds are tensors (N, 2); the data sets are normalised to zero mean and unit standard
deviation per coordinate, the scale at which the forward process x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps is designed to work.
"""

from __future__ import annotations

import math
import numbers

import torch
from einops import rearrange
from torch import Tensor, nn

from ldm_mini.blocks import timestep_embedding as sinusoidal_embedding
from ldm_mini.diffusion import NoiseSchedule

__all__ = [
    "GaussianDenoiser",
    "ToyDenoiser",
    "energy_distance",
    "sinusoidal_embedding",
    "sliced_wasserstein",
    "spiral",
    "two_moons",
]

# spiral: angle theta ~ U[SPIRAL_START, SPIRAL_END] (one and a half turns), point theta (cos, sin)
SPIRAL_START, SPIRAL_END = 1.5 * math.pi, 4.5 * math.pi


def _spiral_moments() -> tuple[float, float, float, float]:
    """Exact mean and std of (theta cos theta, theta sin theta), theta ~ U[start, end]."""
    start, end = SPIRAL_START, SPIRAL_END
    length = end - start

    # antiderivatives: int t cos t = t sin t + cos t;  int t sin t = -t cos t + sin t
    def between(f):
        return f(end) - f(start)

    mean_x = between(lambda t: t * math.sin(t) + math.cos(t)) / length
    mean_y = between(lambda t: -t * math.cos(t) + math.sin(t)) / length
    # t^2 cos^2 t = t^2 / 2 + t^2 cos(2t) / 2, and t^2 sin^2 t = t^2 / 2 - t^2 cos(2t) / 2, with
    # int t^2 cos 2t = t^2 sin(2t) / 2 + t cos(2t) / 2 - sin(2t) / 4
    cubic = between(lambda t: t**3 / 6)
    oscillating = between(
        lambda t: t**2 * math.sin(2 * t) / 2 + t * math.cos(2 * t) / 2 - math.sin(2 * t) / 4
    )
    second_x = (cubic + oscillating / 2) / length
    second_y = (cubic - oscillating / 2) / length
    # std = sqrt(E[x^2] - E[x]^2)
    return mean_x, mean_y, math.sqrt(second_x - mean_x**2), math.sqrt(second_y - mean_y**2)


SPIRAL_MEAN_X, SPIRAL_MEAN_Y, SPIRAL_STD_X, SPIRAL_STD_Y = _spiral_moments()

# two moons (upper: (cos a, sin a); lower: (1 - cos a, 1/2 - sin a), a ~ U[0, pi], half each):
# E[x] = 1/2, E[y] = 1/4, Var[x] = 3/4, Var[y] = 9/16 - 1/pi
MOONS_MEAN_X, MOONS_MEAN_Y = 0.5, 0.25
MOONS_STD_X, MOONS_STD_Y = math.sqrt(0.75), math.sqrt(9 / 16 - 1 / math.pi)


def _check_count(n: int, noise: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of points) must be an int >= 1, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0 (a standard deviation), got {noise!r}")


def spiral(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """``n`` points on a spiral, a float32 tensor (n, 2), zero mean and std ~1 per coordinate.

    theta ~ U[1.5 pi, 4.5 pi], point = theta (cos theta, sin theta), normalised with the exact
    mean and std of that distribution, plus Gaussian ``noise`` (std, in normalised units).
    The same ``generator`` state gives the same points.
    """
    _check_count(n, noise)
    uniform = torch.rand(n, generator=generator, dtype=torch.float64)
    theta = SPIRAL_START + (SPIRAL_END - SPIRAL_START) * uniform
    x = (theta * torch.cos(theta) - SPIRAL_MEAN_X) / SPIRAL_STD_X
    y = (theta * torch.sin(theta) - SPIRAL_MEAN_Y) / SPIRAL_STD_Y
    points = torch.stack([x, y], dim=1)
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """``n`` points on two interleaved half circles, float32 (n, 2), zero mean, std ~1.

    As scikit-learn's ``make_moons`` but with random angles: n // 2 points on the upper moon
    (cos a, sin a), the rest on the lower moon (1 - cos a, 1/2 - sin a), a ~ U[0, pi], in a
    random order, normalised with the exact mean and std, plus Gaussian ``noise`` (std, in
    normalised units). The same ``generator`` state gives the same points.
    """
    _check_count(n, noise)
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.arange(n) < n // 2
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([(x - MOONS_MEAN_X) / MOONS_STD_X, (y - MOONS_MEAN_Y) / MOONS_STD_Y], 1)
    points = points[torch.randperm(n, generator=generator)]
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


def _checked_timesteps(t: object, batch: int, num_timesteps: int, allow_int: bool) -> Tensor:
    """t as a LongTensor (batch,) of integer timesteps in [0, num_timesteps), else ValueError.

    With ``allow_int`` a plain int is broadcast to the batch.
    """
    if allow_int and isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = torch.full((batch,), int(t), dtype=torch.long)
    if not torch.is_tensor(t) or t.shape != (batch,):
        accepted = "an int or a tensor" if allow_int else "a tensor"
        raise ValueError(f"t must be {accepted} (B,) = ({batch},) of timesteps, got {_shape_of(t)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"t must hold integer timesteps (a LongTensor), got dtype {t.dtype}")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {num_timesteps}), got values in "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t.long()


def _shape_of(value: object) -> str:
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__


class ToyDenoiser(nn.Module):
    """An MLP eps_theta(x_t, t) for 2-D points: concat(x_t, embedding(t)) -> (B, 2).

    ``hidden`` units in each of ``depth`` hidden layers with SiLU; ``embedding_dim`` sinusoidal
    features of t (:func:`sinusoidal_embedding`, which is the U-Net's
    :func:`ldm_mini.blocks.timestep_embedding` under its toy name). ``num_timesteps`` (T) is
    only used to check that t lies in [0, T). The output is whatever the schedule's
    parameterization asks for (eps by default); it has the shape of x.
    """

    def __init__(
        self,
        hidden: int = 128,
        depth: int = 3,
        embedding_dim: int = 32,
        num_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}")
        if embedding_dim < 2 or embedding_dim % 2:
            raise ValueError(f"embedding_dim must be an even int >= 2, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.num_timesteps = num_timesteps
        layers: list[nn.Module] = []
        width_in = 2 + embedding_dim
        for _ in range(depth):
            layers += [nn.Linear(width_in, hidden), nn.SiLU()]
            width_in = hidden
        layers.append(nn.Linear(hidden, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, 2) float, t (B,) integer timesteps in [0, T) -> (B, 2)."""
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must be points (B, 2), got shape {tuple(x.shape)}")
        t = _checked_timesteps(t, x.shape[0], self.num_timesteps, allow_int=False)
        embedding = sinusoidal_embedding(t, self.embedding_dim).to(x.dtype)
        return self.net(torch.cat([x, embedding], dim=1))


class GaussianDenoiser(nn.Module):
    """The exact optimal eps-predictor for Gaussian data x_0 ~ N(mu, Sigma), of any shape.

    Since x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps is jointly Gaussian with eps, the
    minimiser of E||eps - eps_theta(x_t, t)||^2 is linear in x_t:

        E[eps | x_t] = sqrt(1 - abar_t) (abar_t Sigma + (1 - abar_t) I)^{-1}
                       (x_t - sqrt(abar_t) mu),

    computed in the eigenbasis of Sigma = V diag(lambda) V^T, where the inverse is a division by
    abar_t lambda_i + 1 - abar_t. Sampling with it (any sampler) draws from N(mu, Sigma) up to
    the sampler's discretisation error: the best any model can do if the data were Gaussian.

    Build it with :meth:`fit`. Samples are (B, *sample_shape), flattened internally to
    D = prod(sample_shape) dimensions. The buffers ``mean`` (D,), ``eigenvalues`` (D,) ascending,
    ``eigenvectors`` (D, D, one per column) and ``alphas_cumprod`` (T,) are float64; the output
    has the dtype and device of x_t. (``module.float()`` makes it float32, e.g. for MPS.)
    """

    def __init__(
        self,
        mean: Tensor,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        alphas_cumprod: Tensor,
        sample_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        dims = math.prod(sample_shape)
        if mean.shape != (dims,) or eigenvalues.shape != (dims,):
            raise ValueError(
                f"mean and eigenvalues must have shape (D,) = ({dims},) for samples of shape "
                f"{tuple(sample_shape)}, got {tuple(mean.shape)} and {tuple(eigenvalues.shape)}"
            )
        if eigenvectors.shape != (dims, dims):
            raise ValueError(
                f"eigenvectors must have shape (D, D) = ({dims}, {dims}), "
                f"got {tuple(eigenvectors.shape)}"
            )
        if alphas_cumprod.ndim != 1 or len(alphas_cumprod) == 0:
            raise ValueError(
                f"alphas_cumprod must be 1-D (T,), got shape {tuple(alphas_cumprod.shape)}"
            )
        self.sample_shape = tuple(int(size) for size in sample_shape)
        self.register_buffer("mean", mean.detach().double().clone())
        self.register_buffer("eigenvalues", eigenvalues.detach().double().clone())
        self.register_buffer("eigenvectors", eigenvectors.detach().double().clone())
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().double().clone())

    @classmethod
    def fit(
        cls, data: Tensor, schedule: NoiseSchedule, shrinkage: float = 1e-4
    ) -> GaussianDenoiser:
        """Fit mu and Sigma to ``data`` (N, ...) (N >= 2 samples) for an eps ``schedule``.

        mu is the sample mean and Sigma the sample covariance (divisor N - 1), in float64,
        shrunk towards a multiple of the identity so that it is well conditioned even when
        N <= D: Sigma_s = (1 - shrinkage) Sigma + shrinkage (tr(Sigma) / D) I, shrinkage in
        [0, 1]. Its eigendecomposition is stored; the eigenvalues are clipped at 0.
        """
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(
                f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; build one "
                "with NoiseSchedule.from_name('linear')."
            )
        if schedule.parameterization != "eps":
            raise ValueError(
                f"GaussianDenoiser predicts the noise eps, but the schedule's parameterization "
                f"is {schedule.parameterization!r}; use a schedule with parameterization='eps'."
            )
        if not torch.is_tensor(data) or data.ndim < 2 or data.shape[0] < 2:
            raise ValueError(
                f"data must be a tensor (N, ...) of at least 2 samples, e.g. latents "
                f"(N, c, h, w) or points (N, 2); got {_shape_of(data)}"
            )
        if not data.is_floating_point() or not torch.isfinite(data).all():
            raise ValueError("data must be a finite float tensor (no NaN or inf)")
        if (
            not isinstance(shrinkage, numbers.Real)
            or isinstance(shrinkage, bool)
            or not 0.0 <= shrinkage <= 1.0
        ):
            raise ValueError(f"shrinkage must be a number in [0, 1], got {shrinkage!r}")
        flat = rearrange(data.detach().cpu().double(), "n ... -> n (...)")
        count, dims = flat.shape
        # mu = (1/N) sum_n x_n
        mean = flat.mean(dim=0)
        centered = flat - mean
        # Sigma = (1/(N-1)) sum_n (x_n - mu)(x_n - mu)^T
        covariance = centered.T @ centered / (count - 1)
        # Sigma = V diag(lambda) V^T
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp(min=0.0)
        # Sigma_s = (1 - s) Sigma + s (tr(Sigma) / D) I: same eigenvectors, shrunk eigenvalues
        average_variance = eigenvalues.sum() / dims
        eigenvalues = (1.0 - shrinkage) * eigenvalues + shrinkage * average_variance
        return cls(mean, eigenvalues, eigenvectors, schedule.alphas_cumprod, data.shape[1:])

    @property
    def num_timesteps(self) -> int:
        """T, the number of timesteps of the schedule it was fitted for."""
        return len(self.alphas_cumprod)

    @property
    def covariance(self) -> Tensor:
        """The fitted (shrunk) Sigma = V diag(lambda) V^T, float64 (D, D)."""
        # Sigma = V diag(lambda) V^T
        return (self.eigenvectors * self.eigenvalues) @ self.eigenvectors.T

    def _check_input(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """Validate x_t (B, *sample_shape) and t; return t as a LongTensor (B,) on the CPU."""
        if not torch.is_tensor(x_t) or tuple(x_t.shape[1:]) != self.sample_shape or x_t.ndim < 2:
            raise ValueError(
                f"x_t must have shape (B, {', '.join(map(str, self.sample_shape))}) like the "
                f"data the denoiser was fitted to, got {_shape_of(x_t)}"
            )
        batch = x_t.shape[0]
        return _checked_timesteps(t, batch, self.num_timesteps, allow_int=True).cpu()

    def forward(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """eps_hat = E[eps | x_t] for x_t (B, *sample_shape) and t (B,) in [0, T): like x_t."""
        t = self._check_input(x_t, t)
        dtype, device = self.mean.dtype, self.mean.device
        flat = rearrange(x_t.detach().to(device=device, dtype=dtype), "b ... -> b (...)")
        alphas_cumprod = rearrange(self.alphas_cumprod[t.to(device)], "b -> b 1")
        # coordinates in the eigenbasis: y = V^T (x_t - sqrt(abar_t) mu)
        coordinates = (flat - alphas_cumprod.sqrt() * self.mean) @ self.eigenvectors
        # (abar_t Sigma + (1 - abar_t) I)^{-1} = V diag(1 / (abar_t lambda + 1 - abar_t)) V^T
        variances = alphas_cumprod * self.eigenvalues + (1.0 - alphas_cumprod)
        # eps_hat = sqrt(1 - abar_t) V diag(1 / (abar_t lambda + 1 - abar_t)) y
        eps = (1.0 - alphas_cumprod).sqrt() * ((coordinates / variances) @ self.eigenvectors.T)
        return eps.unflatten(1, self.sample_shape).to(device=x_t.device, dtype=x_t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws of N(mu, Sigma), float64 (n, *sample_shape) on the buffers' device.

        x = mu + V diag(sqrt(lambda)) z with z ~ N(0, I): what a perfect sampler returns.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (the number of samples) must be an int >= 1, got {n!r}")
        noise_device = generator.device if generator is not None else self.mean.device
        normal = torch.randn(
            n, len(self.mean), generator=generator, dtype=self.mean.dtype, device=noise_device
        ).to(self.mean.device)
        # x = mu + V diag(sqrt(lambda)) z
        flat = self.mean + (normal * self.eigenvalues.sqrt()) @ self.eigenvectors.T
        return flat.unflatten(1, self.sample_shape)


def _point_clouds(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two clouds (N, D) and (M, D) -> float64 CPU tensors; bad shapes -> ValueError."""
    for name, cloud in (("a", a), ("b", b)):
        if not torch.is_tensor(cloud) or cloud.ndim != 2 or cloud.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty point cloud (N, D), got {_shape_of(cloud)}"
            )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same dimension D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("a and b must be finite (no NaN or inf); a diverged sampler gives NaNs")
    return a, b


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced Wasserstein-2 distance between point clouds a (N, D) and b (M, D), as a float.

    SW_2(a, b) = sqrt(E_theta[W_2^2(theta . a, theta . b)]) over unit directions theta, estimated
    with ``n_projections`` random directions. In 1-D, W_2^2 = int_0^1 (F_a^-1(q) - F_b^-1(q))^2 dq
    with F^-1 the quantile functions: sort both projections and compare them level by level;
    for N != M the two step-shaped quantile functions are compared exactly on the merged grid of
    levels {i/N} and {j/M}. ``generator=None`` uses a fixed seed (0), so repeated calls use the
    same directions and their results can be compared.
    """
    a, b = _point_clouds(a, b)
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an int >= 1, got {n_projections!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    # theta ~ uniform on the unit sphere: normalised Gaussian vectors, (D, P)
    directions = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    sorted_a = torch.sort(a @ directions, dim=0).values  # (N, P)
    sorted_b = torch.sort(b @ directions, dim=0).values  # (M, P)
    count_a, count_b = len(sorted_a), len(sorted_b)
    if count_a == count_b:
        # equal sizes: the quantile functions step together, W_2^2 = mean_i (a_(i) - b_(i))^2
        return float(((sorted_a - sorted_b) ** 2).mean().sqrt())
    # merged levels q_k (ends of the constant pieces of both quantile functions), 0 < q_k <= 1
    levels = torch.cat(
        [
            torch.arange(1, count_a + 1, dtype=torch.float64) / count_a,
            torch.arange(1, count_b + 1, dtype=torch.float64) / count_b,
        ]
    ).unique()
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middles = levels - widths / 2
    # F^-1(q) = sorted[ceil(q N) - 1] = sorted[floor(q N)] inside a piece
    index_a = (middles * count_a).floor().long().clamp(max=count_a - 1)
    index_b = (middles * count_b).floor().long().clamp(max=count_b - 1)
    squared = (sorted_a[index_a] - sorted_b[index_b]) ** 2  # (K, P)
    # W_2^2 per direction = sum_k width_k (F_a^-1 - F_b^-1)^2; SW_2 = sqrt(mean over directions)
    per_direction = (rearrange(widths, "k -> k 1") * squared).sum(dim=0)
    return float(per_direction.mean().sqrt())


def _mean_distance(a: Tensor, b: Tensor, block: int = 1024) -> Tensor:
    """E |a_i - b_j| over all pairs, in row blocks so memory stays O(block * M)."""
    total = a.new_zeros(())
    for start in range(0, len(a), block):
        total = total + torch.cdist(a[start : start + block], b).sum()
    return total / (len(a) * len(b))


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance between point clouds a (N, D) and b (M, D), as a float.

    D(a, b) = sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) (Szekely), X, X' from a and Y, Y' from
    b, each expectation the mean over all pairs (including i = j, the V-statistic, so it is
    never negative). O(N M) distances: fine for a few thousand points.
    """
    a, b = _point_clouds(a, b)
    # D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|
    squared = 2 * _mean_distance(a, b) - _mean_distance(a, a) - _mean_distance(b, b)
    return float(squared.clamp(min=0).sqrt())
