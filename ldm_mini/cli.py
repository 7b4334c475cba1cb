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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ldm-mini``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from ldm_mini.data.errors import DatasetError

    try:
        return args.func(args)
    except DatasetError as err:
        print(f"ldm-mini: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
