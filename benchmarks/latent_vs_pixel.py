"""Pixel space (LDM-1) against latent space (LDM-4) with the same U-Net widths, in one run.

The paper's central claim, measured: diffusion on the f = 4 latents of the shipped
autoencoder (8x8x8 for 32x32 Fashion-MNIST) against diffusion on the 32x32 pixels, with the
same U-Net preset (only the input channels differ). For each space:

* training throughput (images per second; forward, backward, AdamW step, with the LDM
  preset's batch size and learning rate), interleaved rounds after warm-up, medians;
* training activation memory: the bytes autograd saves for backward in one training step
  (measured with saved-tensor hooks, so it works on CPU; on CUDA the peak allocated memory
  is printed too);
* quality after the same wall-clock budget: a class-conditional LDM trained from scratch by the
  course's engine with the preset's recipe (v-prediction, cosine decay over the budget, EMA),
  stopped by the engine's clock (``train.max_minutes``, the same seconds for both), then scored
  on ``--n`` samples at w = 1 (DDIM, ``--eta``): FD-EffNet against the first n test images, the
  class accuracy of the samples (the shipped classifier) and sampling seconds per image
  (decoding included). The latent model's FD is also given as a ratio to the autoencoder's
  reconstruction FD measured the same way (reconstructions of the first n training images
  against the same test images): the floor any model on these latents can reach.

An f = 8 autoencoder is not shipped, so f = 8 is left out (notebook 09's f-sweep trains one).
Prints a table and a final JSON line with ``throughput_ratio`` (latent / pixel images per
second). Usage::

    python benchmarks/latent_vs_pixel.py --budget 600 --n 1000 --eta 1 --json-out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ldm_mini.data import TensorImageDataset, load_dataset
from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.evaluation import evaluate_ldm
from ldm_mini.f_sweep import SweepConfig, ldm_config
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion, estimate_scale_factor
from ldm_mini.pipelines import load_autoencoder
from ldm_mini.stages.ldm import (
    encode_dataset,
    load_ldm_preset,
    train_ldm,
)
from ldm_mini.unet import UNet, unet_preset

AUTOENCODER = "shipped:fashion_mnist_kl_f4"


def build(space: str, autoencoder, preset: str, seed: int) -> LatentDiffusion:
    """An unconditional LDM for ``space`` ("pixel" or "latent") with the preset's U-Net."""
    schedule = NoiseSchedule.from_name("scaled_linear", 1000)
    first_stage = IdentityFirstStage(1) if space == "pixel" else autoencoder
    channels = 1 if space == "pixel" else autoencoder.config.latent_channels
    torch.manual_seed(seed)
    return LatentDiffusion(first_stage, UNet(unet_preset(preset, channels)), schedule)


def saved_activation_bytes(step) -> int:
    """Bytes of the tensors autograd saves for backward during ``step()``."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", help="U-Net preset for both (default: cpu)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the LDM preset's batch size"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per space")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument(
        "--budget", type=float, default=600, help="training seconds per space (0: no FD phase)"
    )
    parser.add_argument("--n", type=int, default=1000, help="samples and test images for FD")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM's fresh noise per step")
    parser.add_argument("--out", help="folder for the two training runs (default: temporary)")
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="also write the final JSON to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    autoencoder, _ = load_autoencoder(AUTOENCODER)
    autoencoder = autoencoder.to(device)
    train = TensorImageDataset(
        load_dataset("fashion_mnist", split="train").select(range(args.train_images)), 32
    )
    images, _ = encode_dataset(IdentityFirstStage(1), train)
    latents, _ = encode_dataset(autoencoder, train, device=str(device))
    scale = estimate_scale_factor(IdentityFirstStage(latents.shape[1]), [latents])
    data = {"pixel": images.to(device), "latent": (latents * scale["scale_factor"]).to(device)}

    models = {space: build(space, autoencoder, args.preset, args.seed).to(device)
              for space in ("pixel", "latent")}  # fmt: skip
    preset = load_ldm_preset(args.preset)  # its learning rate and batch size, for both spaces
    lr = preset["optim"]["lr"]
    if args.batch_size is None:
        args.batch_size = preset["train"]["batch_size"]
    optimizers = {s: torch.optim.AdamW(m.unet.parameters(), lr) for s, m in models.items()}
    generator = torch.Generator().manual_seed(args.seed)

    def train_step(space: str) -> None:
        index = torch.randint(0, data[space].shape[0], (args.batch_size,), generator=generator)
        loss = models[space].training_loss(data[space][index.to(device)])
        optimizers[space].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[space].step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # throughput: warm-up, then interleaved timed rounds
    rates: dict[str, list[float]] = {space: [] for space in models}
    for space in models:
        for _ in range(2):
            train_step(space)
    for _ in range(args.repeats):
        for space in models:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(space)
            sync()
            rates[space].append(args.steps * args.batch_size / (time.perf_counter() - start))
    throughput = {space: statistics.median(values) for space, values in rates.items()}
    memory = {space: saved_activation_bytes(lambda s=space: train_step(s)) for space in models}
    print(f"throughput (images/s): {throughput}; activations (MB): "
          f"{ {s: round(b / 2**20, 1) for s, b in memory.items()} }", flush=True)  # fmt: skip

    # the same wall-clock training budget for both, then FD and class accuracy
    results = {
        space: {
            "train_images_per_second": throughput[space],
            "activation_mb_per_step": memory[space] / 2**20,
            "sample_seconds_per_image": None,
            "budget_seconds": args.budget,
            "budget_steps": 0,
            "fd": None,
            "fd_label": None,
            "class_accuracy": None,
        }
        for space in models
    }
    out = Path(args.out or tempfile.mkdtemp(prefix="latent_vs_pixel-"))
    sweep = SweepConfig(
        factors=(1, 4),
        ldm_preset=args.preset,
        ldm_seconds=args.budget if args.budget > 0 else 1.0,
        ldm_batch_size=args.batch_size,
        eval_samples=max(args.n, 2),
        sample_steps=args.sample_steps,
        seed=args.seed,
        device=args.device,
    )
    for space, first_stage in (("pixel", "identity"), ("latent", AUTOENCODER)):
        if args.budget <= 0:
            break
        folder = out / space
        train_ldm(ldm_config(first_stage, sweep), folder, progress=False)
        last = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
        score = evaluate_ldm(
            folder, n=args.n, steps=args.sample_steps, seed=args.seed, device=args.device,
            eta=args.eta, with_kid=False,
        )  # fmt: skip
        print(f"{space}: {last['step']} steps in {last['seconds']:.0f} s, FD {score['fd']:.1f}, "
              f"class accuracy {score['class_accuracy']:.3f}, "
              f"{score['seconds_per_sample']:.4f} s per sample", flush=True)  # fmt: skip
        results[space].update(
            sample_seconds_per_image=score["seconds_per_sample"],
            budget_steps=last["step"],
            train_seconds=last["seconds"],
            fd=score["fd"],
            fd_label=score["fd_label"],
            class_accuracy=score["class_accuracy"],
            class_accuracy_by_class=score["class_accuracy_by_class"],
        )
        if device.type == "cuda":
            results[space]["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    reconstruction_fd = None
    if args.budget > 0:
        from speedrun import Scorer  # the speedrun's reference, measured the same way

        reconstruction_fd = Scorer(autoencoder, args.device).reconstruction_fd(args.n)
        results["latent"]["reconstruction_fd"] = reconstruction_fd
        ratio = results["latent"]["fd"] / reconstruction_fd
        results["latent"]["fd_ratio_to_reconstruction"] = ratio

    print(f"U-Net preset {args.preset!r} for both; batch {args.batch_size}; AdamW lr {lr}; "
          f"{torch.get_num_threads()} threads; device {device}; DDIM {args.sample_steps} "
          f"steps, eta {args.eta}, n = {args.n}")  # fmt: skip
    header = (f"{'space':8s} {'input':>10s} {'img/s':>8s} {'act. MB':>8s} {'s/sample':>9s} "
              f"{'steps in budget':>15s} {'FD':>8s} {'class acc.':>10s}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for space, row in results.items():
        shape = "1x32x32" if space == "pixel" else "x".join(map(str, latents.shape[1:]))
        sample = "-" if row["fd"] is None else f"{row['sample_seconds_per_image']:.4f}"
        fd = "-" if row["fd"] is None else f"{row['fd']:.2f}"
        accuracy = "-" if row["class_accuracy"] is None else f"{row['class_accuracy']:.3f}"
        print(f"{space:8s} {shape:>10s} {row['train_images_per_second']:8.1f} "
              f"{row['activation_mb_per_step']:8.1f} {sample:>9s} "
              f"{row['budget_steps']:15d} {fd:>8s} {accuracy:>10s}")  # fmt: skip
    if reconstruction_fd is not None:
        print(
            f"the autoencoder's reconstructions: FD {reconstruction_fd:.1f}; the latent model's "
            f"FD is {results['latent']['fd_ratio_to_reconstruction']:.2f}x that"
        )
    sampled = results["latent"]["fd"] is not None
    summary = {
        "throughput_ratio": throughput["latent"] / throughput["pixel"],
        "sampling_speedup": results["pixel"]["sample_seconds_per_image"]
        / results["latent"]["sample_seconds_per_image"]
        if sampled
        else None,
        "fd_pixel": results["pixel"]["fd"],
        "fd_latent": results["latent"]["fd"],
        "fd_label": results["latent"]["fd_label"],
        "class_accuracy_pixel": results["pixel"]["class_accuracy"],
        "class_accuracy_latent": results["latent"]["class_accuracy"],
        "reconstruction_fd": reconstruction_fd,
        "spaces": results,
        "settings": {
            "preset": args.preset,
            "batch_size": args.batch_size,
            "lr": lr,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "train_images": args.train_images,
            "n": args.n,
            "sample_steps": args.sample_steps,
            "eta": args.eta,
            "guidance": 1.0,
            "recipe": {k: v for k, v in preset.items() if k in ("diffusion", "optim")},
            "lr_schedule": preset["train"]["lr_schedule"],
            "ema_decay": preset["train"]["ema_decay"],
        },
        "command": "python benchmarks/latent_vs_pixel.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(summary))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
