"""The paper's f-sweep in miniature: LDM-1, -2, -4, -8 with one U-Net and one wall-clock budget.

Taught in notebook 09_evaluation_and_f_sweep. Rombach et al. (Sec. 4.1, Fig. 6) train LDMs on
first stages with downsampling factors f in {1, 2, 4, 8, 16, 32} and find that small f (pixel
space, LDM-1) trains slowly, very large f loses detail in the first stage, and f = 4 to 8
balance cost and quality. Here, on 32x32 Fashion-MNIST: for each f > 1 a KL autoencoder is
trained with the same settings and number of steps (latent (c_f, 32/f, 32/f)); f = 1 is pixel
space (the identity first stage). Then the same class-conditional U-Net config (the LDM preset's
recipe) is trained on each for the same number of seconds, enforced by the engine's clock
(``train.max_minutes``: each run trains until its budget is spent, whatever its step rate). Each
run is scored by FD and KID of its samples against the test split, by the class accuracy of its
samples (the shipped Fashion-MNIST classifier, :mod:`ldm_mini.classifier`), and by its sampling
time.

Everything is written under one folder and resumes: a rerun reuses finished runs and the
measurements recorded in ``sweep.json`` (delete the folder to measure again).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm_mini.configs import apply_overrides, load_preset
from ldm_mini.evaluation import evaluate_autoencoder, evaluate_ldm
from ldm_mini.stages.autoencoder import train_autoencoder
from ldm_mini.stages.ldm import load_ldm_preset, train_ldm

FACTORS = (1, 2, 4, 8)
# latent channels c_f per factor: c grows as the grid shrinks (f = 4: the course's 8x8x8)
LATENT_CHANNELS = {2: 4, 4: 8, 8: 16}
# one level per halving: log2(f) + 1 levels (f = 4: the cpu preset's [1, 2, 4])
CHANNEL_MULT = {2: [1, 2], 4: [1, 2, 4], 8: [1, 2, 4, 4]}


@dataclass
class SweepConfig:
    """What the sweep trains and measures. The defaults are the full run of notebook 09."""

    factors: tuple[int, ...] = FACTORS
    dataset: str = "fashion_mnist"
    autoencoder_preset: str = "cpu"  # "tiny" in quick mode (tests)
    ldm_preset: str = "cpu"  # its U-Net is the one every f gets
    image_size: int = 32
    data_limit: int | None = None  # training images (None: the whole train split)
    autoencoder_steps: int = 1200  # for every f > 1 (the shipped f = 4 model had 3,600)
    ldm_seconds: float = 300.0  # the wall-clock budget of every LDM's training steps
    ldm_batch_size: int | None = None  # None: the LDM preset's
    eval_samples: int = 500  # samples (and test images) for FD / KID and reconstructions
    sample_steps: int = 50  # DDIM steps
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.factors = tuple(self.factors)
        unknown = [f for f in self.factors if f not in (1, *LATENT_CHANNELS)]
        if unknown or not self.factors:
            raise ValueError(f"factors must be among {FACTORS}, got {list(self.factors)}")
        if self.image_size % (2 * max(self.factors)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2 f = "
                f"{2 * max(self.factors)} (the U-Net halves the latent once)"
            )
        for name in ("autoencoder_steps", "eval_samples", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ldm_seconds > 0:
            raise ValueError(f"ldm_seconds must be > 0, got {self.ldm_seconds}")
        if self.ldm_batch_size is not None and self.ldm_batch_size < 1:
            raise ValueError(f"ldm_batch_size must be None or >= 1, got {self.ldm_batch_size}")
        if self.eval_samples < 2:
            raise ValueError("eval_samples must be >= 2 (FD needs two images)")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "factors": list(self.factors)}


def autoencoder_config(f: int, sweep: SweepConfig) -> dict[str, Any]:
    """The sweep's autoencoder preset (cpu by default) with factor f, c_f latent channels and
    the sweep's steps. The adversarial phase keeps the preset's share of the run (the last
    ~20% of the steps)."""
    if f not in LATENT_CHANNELS:
        raise ValueError(f"no autoencoder for f = {f}; choose one of {sorted(LATENT_CHANNELS)}")
    preset = load_preset("autoencoder", sweep.autoencoder_preset)
    share = sweep.autoencoder_steps / preset["train"]["steps"]
    overrides = {
        "data.dataset": sweep.dataset,
        "data.image_size": sweep.image_size,
        "data.limit": sweep.data_limit,
        "model.f": f,
        "model.latent_channels": LATENT_CHANNELS[f],
        "model.channel_mult": CHANNEL_MULT[f],
        "loss.disc_start": int(preset["loss"]["disc_start"] * share),
        "loss.disc_warmup": max(1, int(preset["loss"]["disc_warmup"] * share)),
        "train.steps": sweep.autoencoder_steps,
        "train.seed": sweep.seed,
        "train.device": sweep.device,
        "train.sample_every": sweep.autoencoder_steps,
        "train.checkpoint_every": max(1, sweep.autoencoder_steps // 4),
    }
    return apply_overrides(preset, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def ldm_config(first_stage: str, sweep: SweepConfig) -> dict[str, Any]:
    """The sweep's LDM preset (its U-Net and recipe unchanged; cpu by default), class-conditional,
    on ``first_stage`` (a folder or ``identity``), trained for ``sweep.ldm_seconds`` of wall
    clock (the engine stops when the budget is spent; the cosine decay spans the budget)."""
    preset = load_ldm_preset(sweep.ldm_preset)
    overrides = {
        "data.dataset": sweep.dataset,
        "data.image_size": sweep.image_size,
        "data.limit": sweep.data_limit,
        "first_stage.checkpoint": first_stage,
        "condition.kind": "class",
        "train.steps": 10**7,  # an upper bound: the clock ends the run
        "train.max_minutes": sweep.ldm_seconds / 60.0,
        "train.batch_size": sweep.ldm_batch_size or preset["train"]["batch_size"],
        "train.seed": sweep.seed,
        "train.device": sweep.device,
        "train.log_every": 1,
        "train.sample_every": 10**7,  # the last step writes the sample grid
        "train.checkpoint_every": 500,
    }
    return apply_overrides(preset, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def _autoencoder_row(path: Path, sweep: SweepConfig) -> dict[str, Any]:
    result = evaluate_autoencoder(path, limit=sweep.eval_samples, device=sweep.device)
    return {
        "latent_shape": result["latent_shape"],
        "ae_psnr": result["psnr"],
        "ae_ssim": result["ssim"],
        "ae_fd": result["fd"],
    }


def run_f_sweep(
    out: str | Path, sweep: SweepConfig | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Train and measure LDM-f for every f in ``sweep.factors`` under ``out`` (resumable).

    Returns one row per f: latent_shape, compression (pixels / latent values), the first
    stage's reconstruction metrics on the test images (ae_psnr, ae_ssim, ae_fd; None for
    f = 1), the LDM's steps, steps_per_second and train_seconds (the budget, to the step),
    its samples' fd, kid and class_accuracy (w = 1, the first ``eval_samples`` test images),
    and seconds_per_sample.
    """
    sweep = sweep or SweepConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "sweep.json"
    manifest: dict[str, Any] = {"config": sweep.to_dict(), "runs": {}}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") != sweep.to_dict():
            raise ValueError(
                f"{out} holds a sweep with other settings ({manifest.get('config')}); "
                "pick another folder or delete it to start over"
            )
    rows = []
    for f in sweep.factors:
        run = manifest["runs"].setdefault(str(f), {})
        if "result" in run:  # trained and measured by an earlier call
            rows.append(run["result"])
            continue
        if f == 1:
            first_stage = "identity"
            row: dict[str, Any] = {
                "latent_shape": [1, sweep.image_size, sweep.image_size],
                "ae_psnr": None,
                "ae_ssim": None,
                "ae_fd": None,
            }
        else:
            folder = out / f"autoencoder_f{f}"
            train_autoencoder(autoencoder_config(f, sweep), folder, progress=progress)
            first_stage = str(folder)
            row = _autoencoder_row(folder, sweep)
        folder = out / f"ldm_f{f}"
        train_ldm(ldm_config(first_stage, sweep), folder, progress=progress)
        last = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
        score = evaluate_ldm(
            folder,
            n=sweep.eval_samples,
            steps=sweep.sample_steps,
            seed=sweep.seed,
            device=sweep.device,
        )
        channels, height, width = row["latent_shape"]
        row.update(
            f=f,
            compression=sweep.image_size**2 / (channels * height * width),
            steps=last["step"],
            steps_per_second=last["step"] / last["seconds"],
            train_seconds=last["seconds"],
            fd=score["fd"],
            fd_label=score["fd_label"],
            kid=score["kid"],
            kid_std=score["kid_std"],
            class_accuracy=score.get("class_accuracy"),
            seconds_per_sample=score["seconds_per_sample"],
        )
        run["result"] = row
        manifest_path.write_text(json.dumps(manifest, indent=1))
        rows.append(row)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows
