"""The training engine's GPU paths: bf16 autocast, fp16 with a grad scaler, checkpoints on CUDA.

Skipped without a CUDA GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda_paths.py``. Uses synthetic images and no perceptual backbone,
so it needs neither the bundled data nor downloaded weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic import smooth_images

from ldm_mini.autoencoder import AutoencoderConfig
from ldm_mini.data.config import DataConfig
from ldm_mini.losses import AutoencoderLossConfig
from ldm_mini.pipelines import load_autoencoder
from ldm_mini.stages.autoencoder import AutoencoderStage, OptimConfig
from ldm_mini.train import TrainConfig, Trainer, resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Images(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.images = smooth_images(64, channels=3, seed=3)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


@pytest.fixture(autouse=True)
def exact_kernels():
    """Deterministic cuDNN kernels and no TF32, so runs can be compared closely."""
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) = saved


def _stage(perceptual_weight: float = 0.0) -> AutoencoderStage:
    torch.manual_seed(0)
    model = AutoencoderConfig(kind="kl", in_channels=3, f=4, latent_channels=4, base_channels=16)
    loss = AutoencoderLossConfig(
        perceptual_weight=perceptual_weight,
        perceptual_backbone="efficientnet-lite0",
        perceptual_min_size=32,
        disc_start=4,
        disc_warmup=2,
        disc_base_channels=16,
        disc_layers=2,
    )
    return AutoencoderStage(model, loss, OptimConfig(lr=1e-3), DataConfig(dataset="synthetic"))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_autoencoder_trains_on_cuda(tmp_path: Path, precision: str):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    config = TrainConfig(
        steps=10, batch_size=8, device="cuda", precision=precision, log_every=1,
        sample_every=5, checkpoint_every=5,
    )  # fmt: skip
    trainer = Trainer(_stage(), Images(), config, tmp_path, progress=False)
    assert trainer.device.startswith("cuda") and trainer.precision == precision
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    assert "disc_loss" in rows[-1] and rows[-1]["gan"] != 0.0, "the GAN term is on after warmup"
    # the weights stay fp32 (autocast only changes the compute dtype) and load back on the CPU
    model, _ = load_autoencoder(tmp_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = smooth_images(2, channels=3, seed=5)
    gpu = trainer.stage.model.eval()(x.cuda(), sample_posterior=False).reconstruction.cpu()
    cpu = model(x, sample_posterior=False).reconstruction
    assert torch.allclose(gpu, cpu, atol=1e-3), (gpu - cpu).abs().max()


def test_the_perceptual_backbone_moves_to_the_gpu(tmp_path: Path):
    stage = _stage(perceptual_weight=0.1)
    config = TrainConfig(steps=3, batch_size=8, device="cuda", precision="auto", log_every=1)
    Trainer(stage, Images(), config, tmp_path, progress=False).fit()
    assert all(p.is_cuda for p in stage.loss_fn.perceptual.parameters())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(row["perceptual"] > 0 for row in rows)


def test_auto_precision_on_this_gpu():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", "cuda") == expected


def test_resume_on_cuda_continues_the_run(tmp_path: Path):
    config = dict(steps=8, batch_size=8, device="cuda", precision="fp32", log_every=1,
                  sample_every=100, checkpoint_every=4)  # fmt: skip
    Trainer(
        _stage(), Images(), TrainConfig(**{**config, "steps": 4}), tmp_path, progress=False
    ).fit()
    resumed = Trainer(_stage(), Images(), TrainConfig(**config), tmp_path, progress=False)
    assert resumed.step == 4
    resumed.fit()
    straight = tmp_path / "straight"
    Trainer(_stage(), Images(), TrainConfig(**config), straight, progress=False).fit()
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()
    ]
    direct = [
        json.loads(line)["loss"] for line in (straight / "log.jsonl").read_text().splitlines()
    ]
    # deterministic kernels (fixture): the resumed run repeats the uninterrupted one
    assert losses == pytest.approx(direct, rel=1e-5, abs=1e-6)
