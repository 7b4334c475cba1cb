"""Tests for ldm_mini.metrics: PSNR, SSIM, Fréchet and kernel distances."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from synthetic import noisy, smooth_images

from ldm_mini import metrics
from ldm_mini.metrics import (
    FEATURE_EXTRACTORS,
    EfficientNetFeatures,
    choose_feature_extractor,
    frechet_distance,
    gaussian_frechet_distance,
    inception_available,
    inception_weights_path,
    kernel_inception_distance,
    psnr,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def features() -> EfficientNetFeatures:
    # 32x32 inputs at their own size keep the tests fast (the default would use 64)
    return EfficientNetFeatures(image_size=32)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and no torch-fidelity: the FID Inception cannot run."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "_torch_fidelity_installed", lambda: False)
    return tmp_path / "hub"


# ---------------------------------------------------------------- PSNR and SSIM


def test_psnr_matches_the_closed_form():
    x = torch.zeros(2, 3, 8, 8)
    # shifts of 0.2 and 0.02 in [-1, 1] are 0.1 and 0.01 in [0, 1]: MSE 1e-2 and 1e-4
    y = x + torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0]), atol=1e-3)
    grey = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mse = ((grey - grey.flip(0)) / 2).square().mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(grey, grey.flip(0)), 10 * torch.log10(1 / mse), rtol=1e-5)


def test_psnr_of_identical_images_is_infinite_and_out_of_range_values_are_clipped():
    x = smooth_images(2)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.isinf(psnr(torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), 1.5))).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:1])


def test_ssim_is_one_on_identical_images_and_falls_with_noise():
    x = smooth_images(3)
    assert ssim(x, x).shape == (3,)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    scores = [ssim(x, noisy(x, sigma)).mean().item() for sigma in (0.05, 0.2, 0.5)]
    assert 1 > scores[0] > scores[1] > scores[2]
    grey = smooth_images(2, channels=1)
    assert torch.allclose(ssim(grey, grey), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------- Fréchet distance


def test_gaussian_frechet_distance_closed_form_and_torchmetrics_agreement():
    # diagonal covariances: FD = ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mean_a, mean_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    value = gaussian_frechet_distance(mean_a, torch.diag(var_a), mean_b, torch.diag(var_b))
    assert value.item() == pytest.approx(5.0 + 1.0 + 0.0 + 4.0)
    # full covariances: the same value as torchmetrics' own formula
    from torchmetrics.image.fid import _compute_fid

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(6, 3, generator=generator, dtype=torch.float64)  # rank-deficient
    cov_a, cov_b = a @ a.T, b @ b.T
    mu_a, mu_b = torch.randn(6, generator=generator, dtype=torch.float64), torch.zeros(6).double()
    for first, second in (((mu_a, cov_a), (mu_b, cov_b)), ((mu_b, cov_b), (mu_a, cov_a))):
        expected = _compute_fid(*first, *second).item()
        assert gaussian_frechet_distance(*first, *second).item() == pytest.approx(
            expected, rel=1e-6
        )
    # a Gaussian against itself: exactly 0 up to rounding, even when singular
    assert abs(gaussian_frechet_distance(mu_b, cov_b, mu_b, cov_b).item()) < 1e-10


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_noise(features):
    real = smooth_images(16, seed=0)
    results = [frechet_distance(real, real, features)]
    results += [frechet_distance(real, noisy(real, s), features) for s in (0.1, 0.3, 0.6)]
    values = [result["fd"] for result in results]
    assert abs(values[0]) < 1e-6 * values[1]
    assert values[1] < values[2] < values[3]
    assert results[0] == {
        "fd": values[0],
        "feature_extractor": "efficientnet-lite0",
        "label": "FD-EffNet",
        "n_real": 16,
        "n_fake": 16,
    }


def test_fd_between_halves_of_one_distribution_is_below_fd_to_a_shifted_one(features):
    images = smooth_images(24, seed=3)
    first, second = images[:12], images[12:]
    shifted = (smooth_images(12, seed=4) * 0.5 + 0.5).clamp(-1, 1)  # paler, lower contrast
    same = frechet_distance(first, second, features, batch_size=5)["fd"]
    different = frechet_distance(first, shifted, features, batch_size=5)["fd"]
    assert 0 < same < different


def test_fd_accepts_grey_images_and_rejects_tiny_sets(features):
    grey = smooth_images(4, channels=1, seed=5)
    result = frechet_distance(grey, grey.repeat(1, 3, 1, 1), features)
    assert (
        abs(result["fd"]) < 1e-6 + 1e-4 * frechet_distance(grey, noisy(grey, 0.3), features)["fd"]
    )
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(grey[:1], grey, features)


def test_efficientnet_features_shape_and_input_checks():
    extractor = EfficientNetFeatures(image_size=64)
    assert extractor.num_features == 1280
    output = extractor(smooth_images(2, channels=1, size=48))
    assert output.shape == (2, 1280) and torch.isfinite(output).all()
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.network.training
    with pytest.raises(TypeError, match="127.5"):
        extractor(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_kid_is_larger_for_a_noisy_set_and_reproducible(features):
    real = smooth_images(12, seed=6)
    same = kernel_inception_distance(real, real, features, subsets=20)
    far = kernel_inception_distance(real, noisy(real, 0.6), features, subsets=20)
    assert far["kid_mean"] > same["kid_mean"] + 3 * far["kid_std"]
    assert far["label"] == "KD-EffNet" and far["n_real"] == 12
    assert kernel_inception_distance(real, noisy(real, 0.6), features, subsets=20) == far


# ---------------------------------------------------------------- choosing the extractor


def test_offline_auto_chooses_efficientnet_and_inception_explains_itself(offline_hub, caplog):
    assert not inception_available()
    assert inception_weights_path().parent == offline_hub / "checkpoints"
    with caplog.at_level(logging.INFO, logger="ldm_mini.metrics"):
        assert choose_feature_extractor("auto") == "efficientnet-lite0"
    assert "FD-EffNet" in caplog.text
    with pytest.raises(RuntimeError) as error:
        choose_feature_extractor("inception")
    message = str(error.value)
    assert "pip install torch-fidelity" in message
    assert str(inception_weights_path()) in message and "download_url_to_file" in message
    assert "efficientnet-lite0" in message
    with pytest.raises(ValueError) as error:
        choose_feature_extractor("clip")
    assert all(name in str(error.value) for name in FEATURE_EXTRACTORS)


def test_inception_is_chosen_when_package_and_weights_are_present(offline_hub, monkeypatch):
    monkeypatch.setattr(metrics, "_torch_fidelity_installed", lambda: True)
    assert not inception_available()  # package but no weights
    with pytest.raises(RuntimeError) as error:
        choose_feature_extractor("inception")
    assert "pip install" not in str(error.value)
    inception_weights_path().parent.mkdir(parents=True)
    inception_weights_path().touch()
    assert inception_available()
    assert choose_feature_extractor("auto") == "inception"
    assert choose_feature_extractor("inception") == "inception"


def test_effnet_features_default_resolution_follows_the_input(monkeypatch):
    extractor = metrics.EfficientNetFeatures()
    seen = []
    original = extractor.network.extract_features
    monkeypatch.setattr(
        extractor.network, "extract_features", lambda x: seen.append(x.shape[-1]) or original(x)
    )
    for size in (32, 96, 320):
        assert extractor(torch.zeros(1, 3, size, size)).shape == (1, 1280)
    assert seen == [64, 96, 224]


# ---------------------------------------------------------------- distances from features


def test_features_give_the_same_fd_as_frechet_distance(features):
    real, fake = smooth_images(10, seed=7), noisy(smooth_images(10, seed=8), 0.2)
    real_features, name = metrics.image_features(real, features, batch_size=4)
    fake_features, _ = metrics.image_features(fake, features)
    assert real_features.shape == (10, 1280) and real_features.dtype == torch.float64
    assert name == "efficientnet-lite0"
    expected = frechet_distance(real, fake, features)["fd"]
    assert metrics.frechet_distance_of_features(real_features, fake_features) == pytest.approx(
        expected, rel=1e-6
    )


def test_kernel_distance_matches_torchmetrics_mmd_and_is_unbiased():
    from torchmetrics.image.kid import poly_mmd

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(40, 8, generator=generator, dtype=torch.float64) + 0.5
    # equal set sizes: the same estimator as torchmetrics' (KID's) poly_mmd
    assert metrics.kernel_distance_of_features(a, b) == pytest.approx(poly_mmd(a, b).item())
    # two samples of one distribution: mean over draws close to 0, no bias growing as n shrinks
    values = [
        metrics.kernel_distance_of_features(
            torch.randn(20, 8, generator=generator), torch.randn(30, 8, generator=generator)
        )
        for _ in range(200)
    ]
    shifted = metrics.kernel_distance_of_features(a, b)
    assert abs(sum(values) / len(values)) < 0.05 * shifted
    with pytest.raises(ValueError, match="same D"):
        metrics.kernel_distance_of_features(a, b[:, :4])


def test_fd_between_subsets_of_one_set_is_biased_upwards_at_small_n_and_kid_is_not():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(400, 16, generator=generator, dtype=torch.float64)
    rows = metrics.distances_between_subsets(features, [10, 50, 200], repeats=4, seed=0)
    assert [row["n"] for row in rows] == [10, 50, 200]
    fds = [row["fd_mean"] for row in rows]
    # the true distance is 0; FD's bias shrinks about like D / n
    assert fds[0] > fds[1] > fds[2] > 0
    assert all(abs(row["kid_mean"]) < 3 * row["kid_std"] + 1e-3 for row in rows)
    assert rows == metrics.distances_between_subsets(features, [10, 50, 200], repeats=4, seed=0)
    with pytest.raises(ValueError, match="disjoint"):
        metrics.distances_between_subsets(features, [300])
    with pytest.raises(ValueError, match="repeats"):
        metrics.distances_between_subsets(features, [10], repeats=1)
