"""Ship a trained run as a checkpoint in ``data/checkpoints/``: weights, measured numbers, card.

A maintainer's tool, run from the repository (it is not part of the installed package)::

    python tools/ship.py runs/ldm_fashion data/checkpoints/fashion_mnist_ldm_class \
        --title "Fashion-MNIST class-conditional LDM (f = 4 latents)" \
        --command "ldm-mini train-ldm --preset cpu --out runs/ldm_fashion" --n 1000

1. **Export**: the weights inference needs, in float16, without trainer state (it cannot be
   resumed): an autoencoder's weights; for a diffusion run (LDM, SR) its EMA weights, the first
   stage referenced by sha256 when it is a shipped autoencoder
   (:func:`ldm_mini.checkpoints.export_checkpoint`, :func:`.export_ema_checkpoint`).
2. **Measure** the exported weights (what ships) with the stage's evaluation
   (:mod:`ldm_mini.evaluation`): reconstructions for an autoencoder; FD, KID and class or
   conditioning accuracy of samples at each ``--guidance`` for an LDM; LDM-SR against bicubic
   and the regression for SR. The numbers go into the checkpoint's ``config.json``.
3. **Card**: ``README.md`` in the folder, every number in it filled in from step 2, with the
   command that trained the run and the one that measures it again; for an LDM a grid of
   samples (``samples.png``).

Refuses a destination that exists (``--force`` replaces it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ldm_mini.checkpoints import (
    CheckpointError,
    export_checkpoint,
    export_ema_checkpoint,
    read_checkpoint_config,
)


def export(run: str | Path, destination: Path, extra: dict[str, Any]) -> Path:
    """Step 1: the shippable float16 checkpoint of ``run`` in ``destination``."""
    stage = read_checkpoint_config(run)["stage"]
    if stage == "autoencoder":
        return export_checkpoint(run, destination, extra, half=True)
    return export_ema_checkpoint(run, destination, extra, half=True)


def measure(
    folder: Path, stage: str, n: int, guidances: list[float], device: str, rival: str | None = None
) -> dict:
    """Step 2: the stage's evaluation of ``folder`` (n images, seed 0)."""
    from ldm_mini import evaluation

    if stage == "autoencoder":
        return {"metrics": evaluation.evaluate_autoencoder(folder, limit=n, device=device)}
    if stage == "ldm":
        by_guidance = {
            str(w): evaluation.evaluate_ldm(folder, n, guidance=w, device=device) for w in guidances
        }
        return {"metrics": by_guidance[str(guidances[0])], "metrics_by_guidance": by_guidance}
    if stage == "sr":
        return {"metrics": evaluation.evaluate_sr(folder, n=n, device=device)}
    if stage == "inpaint":
        return {"metrics": evaluation.evaluate_inpaint(folder, n, rival=rival, device=device)}
    raise CheckpointError(
        f"{folder} is a {stage!r} checkpoint; ship.py ships autoencoder/ldm/sr/inpaint"
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.2f}"
    return f"{value}"


def _rows(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    """Every scalar number of ``metrics`` as a table row (nested dicts by their path)."""
    rows = []
    for key, value in metrics.items():
        if key in ("checkpoint", "seconds", "seconds_per_sample") or isinstance(value, str):
            continue
        if isinstance(value, dict):
            rows += _rows(value, f"{prefix}{key} / ")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int | float):
            rows.append(f"| {prefix}{key} | {_number(value)} |")
    return rows


def card(title: str, config: dict[str, Any], measured: dict[str, Any], command: str,
         machine: str, measure_command: str) -> str:  # fmt: skip
    """Step 3: the README.md of the shipped checkpoint."""
    stage, train = config["stage"], config.get("train", {})
    lines = [f"# {title}", "", f"- **Stage:** {stage}, step {config['step']:,}"]
    model = config.get("model", {})
    if stage == "autoencoder":
        kind, f, channels = (
            model.get("kind", "?").upper(),
            model.get("f"),
            model.get("latent_channels"),
        )
        lines.append(f"- **Model:** {kind} autoencoder, f = {f}, {channels} latent channels")
    else:
        first = config.get("first_stage", {})
        lines.append(f"- **First stage:** `{first.get('checkpoint')}`, latent "
                     f"{first.get('latent_channels')} channels at f = "
                     f"{first.get('downsampling_factor')}; scale factor "
                     f"{config.get('scale_factor', 1.0):.4f}")  # fmt: skip
        base, mult = model.get("base_channels"), model.get("channel_mult")
        lines.append(
            f"- **U-Net:** base {base}, multipliers {mult}, attention at levels "
            f"{model.get('attention_levels')}"
        )
    data = config.get("data", {})
    lines += [
        f"- **Data:** `{data.get('dataset')}` split `{data.get('split')}`",
        f"- **Trained with:** `{command}`",
        f"- **Training:** {config['step']:,} steps, batch {train.get('batch_size')}, "
        f"{config.get('train_seconds', 0) / 60:.1f} min on {machine}",
        "- **Weights here:** float16"
        + (" (the EMA of the trained weights)" if stage != "autoencoder" else ""),
        "",
        f"## Measured (`{measure_command}`)",
        "",
    ]
    tables = measured.get("metrics_by_guidance") or {"": measured["metrics"]}
    for guidance, metrics in tables.items():
        if guidance:
            lines += [f"### guidance w = {guidance}", ""]
        lines += ["| metric | value |", "|---|---|", *_rows(metrics), ""]
    if stage == "ldm":
        kind = (config.get("condition") or {}).get("kind")
        caption = {
            "none": "unconditional samples",
            "layout": "samples for the first 100 held-out test layouts, w = 1",
            "label_map": "samples for the first 100 held-out test label maps",
        }.get(kind, "samples, one row per class or prompt")
        lines += [f"![{caption}](samples.png)", ""]
    return "\n".join(lines)


def sample_grid(folder: Path, device: str) -> None:
    """A 10x10 grid of an LDM's samples at w = 1 (one class per column), ``samples.png``."""
    from ldm_mini.data import load_dataset
    from ldm_mini.pipelines import generate, load_ldm
    from ldm_mini.viz import save_image_grid

    ldm, config = load_ldm(folder, device)
    size = config["data"]["image_size"]
    conditions: dict[str, Any] = {}
    if ldm.conditioning == "text":
        test = load_dataset(config["data"]["dataset"], split="test")
        conditions["prompts"] = list(test["caption"][:100])
    kind = (config.get("condition") or {}).get("kind")
    if kind in ("layout", "label_map"):
        from ldm_mini.layouts import dataset_label_maps, dataset_layouts

        held = load_dataset("shapes", split="test", num_samples=100, image_size=size,
                            layouts="heldout")  # fmt: skip
        if kind == "layout":
            conditions["layouts"] = dataset_layouts(held["objects"], size,
                                                    config["condition"]["max_objects"])  # fmt: skip
        else:
            conditions["label_maps"] = dataset_label_maps(held)
    images, _, _ = generate(ldm, 100, size, seed=0, **conditions)
    save_image_grid(images, folder / "samples.png", ncols=10)


def ship(args: argparse.Namespace) -> Path:
    destination = Path(args.destination)
    if destination.exists() and not args.force:
        raise ValueError(f"{destination} exists; pass --force to replace it")
    stage = read_checkpoint_config(args.run)["stage"]
    extra = {"command": args.command, "machine": args.machine}
    with tempfile.TemporaryDirectory() as scratch:
        staged = export(args.run, Path(scratch) / "checkpoint", extra)
        measured = measure(staged, stage, args.n, args.guidance, args.device, args.rival)
    if destination.exists():  # --force, and the run exported and measured: replace it now
        shutil.rmtree(destination)
    export(args.run, destination, {**extra, **measured})
    measure_command = f"ldm-mini evaluate {stage} --checkpoint <this folder> --json --n {args.n}"
    if args.rival:
        measure_command += f" --rival {args.rival}"
    if stage == "ldm":
        sample_grid(destination, args.device)
    shipped = read_checkpoint_config(destination)
    text = card(args.title, shipped, measured, args.command, args.machine, measure_command)
    (destination / "README.md").write_text(text, encoding="utf-8")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/ship.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", help="the training run (its folder, or its checkpoint/)")
    parser.add_argument("destination", help="the new checkpoint folder, e.g. data/checkpoints/NAME")
    parser.add_argument("--title", required=True, help="the card's title")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--machine", default="this project's 2-core x86_64 CPU")
    parser.add_argument("--n", type=int, default=1000, help="images or samples measured")
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=[1.0],
        help="LDM: guidance scales measured (the first is the headline)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--rival", help="inpainting: the LDM used training-free as the rival (evaluate inpaint)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing destination")
    args = parser.parse_args(argv)
    try:
        path = ship(args)
    except (ValueError, CheckpointError, OSError) as err:
        print(f"ship.py: error: {err}", file=sys.stderr)
        return 2
    print(f"shipped {args.run} as {path}: {json.dumps(read_checkpoint_config(path)['files'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
