"""``ldm-mini demo``: the whole pipeline, offline, on a laptop CPU, in minutes.

The README's main job. It uses the shipped checkpoints (``data/checkpoints``) and writes to
one folder: reconstructions by the autoencoder (stage 1), a short fresh LDM training run
with a progress bar (so the learner sees training happen), class-conditional samples of the
shipped LDM, a denoising animation (decoded latents after every DDIM step), ``metrics.json``
and an ``index.html`` page that shows them all. Notebook 06_latent_diffusion explains each.
"""

from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ldm_mini import viz
from ldm_mini.classifier import FASHION_CLASSES

SHIPPED_AUTOENCODER = "fashion_mnist_kl_f4"
SHIPPED_LDM = "fashion_mnist_ldm_class"
CLASS_NAMES = FASHION_CLASSES  # one row per class in the grids


def run_demo(
    out: str | Path = "runs/demo",
    train_minutes: float = 3.0,
    fresh_guidance: float = 3.0,
    num_samples: int = 100,
    eval_samples: int = 500,
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Run the demo into ``out`` on ``device`` ("auto": CUDA, then MPS, then the CPU);
    returns the metrics (also written to metrics.json). ``progress``: bars and a line per step
    on stderr (stdout stays free for the caller's results)."""

    def say(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    from ldm_mini.configs import apply_overrides
    from ldm_mini.data import TensorImageDataset, load_dataset
    from ldm_mini.environment import pick_device
    from ldm_mini.evaluation import evaluate_autoencoder
    from ldm_mini.metrics import frechet_distance
    from ldm_mini.pipelines import generate, load_autoencoder, load_ldm
    from ldm_mini.stages.ldm import load_ldm_preset, train_ldm

    if not train_minutes > 0:
        raise ValueError(f"--train-minutes must be > 0, got {train_minutes}")
    if not fresh_guidance >= 1:
        raise ValueError(f"--fresh-guidance must be >= 1 (1: no guidance), got {fresh_guidance}")
    if num_samples < 10 or num_samples % 10:
        raise ValueError(
            f"--n must be a positive multiple of 10 (one row per class), got {num_samples}"
        )
    device = pick_device(device)
    say(f"device: {device}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"seed": seed, "device": device}
    sections: list[tuple[str, str, str]] = []

    # 1. the first stage: x -> z = E(x) -> D(z)
    say("[1/4] autoencoder: reconstructions and their quality")
    autoencoder_path = f"shipped:{SHIPPED_AUTOENCODER}"
    autoencoder, _ = load_autoencoder(autoencoder_path, device)
    test = TensorImageDataset(load_dataset("fashion_mnist", split="test"), image_size=32)
    x = torch.stack([test[i]["image"] for i in range(16)])
    with torch.no_grad():
        z = autoencoder.encode_latent(x.to(device))
        reconstruction = autoencoder.decode_latent(z).clamp(-1, 1).cpu()
    viz.save_image_grid(torch.cat([x, reconstruction]), out / "reconstructions.png", 16, 3)
    recon = evaluate_autoencoder(
        autoencoder_path, limit=500, with_fd=False, device=device, progress=progress
    )
    metrics["autoencoder"] = {
        k: recon[k] for k in ("psnr", "ssim", "perceptual", "perceptual_backbone", "latent_shape")
    } | {"n": recon["n"]}
    sections.append(
        (
            "1. The autoencoder (stage 1)",
            "reconstructions.png",
            f"Top: test images (32x32). Bottom: D(E(x)) through a {tuple(z.shape[1:])} latent. "
            f"On {recon['n']} test images: PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.3f}.",
        )
    )

    # 2. a short fresh LDM run with the course's recipe, to see training happen
    from ldm_mini.classifier import class_accuracy, load_classifier

    say(f"[2/4] a fresh LDM: {train_minutes:g} minutes of training on the latents")
    config = apply_overrides(
        load_ldm_preset("cpu"),
        [f"train.max_minutes={train_minutes}", "data.limit=10000", "train.log_every=10",
         "train.sample_every=1000000", "train.checkpoint_every=1000000", f"train.seed={seed}",
         f"train.device={json.dumps(device)}"],
    )  # fmt: skip
    fresh = out / "fresh_ldm"
    train_start = time.perf_counter()
    train_ldm(config, fresh, resume=False, progress=progress)
    log = [json.loads(line) for line in (fresh / "log.jsonl").read_text().splitlines()]
    fresh_ldm, _ = load_ldm(fresh, device)
    fresh_labels = torch.arange(num_samples) % 10
    fresh_images, _, _ = generate(
        fresh_ldm, num_samples, 32, steps=50, seed=seed, labels=fresh_labels,
        guidance=fresh_guidance, progress=progress,
    )  # fmt: skip
    fresh_images = fresh_images.cpu()
    fresh_score = class_accuracy(load_classifier(), fresh_images, fresh_labels)
    metrics["fresh_ldm"] = {
        "steps": log[-1]["step"],
        "train_seconds": log[-1]["seconds"],
        "seconds": round(time.perf_counter() - train_start, 1),
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "guidance": fresh_guidance,
        "class_accuracy": fresh_score["accuracy"],
        "class_accuracy_n": fresh_score["n"],
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3))
    axis.plot([r["step"] for r in log], [r["loss"] for r in log])
    axis.set_xlabel("step"), axis.set_ylabel("loss (v-prediction MSE)")
    axis.set_title(f"fresh LDM, {log[-1]['step']} steps in {log[-1]['seconds']:.0f} s")
    viz.save_figure(fig, out / "fresh_loss.png")
    plt.close(fig)
    by_class = fresh_images[torch.argsort(fresh_labels, stable=True)]
    viz.save_image_grid(by_class, out / "fresh_samples.png", num_samples // 10, 3)
    sections.append(
        (
            f"2. A fresh LDM, trained here for {train_minutes:g} minutes",
            "fresh_loss.png",
            f"{log[-1]['step']} steps of the cpu preset's recipe (v-prediction, a cosine learning "
            f"rate decaying over the {train_minutes:g}-minute budget, EMA) on cached latents.",
        )
    )
    sections.append(
        (
            "",
            "fresh_samples.png",
            f"Samples of the fresh model, one row per class (DDIM 50, guidance w = "
            f"{fresh_guidance:g}). The shipped Fashion-MNIST classifier reads "
            f"{fresh_score['accuracy']:.0%} of them as the class they were asked for (its own "
            "accuracy on real test images is 91%).",
        )
    )

    # 3. the shipped LDM: samples per class and the denoising animation
    say("[3/4] the shipped LDM: samples per class and a denoising animation")
    ldm, ldm_config = load_ldm(f"shipped:{SHIPPED_LDM}", device)
    labels = torch.arange(num_samples) % 10
    sample_start = time.perf_counter()
    images, _, _ = generate(
        ldm, num_samples, 32, steps=50, seed=seed, labels=labels, progress=progress
    )
    images = images.cpu()
    metrics["seconds_per_sample"] = (time.perf_counter() - sample_start) / num_samples
    by_class = images[torch.argsort(labels, stable=True)]
    viz.save_image_grid(by_class, out / "samples.png", num_samples // 10, 3)
    sections.append(
        (
            "3. Samples of the shipped class-conditional LDM",
            "samples.png",
            "One row per class (" + ", ".join(CLASS_NAMES) + "), DDIM 50 steps, EMA weights, "
            f"{metrics['seconds_per_sample'] * 1000:.0f} ms per sample here.",
        )
    )
    trajectory_labels = torch.arange(16) % 10
    _, _, trajectory = generate(
        ldm, 16, 32, steps=25, seed=seed, labels=trajectory_labels, return_trajectory=True,
        progress=progress,
    )  # fmt: skip
    frames = [ldm.decode(latent.to(device)).clamp(-1, 1).cpu() for latent in trajectory.trajectory]
    viz.save_trajectory_gif(frames, out / "denoising.gif", ncols=8, scale=3)
    sections.append(
        (
            "The denoising trajectory",
            "denoising.gif",
            "z_T ~ N(0, I), then each of 25 DDIM steps, every frame decoded with one pass of D.",
        )
    )

    # 4. how close are the samples to real images (FD, same feature extractor both ways)
    say(f"[4/4] FD of {eval_samples} samples against {eval_samples} test images")
    real = torch.stack([test[i]["image"] for i in range(eval_samples)])
    fake, _, _ = generate(ldm, eval_samples, 32, steps=50, seed=seed + 1, progress=progress)
    fd = frechet_distance(real, fake.cpu(), progress=progress)
    with torch.no_grad():
        latents = autoencoder.encode_latent(real.to(device))
        reconstructed = autoencoder.decode_latent(latents).clamp(-1, 1).cpu()
    fd_recon = frechet_distance(real, reconstructed, fd["feature_extractor"], progress=progress)
    metrics["ldm"] = {
        "checkpoint": SHIPPED_LDM,
        "n": eval_samples,
        "fd": fd["fd"],
        "fd_label": fd["label"],
        "fd_reconstructions": fd_recon["fd"],
        "card_fd": ldm_config.get("metrics", {}).get("fd"),
    }
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    body = []
    for title, image, text in sections:
        if title:
            body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(f"<p>{html.escape(text)}</p><img src='{image}' style='max-width:100%'>")
    table = (
        f"<h2>4. Numbers</h2><p>{fd['label']} ({eval_samples} samples vs {eval_samples} test "
        f"images): <b>{fd['fd']:.1f}</b>; the autoencoder's reconstructions of the same test "
        f"images: {fd_recon['fd']:.1f} (a floor for any LDM on this autoencoder). FD on a few "
        "hundred images is biased upward; compare only numbers measured the same way.</p>"
        f"<pre>{html.escape(json.dumps(metrics, indent=2))}</pre>"
    )
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>ldm-mini demo</title></head>"
        "<body><h1>ldm-mini: latent diffusion, end to end</h1>"
        + "\n".join(body)
        + table
        + f"<p>Total {metrics['seconds']:.0f} s.</p></body></html>\n",
        encoding="utf-8",
    )
    return metrics
