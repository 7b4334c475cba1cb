"""The ``ldm-mini`` command (also ``python -m ldm_mini``).

Subcommands import what they need when they run, so ``ldm-mini --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldm_mini import __version__


def _cmd_datasets(args: argparse.Namespace) -> int:
    from ldm_mini.data import list_datasets

    infos = list_datasets()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    rows = [("name", "kind", "rows per split", "images", "on disk", "licence")]
    for info in infos:
        splits = ", ".join(f"{split} {rows:,}" for split, rows in info.splits.items())
        size = f"{info.bytes_on_disk / 1e6:.1f} MB" if info.bytes_on_disk else "generated"
        rows.append((info.name, info.kind, splits, info.image, size, info.license))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    print(
        "\nAlso: a folder of your own images (load_dataset('path/to/folder')), or a Hugging "
        "Face Hub id such as 'zalando-datasets/fashion_mnist' (online only)."
    )
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from ldm_mini import environment

    info = environment.report(check_network=not args.no_network)
    print(json.dumps(info, indent=2) if args.json else environment.format_report(info))
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from ldm_mini import tour

    page = tour.run_tour(Path(args.out), per_dataset=args.n, seed=args.seed)
    print(f"wrote {page}")
    return 0


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from ldm_mini.configs import apply_overrides, load_preset
    from ldm_mini.first_stage import train_autoencoder

    config = load_preset("autoencoder", args.preset)
    overrides = list(args.set)
    for flag, key in (
        ("dataset", "data.dataset"),
        ("image_size", "data.image_size"),
        ("kind", "model.kind"),
        ("f", "model.f"),
        ("latent_channels", "model.latent_channels"),
        ("steps", "train.steps"),
        ("batch_size", "train.batch_size"),
        ("device", "train.device"),
        ("precision", "train.precision"),
        ("seed", "train.seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    config = apply_overrides(config, overrides)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    result = train_autoencoder(config, args.out, resume=not args.no_resume, progress=not args.quiet)
    print(json.dumps(result))
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ldm_mini.first_stage import evaluate_autoencoder

    result = evaluate_autoencoder(
        args.checkpoint,
        dataset=args.dataset,
        split=args.split,
        limit=args.limit,
        perceptual_backbone=args.perceptual,
        feature_extractor=args.features,
        with_fd=not args.no_fd,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value:.4f}" if isinstance(value, float) else f"{key:22s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldm-mini",
        description="Latent Diffusion Models, built stage by stage: the course's command line.",
    )
    parser.add_argument("--version", action="version", version=f"ldm-mini {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    datasets = sub.add_parser("datasets", help="list the bundled and procedural datasets")
    datasets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    datasets.set_defaults(func=_cmd_datasets)

    env = sub.add_parser("env", help="show device, versions and what is reachable")
    env.add_argument("--json", action="store_true", help="print JSON")
    env.add_argument("--no-network", action="store_true", help="skip the reachability checks")
    env.set_defaults(func=_cmd_env)

    tour = sub.add_parser("tour", help="write a picture tour of every dataset (offline)")
    tour.add_argument("--out", default="runs/tour", help="output folder (default: runs/tour)")
    tour.add_argument("--n", type=int, default=24, help="images per dataset (default: 24)")
    tour.add_argument("--seed", type=int, default=0, help="which images to pick (default: 0)")
    tour.set_defaults(func=_cmd_tour)

    from ldm_mini.configs import PRESETS

    train_ae = sub.add_parser(
        "train-autoencoder",
        help="train the first stage (KL or VQ autoencoder); resumes if --out holds a run",
        description="Train a perceptual autoencoder from a preset, with optional overrides. "
        "Re-running with the same --out resumes from its last checkpoint.",
    )
    train_ae.add_argument("--preset", default="cpu", choices=PRESETS, help="default: cpu")
    train_ae.add_argument(
        "--out", required=True, help="run folder (checkpoint/, log.jsonl, samples/)"
    )
    train_ae.add_argument("--dataset", help="dataset name or folder (default: the preset's)")
    train_ae.add_argument("--image-size", type=int, help="training image size")
    train_ae.add_argument("--kind", choices=["kl", "vq"], help="regularization")
    train_ae.add_argument("--f", type=int, choices=[1, 2, 4, 8], help="downsampling factor")
    train_ae.add_argument("--latent-channels", type=int, help="latent channels c")
    train_ae.add_argument("--steps", type=int, help="training steps")
    train_ae.add_argument("--batch-size", type=int, help="batch size")
    train_ae.add_argument("--device", help="auto, cpu, cuda, mps")
    train_ae.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    train_ae.add_argument("--seed", type=int)
    train_ae.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="any other setting, e.g. --set loss.disc_start=2000 (repeatable)",
    )  # fmt: skip
    train_ae.add_argument("--no-resume", action="store_true", help="refuse to resume; start over")
    train_ae.add_argument("--print-config", action="store_true", help="print the config and exit")
    train_ae.add_argument("--quiet", action="store_true", help="no progress bar")
    train_ae.set_defaults(func=_cmd_train_autoencoder)

    evaluate = sub.add_parser("evaluate", help="measure a trained checkpoint")
    evaluate_sub = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)
    ev_ae = evaluate_sub.add_parser("autoencoder", help="reconstruction metrics of an autoencoder")
    ev_ae.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    ev_ae.add_argument("--dataset", help="default: the dataset it trained on")
    ev_ae.add_argument("--split", default="test")
    ev_ae.add_argument("--limit", type=int, help="only the first N images")
    ev_ae.add_argument("--perceptual", help="perceptual backbone (default: the checkpoint's)")
    ev_ae.add_argument("--features", default="auto", help="FD feature extractor (default: auto)")
    ev_ae.add_argument("--no-fd", action="store_true", help="skip the Frechet distance")
    ev_ae.add_argument("--device", default="cpu")
    ev_ae.add_argument("--json", action="store_true", help="print one JSON object")
    ev_ae.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ldm-mini``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as err:
        # the package's own errors (bad data, damaged checkpoints, diverged training) and bad
        # values are reported in one line; anything else keeps its traceback
        if not (isinstance(err, ValueError) or type(err).__module__.startswith("ldm_mini")):
            raise
        print(f"ldm-mini: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
