"""Make an executed notebook small and readable on the web, without losing a pixel.

After a full-mode run (``jupyter nbconvert --execute --inplace NB``), before committing:

    python tools/shrink_notebook.py notebooks/06_latent_diffusion.ipynb [more notebooks]

- stored widget state (notebook metadata) and widget views (progress bars that show stuck at
  "0/1000" on the web) are removed; a cell keeps its other outputs;
- every PNG is re-encoded losslessly: an alpha channel that is opaque everywhere is dropped,
  and an image whose pixels are all grey (R = G = B) is stored as one grey channel; the
  decoded pixels are checked to be identical before the smaller file replaces the old one;
- with ``--palette KB``, a colour PNG larger than KB kilobytes (plots, not photos) is stored
  with a palette of 256 colours, without dithering: lossy, but invisible on line plots; grey
  images never need it (a grey PNG has at most 256 levels and stays exact).

It prints each notebook's size before and after; ``tests/test_course_text.py`` keeps every
committed notebook under 2 MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def palette_png(data: bytes) -> bytes:
    """A colour PNG with at most 256 colours (median cut, no dithering); grey ones unchanged."""
    image = Image.open(io.BytesIO(data))
    if image.mode in ("L", "LA", "P"):
        return data
    quantised = image.convert("RGB").quantize(
        256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    buffer = io.BytesIO()
    quantised.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue() if len(buffer.getvalue()) < len(data) else data


def shrink_png(data: bytes) -> bytes:
    """The same pixels in the smallest of: as they are, without an opaque alpha, in grey."""
    image = Image.open(io.BytesIO(data))
    image.load()
    pixels = np.asarray(image.convert("RGBA"))
    candidate = image
    if image.mode in ("RGBA", "LA") and bool((pixels[..., 3] == 255).all()):
        candidate = image.convert("RGB")
    if candidate.mode in ("RGB", "RGBA", "P"):
        rgb = pixels[..., :3]
        if bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            candidate = candidate.convert("LA" if candidate.mode == "RGBA" else "L")
    buffer = io.BytesIO()
    candidate.save(buffer, format="PNG", optimize=True)
    again = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGBA"))
    if not np.array_equal(again, pixels):
        raise AssertionError("re-encoding changed the pixels")  # never written
    return buffer.getvalue() if len(buffer.getvalue()) < len(data) else data


def shrink_notebook(notebook: dict, palette_over_kb: float | None = None) -> dict:
    """Remove widget state and views; re-encode PNGs losslessly (in place, and returned);
    colour PNGs over ``palette_over_kb`` kilobytes get a 256-colour palette."""
    notebook.get("metadata", {}).pop("widgets", None)
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                if set(data) <= {"text/plain"}:
                    continue  # only the bar's text was left
            if "image/png" in data:
                png = shrink_png(base64.b64decode("".join(data["image/png"])))
                if palette_over_kb is not None and len(png) > palette_over_kb * 1000:
                    png = palette_png(png)
                data["image/png"] = base64.b64encode(png).decode("ascii")
            kept.append(output)
        cell["outputs"] = kept
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument(
        "--palette",
        type=float,
        default=None,
        metavar="KB",
        help="give colour PNGs over KB kilobytes a 256-colour palette (lossy)",
    )
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if not path.is_file():
            print(f"no notebook {path}", file=sys.stderr)
            return 2
        before = path.stat().st_size
        notebook = shrink_notebook(json.loads(path.read_text(encoding="utf-8")), args.palette)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        after = path.stat().st_size
        print(f"{path.name}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
