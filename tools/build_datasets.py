"""Rebuild the bundled datasets in ``data/`` from their sources, and their cards.

A maintainer's tool, run from the repository (it is not part of the installed package);
writes into the folder :func:`ldm_mini.data.bundled.data_dir` finds, or ``--out DIR``::

    python tools/build_datasets.py fashion_mnist  # needs Debian's dataset-fashion-mnist
    python tools/build_datasets.py emoji          # needs Debian's fonts-noto-color-emoji
    python tools/build_datasets.py photos         # needs pip install -e ".[build-data]"
                                                  # and three Debian wallpaper packages
    python tools/build_datasets.py all

Each builder writes one parquet shard per split through ``datasets`` (images PNG/JPEG
encoded), records the shard's sha256 in ``MANIFEST.json``, and regenerates ``README.md``
(the dataset cards) from the manifest. Builds are deterministic: the same sources and
library versions give the same rows.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import struct
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ldm_mini.data.bundled import MANIFEST_NAME, data_dir, sha256_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_TRAIN_ROWS = 20_000
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_SIZE = 64
EMOJI_TEST_EVERY = 10  # every 10th emoji (in codepoint order) goes to the test split
# Codepoints the font maps that are not pictures on their own: ASCII keycap bases, joiners,
# variation selectors, regional-indicator letters, skin-tone swatches, tag characters.
EMOJI_EXCLUDED_RANGES = (
    (0x0000, 0x00FF),
    (0x200D, 0x200D),
    (0x20E3, 0x20E3),
    (0xFE0E, 0xFE0F),
    (0x1F1E6, 0x1F1FF),
    (0x1F3FB, 0x1F3FF),
    (0xE0020, 0xE007F),
)

# name -> (loader package, file inside the package, split, caption, licence, credit)
PHOTO_SOURCES: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png", "train",
     "astronaut Eileen Collins", "public domain", "NASA, via scikit-image"),
    ("coffee", "skimage", "data/coffee.png", "train",
     "a cup of coffee on a saucer", "CC0-1.0", "Rachel Michetti, via scikit-image"),
    ("rocket", "skimage", "data/rocket.jpg", "train",
     "a rocket on its launch pad", "public domain", "SpaceX, via scikit-image"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "train",
     "galaxies in the Hubble deep field", "public domain", "NASA, via scikit-image"),
    ("immunohistochemistry", "skimage", "data/ihc.png", "train",
     "stained tissue under a microscope", "no known copyright restrictions",
     "CMMI, via scikit-image"),
    ("retina", "skimage", "data/retina.jpg", "train",
     "a human retina", "CC0-1.0", "Häggström, via scikit-image"),
    ("china", "sklearn", "datasets/images/china.jpg", "train",
     "a Chinese temple roof", "CC-BY-2.0", "danielbuechele (Flickr), via scikit-learn"),
    ("chelsea", "skimage", "data/chelsea.png", "test",
     "Chelsea the cat", "CC0-1.0", "Stefan van der Walt, via scikit-image"),
    ("flower", "sklearn", "datasets/images/flower.jpg", "test",
     "a flower", "CC-BY-2.0", "vultilion (Flickr), via scikit-learn"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "test",
     "Rear Admiral Grace Hopper", "public domain", "U.S. Navy, via matplotlib"),
) + tuple(
    (name, f"debian:{package}", path, "train", caption, licence,
     f"{credit}, via Debian's {package}")
    for name, package, path, caption, licence, credit in (
        ("aqua", "mate-backgrounds", "mate/nature/Aqua.jpg",
         "a drop falling into water", "GPL-2.0-or-later", "Charles Barbin"),
        ("blinds", "mate-backgrounds", "mate/nature/Blinds.jpg",
         "a green leaf lit from behind", "GPL-2.0-or-later",
         "Lennart Poettering, Andrea Cimitan"),
        ("dune", "mate-backgrounds", "mate/nature/Dune.jpg",
         "dune grass by the sea", "GPL-2.0-or-later", "Marco Cogoni, Hylke Bons"),
        ("fresh_flower", "mate-backgrounds", "mate/nature/FreshFlower.jpg",
         "an orange flower", "GPL-2.0-or-later", "Jens Ansorg"),
        ("garden", "mate-backgrounds", "mate/nature/Garden.jpg",
         "a red and yellow flower", "GPL-2.0-or-later", "Charles Barbin"),
        ("green_meadow", "mate-backgrounds", "mate/nature/GreenMeadow.jpg",
         "young grass", "GPL-2.0-or-later", "Timothy Schellhase, Lapo Calamandrei"),
        ("ladybird", "mate-backgrounds", "mate/nature/LadyBird.jpg",
         "a ladybird on a grass stem among blue flowers", "GPL-2.0-or-later",
         "Charles Barbin"),
        ("rain_drops", "mate-backgrounds", "mate/nature/RainDrops.jpg",
         "rain drops on leaves", "GPL-2.0-or-later", "blackcombwhistler07"),
        ("storm", "mate-backgrounds", "mate/nature/Storm.jpg",
         "a storm over a road", "GPL-2.0-or-later", "Sergey Nazarov"),
        ("two_wings", "mate-backgrounds", "mate/nature/TwoWings.jpg",
         "a dandelion seed before an orange flower", "GPL-2.0-or-later",
         "Charles Barbin, Hylke Bons"),
        ("wood", "mate-backgrounds", "mate/nature/Wood.jpg",
         "weathered wood", "GPL-2.0-or-later", "Jean-François Fortin Tam"),
        ("yellow_flower", "mate-backgrounds", "mate/nature/YellowFlower.jpg",
         "a yellow flower", "GPL-2.0-or-later", "Charles Barbin"),
        ("bridge", "lomiri-wallpapers-16.04", "Bridge_by_Sander_Klootwijk.jpg",
         "cables of a bridge against the sky", "CC-BY-SA-4.0", "Sander Klootwijk"),
        ("dragonfly", "lomiri-wallpapers-16.04", "Dragonfly_by_Bolly.jpg",
         "a dragonfly on a branch", "CC-BY-SA-4.0", "Bolly"),
        ("fig", "lomiri-wallpapers-16.04", "Picture_0B_by_freespace.jpg",
         "a fig in a red bowl", "CC-BY-4.0", "Trevor (freespace)"),
        ("brushes", "lomiri-wallpapers-16.04", "Picture_1A_by_freespace.jpg",
         "paint brushes", "CC-BY-4.0", "Trevor (freespace)"),
        ("wine", "lomiri-wallpapers-16.04", "Wine_by_Jakkub_Mede.jpg",
         "a room with a bottle of wine and a drum", "CC-BY-4.0", "Jakkub Mede"),
        ("aitzgorri", "lomiri-wallpapers-16.04", "aitzgorri_by_Aitzol_Berasategi.jpg",
         "an autumn forest below a mountain", "CC-BY-4.0", "Aitzol Berasategi"),
        ("toy_bird", "lomiri-wallpapers-16.04", "free_by_Peter_Nerlich.jpg",
         "a toy bird under lamps", "CC-BY-SA-4.0", "Peter Nerlich"),
        ("dogs", "lomiri-wallpapers-16.04", "friends_by_Aitzol_Berasategi.jpg",
         "two dogs at a window", "CC-BY-4.0", "Aitzol Berasategi"),
        ("clock", "lomiri-wallpapers-16.04", "greentock_by_Peter_Nerlich.jpg",
         "a wall clock", "CC-BY-SA-4.0", "Peter Nerlich"),
        ("stream", "lomiri-wallpapers-16.04", "life_by_Aitzol_Berasategi.jpg",
         "a forest stream", "CC-BY-4.0", "Aitzol Berasategi"),
        ("picos_de_europa", "lomiri-wallpapers-16.04",
         "picosdeeuropa_by_Aitzol_Berasategi.jpg",
         "mountains of the Picos de Europa", "CC-BY-4.0", "Aitzol Berasategi"),
        ("dandelions", "lomiri-wallpapers-16.04", "seeding_by_Clements_Engelhardt.jpg",
         "dandelion clocks in a meadow", "CC0-1.0", "Clemens Engelhardt"),
        ("sunset", "lomiri-wallpapers-16.04", "sunset_by_Aitzol_Berasategi.jpg",
         "the sun setting over hills", "CC-BY-4.0", "Aitzol Berasategi"),
        ("nuthatch", "lomiri-wallpapers-20.04", "Kleiber_by_Lukas_Baubkus.jpg",
         "a nuthatch on a tree trunk", "CC-BY-SA-3.0", "Lukas Baubkus"),
    )
)  # fmt: skip
# The Debian wallpapers (1,280 to 6,028 px, up to 4.4 MB each) are stored smaller: longer side
# WALLPAPER_SIDE px (Lanczos), JPEG quality WALLPAPER_QUALITY (a resized copy is a derivative
# under the same licence). Under /usr/share/backgrounds/, or $LDM_MINI_DEB_ROOT/usr/share/
# backgrounds/ for packages unpacked with `dpkg-deb -x PACKAGE.deb $LDM_MINI_DEB_ROOT`.
DEBIAN_BACKGROUNDS = Path("usr/share/backgrounds")
WALLPAPER_SIDE = 1024
WALLPAPER_QUALITY = 90

METADATA: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "title": "Fashion-MNIST",
        "license": "MIT",
        "source": "Zalando Research, https://github.com/zalandoresearch/fashion-mnist; "
        "the original IDX files from the Debian package dataset-fashion-mnist",
        "description": "28x28 greyscale pictures of clothing in 10 classes. The full 10,000-image "
        f"test split and the first {FASHION_MNIST_TRAIN_ROWS:,} images of the 60,000-image "
        "train split (in the original order), to keep data/ small. caption = the class name.",
        "image": "28x28, mode L (white object on black)",
        "columns": ["image", "label", "caption"],
        "build_command": "python tools/build_datasets.py fashion_mnist",
        "requires": "apt-get install dataset-fashion-mnist",
    },
    "emoji": {
        "title": "Noto Color Emoji",
        "license": "OFL-1.1 (font) / Apache-2.0 (artwork)",
        "source": "Google Noto Color Emoji, https://github.com/googlefonts/noto-emoji; "
        "the font from the Debian package fonts-noto-color-emoji",
        "description": "Every single-codepoint emoji of the font that has a Unicode name in this "
        "Python's unicodedata, rendered at the font's 109 px strike, cropped, centred on white "
        f"and resized to {EMOJI_SIZE}x{EMOJI_SIZE} (Lanczos). caption = the lower-cased Unicode "
        f"name. Every {EMOJI_TEST_EVERY}th emoji in codepoint order is in the test split.",
        "image": f"{EMOJI_SIZE}x{EMOJI_SIZE}, mode RGB on white",
        "columns": ["image", "caption", "codepoint"],
        "build_command": "python tools/build_datasets.py emoji",
        "requires": "apt-get install fonts-noto-color-emoji",
    },
    "photos": {
        "title": "Sample photographs",
        "license": "per image (public domain, CC0-1.0, CC-BY-2.0, CC-BY-4.0, CC-BY-SA-3.0, "
        "CC-BY-SA-4.0, GPL-2.0-or-later): see the license column",
        "source": "the sample images shipped by scikit-image, scikit-learn and matplotlib; "
        "photographs among the desktop wallpapers of the Debian packages mate-backgrounds, "
        "lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04 (licences from their "
        "debian/copyright)",
        "description": "Natural RGB photographs for super-resolution crops. The 10 sample "
        f"images at their original size (300 to 1411 px) with their original PNG/JPEG bytes; the "
        f"{sum(p[1].startswith('debian:') for p in PHOTO_SOURCES)} wallpaper photos (train only) "
        f"resized to a longer side of {WALLPAPER_SIDE} px (Lanczos) and stored as JPEG quality "
        f"{WALLPAPER_QUALITY}, each resized copy under its original's licence. Whole photos are "
        "held out for the test split: "
        + ", ".join(p[0] for p in PHOTO_SOURCES if p[3] == "test")
        + ". CC-BY and GPL images need attribution (the credit column); CC-BY-SA and GPL ones "
        "pass their licence on to copies and adaptations.",
        "image": "various sizes, mode RGB",
        "columns": ["image", "caption", "name", "license", "credit"],
        "build_command": "python tools/build_datasets.py photos",
        "requires": 'pip install -e ".[build-data]"; apt-get install mate-backgrounds '
        "lomiri-wallpapers-16.04 lomiri-wallpapers-20.04",
    },
}


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {np.prod(shape)} values, found {data.size}")
    return data.reshape(shape)


def _require(path: Path, how: str) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the source is missing. Install it with `{how}`."
        )


def build_fashion_mnist(source: Path = FASHION_MNIST_DIR) -> dict[str, dict[str, list]]:
    """Rows per split from the original IDX files: image (PIL L), label, caption."""
    _require(source, METADATA["fashion_mnist"]["requires"])
    splits = {}
    for split, prefix, rows in (
        ("train", "train", FASHION_MNIST_TRAIN_ROWS),
        ("test", "t10k", None),
    ):
        images = _read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        if rows is not None:
            images, labels = images[:rows], labels[:rows]
        splits[split] = {
            "image": [Image.fromarray(array, mode="L") for array in images],
            "label": [int(label) for label in labels],
            "caption": [FASHION_MNIST_CLASSES[int(label)].lower() for label in labels],
        }
    return splits


def _emoji_codepoints(font_path: Path) -> list[int]:
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font_path)).getBestCmap()
    keep = []
    for codepoint in sorted(cmap):
        if any(low <= codepoint <= high for low, high in EMOJI_EXCLUDED_RANGES):
            continue
        if unicodedata.name(chr(codepoint), None) is None:
            continue
        keep.append(codepoint)
    return keep


def render_emoji(character: str, font, size: int = EMOJI_SIZE) -> Image.Image | None:
    """Render one emoji to an RGB square on white, or None when the font draws nothing."""
    from PIL import ImageDraw

    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), character, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def build_emoji(font_path: Path = NOTO_EMOJI_FONT) -> dict[str, dict[str, list]]:
    """Rows per split: image (PIL RGB 64x64), caption (Unicode name), codepoint ("U+1F600")."""
    from PIL import ImageFont

    _require(font_path, METADATA["emoji"]["requires"])
    font = ImageFont.truetype(str(font_path), 109)
    splits: dict[str, dict[str, list]] = {
        s: {"image": [], "caption": [], "codepoint": []} for s in ("train", "test")
    }
    rendered = 0
    for codepoint in _emoji_codepoints(font_path):
        image = render_emoji(chr(codepoint), font)
        if image is None:
            continue
        split = "test" if rendered % EMOJI_TEST_EVERY == EMOJI_TEST_EVERY - 1 else "train"
        rendered += 1
        splits[split]["image"].append(image)
        splits[split]["caption"].append(unicodedata.name(chr(codepoint)).lower())
        splits[split]["codepoint"].append(f"U+{codepoint:04X}")
    return splits


def _package_file(package: str, relative: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise FileNotFoundError(
            f"{package} is not installed: {METADATA['photos']['requires']}"
        ) from err
    path = Path(module.__file__).parent / relative
    _require(path, METADATA["photos"]["requires"])
    return path


def _debian_file(package: str, relative: str) -> Path:
    root = Path(os.environ.get("LDM_MINI_DEB_ROOT", "/"))
    path = root / DEBIAN_BACKGROUNDS / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the source is missing. Install it with `apt-get install "
            f"{package}`, or unpack it without root (`apt-get download {package}`, then "
            "`dpkg-deb -x` the .deb into a folder) and set LDM_MINI_DEB_ROOT to that folder."
        )
    return path


def shrink_wallpaper(raw: bytes) -> bytes:
    """A wallpaper's JPEG bytes -> RGB, longer side WALLPAPER_SIDE (Lanczos), JPEG bytes."""
    with Image.open(io.BytesIO(raw)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    scale = WALLPAPER_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=WALLPAPER_QUALITY)
    return out.getvalue()


def build_photos() -> dict[str, dict[str, list]]:
    """Rows per split: the sample photos' original encoded bytes, the wallpapers shrunk."""
    columns = ("image", "caption", "name", "license", "credit")
    splits: dict[str, dict[str, list]] = {s: {c: [] for c in columns} for s in ("train", "test")}
    for name, package, relative, split, caption, licence, credit in PHOTO_SOURCES:
        if package.startswith("debian:"):
            path = _debian_file(package.removeprefix("debian:"), relative)
            raw = shrink_wallpaper(path.read_bytes())
        else:
            path = _package_file(package, relative)
            raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as probe:
            if probe.mode != "RGB":
                raise ValueError(f"{path} is {probe.mode}, the photos set holds RGB images only")
        row = {"image": {"bytes": raw, "path": None}, "caption": caption, "name": name,
               "license": licence, "credit": credit}  # fmt: skip
        for column in columns:
            splits[split][column].append(row[column])
    return splits


def _features(name: str):
    import datasets

    if name == "fashion_mnist":
        return datasets.Features({
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
            "caption": datasets.Value("string"),
        })  # fmt: skip
    if name == "emoji":
        return datasets.Features({
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "codepoint": datasets.Value("string"),
        })  # fmt: skip
    return datasets.Features({
        "image": datasets.Image(),
        **{c: datasets.Value("string") for c in ("caption", "name", "license", "credit")},
    })  # fmt: skip


BUILDERS: dict[str, Callable[[], dict[str, dict[str, list]]]] = {
    "fashion_mnist": build_fashion_mnist,
    "emoji": build_emoji,
    "photos": build_photos,
}


def write_dataset(name: str, out: Path, rows: dict[str, dict[str, list]] | None = None) -> dict:
    """Build ``name`` (unless ``rows`` are given), write its shards under ``out/name/``,
    and return its manifest entry."""
    import datasets

    rows = BUILDERS[name]() if rows is None else rows
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    entry = dict(METADATA[name], splits={})
    for split, columns in rows.items():
        dataset = datasets.Dataset.from_dict(columns, features=_features(name))
        relative = f"{name}/{split}-00000-of-00001.parquet"
        tmp = out / (relative + ".tmp")
        dataset.to_parquet(str(tmp))
        tmp.replace(out / relative)
        entry["splits"][split] = {
            "num_rows": len(dataset),
            "files": [{
                "path": relative,
                "sha256": sha256_file(out / relative),
                "bytes": (out / relative).stat().st_size,
            }],
        }  # fmt: skip
    return entry


def write_manifest(out: Path, updates: dict[str, dict]) -> dict:
    """Merge ``updates`` into ``out/MANIFEST.json`` and regenerate ``out/README.md``."""
    path = out / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    manifest.update(updates)
    manifest = dict(sorted(manifest.items()))
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_cards(manifest), encoding="utf-8")
    return manifest


def render_cards(manifest: dict[str, dict]) -> str:
    """The dataset cards (``data/README.md``), generated from the manifest."""
    lines = [
        "# Bundled datasets",
        "",
        "Generated by `python tools/build_datasets.py` from `MANIFEST.json`; do not edit by hand.",
        "Load any of them offline with `ldm_mini.data.load_dataset(name, split=...)`; list them",
        "with `ldm-mini datasets`. The procedural `shapes` set is generated at load time and has",
        "no files here (see `ldm_mini/data/shapes.py`).",
        "",
        "Each shard's sha256 is checked before it is read: a damaged or missing file fails with",
        "the command that rebuilds it (or restore it with `git checkout -- data/`).",
        "",
    ]
    for name, entry in manifest.items():
        lines += [
            f"## `{name}`: {entry['title']}",
            "",
            f"- **Licence:** {entry['license']}",
            f"- **Source:** {entry['source']}",
            f"- **How it was built:** {entry['description']}",
            f"- **Images:** {entry['image']}; columns: {', '.join(entry['columns'])}",
            f"- **Rebuild:** `{entry['build_command']}` (source: `{entry['requires']}`)",
            "",
            "| split | rows | file | bytes | sha256 |",
            "|---|---:|---|---:|---|",
        ]
        for split, info in entry["splits"].items():
            for shard in info["files"]:
                lines.append(
                    f"| {split} | {info['num_rows']:,} | `{shard['path']}` | "
                    f"{shard['bytes']:,} | `{shard['sha256']}` |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/build_datasets.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("names", nargs="+", choices=[*BUILDERS, "all"])
    parser.add_argument("--out", type=Path, default=None, help="data folder (default: data/)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else data_dir()
    names = list(BUILDERS) if "all" in args.names else args.names
    updates = {}
    for name in names:
        print(f"building {name} ...", file=sys.stderr)
        updates[name] = write_dataset(name, out)
        for split, info in updates[name]["splits"].items():
            print(f"  {split}: {info['num_rows']} rows", file=sys.stderr)
    write_manifest(out, updates)
    print(f"wrote {out / MANIFEST_NAME} and {out / 'README.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
