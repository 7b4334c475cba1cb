"""A picture tour of every dataset, written to a folder with one ``index.html`` page.

The README's main job until the end-to-end demo exists (``make demo``); notebook
00_setup_and_data shows the same pictures inline. Offline: bundled and procedural sets only.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_mini import viz
from ldm_mini.data import load_dataset, shapes


def pick(count: int, total: int, seed: int) -> list[int]:
    """``count`` distinct row indices out of ``total``, fixed by ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=min(count, total), replace=False))


def thumbnails(rows, size: int) -> list[Image.Image]:
    """Centre-cropped, resized copies of the rows' images, all ``size`` x ``size``."""
    from ldm_mini.data.tensors import fit_image

    rng = np.random.default_rng(0)
    return [fit_image(row["image"].convert("RGB"), size, "resize", rng) for row in rows]


def shapes_truth_figure(count: int = 6, seed: int = 0):
    """Shapes scenes beside their ground truth: boxes with labels, and object masks."""
    scenes = load_dataset("shapes", split="train", num_samples=count, seed=seed)
    images, captions = [], []
    for row in scenes:
        labels = [f"{o['colour']} {o['shape']}" for o in row["objects"]]
        boxed = viz.draw_boxes(row["image"], [o["box"] for o in row["objects"]], labels)
        masked = viz.overlay_mask(row["image"], row["mask"]).resize(boxed.size, Image.NEAREST)
        images += [row["image"].resize(boxed.size, Image.NEAREST), boxed, masked]
        captions += [row["caption"], "boxes", "masks"]
    return viz.show_images(images, captions, ncols=6, scale=1.8, caption_width=28)


def run_tour(out: Path, per_dataset: int = 24, seed: int = 0, progress: bool = False) -> Path:
    """Write one grid per dataset and ``index.html`` into ``out``; return the page's path.
    ``progress``: a bar over the five pictures (on stderr)."""
    import matplotlib
    from tqdm.auto import tqdm

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    sections = []
    bar = tqdm(total=5, desc="tour", unit="picture", disable=not progress)
    for name, split in (("fashion_mnist", "test"), ("emoji", "train"), ("photos", "train")):
        dataset = load_dataset(name, split=split)
        rows = [dataset[i] for i in pick(per_dataset, len(dataset), seed)]
        images = thumbnails(rows, 128) if name == "photos" else [r["image"] for r in rows]
        fig = viz.show_images(images, [r["caption"] for r in rows], ncols=8)
        sections.append((name, split, len(dataset), viz.save_figure(fig, out / f"{name}.png")))
        plt.close(fig)
        bar.update()
    scenes = load_dataset("shapes", split="train", num_samples=per_dataset, seed=seed)
    fig = viz.show_images(scenes["image"], scenes["caption"], ncols=8, caption_width=22)
    sections.append(
        ("shapes", "train", shapes.DEFAULT_SIZES["train"], viz.save_figure(fig, out / "shapes.png"))
    )
    plt.close(fig)
    bar.update()
    fig = shapes_truth_figure(seed=seed)
    sections.append(
        ("shapes ground truth", "train", None, viz.save_figure(fig, out / "shapes_truth.png"))
    )
    plt.close(fig)
    bar.update()
    bar.close()

    body = "\n".join(
        f"<h2>{html.escape(name)}</h2><p>split <code>{split}</code>"
        + (f", {rows:,} rows" if rows is not None else "")
        + f"</p><img src='{path.name}' style='max-width:100%'>"
        for name, split, rows, path in sections
    )
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>ldm-mini: datasets tour"
        f"</title></head><body><h1>ldm-mini: datasets tour</h1>{body}</body></html>\n",
        encoding="utf-8",
    )
    return page
