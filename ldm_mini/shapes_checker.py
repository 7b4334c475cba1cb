"""Read a ``shapes`` image back into objects, and score generated images against their prompts.

Taught in notebook 07_cross_attention_conditioning (conditioning accuracy); notebook
11_layouts_and_semantic_maps scores layouts (objects in their boxes) and label maps (IoU).
The checker works from pixels only, with the renderer's own model of an image
(``ldm_mini.data.shapes``): every pixel is ``(1 - alpha) * white + alpha * colour`` for one
palette colour. So

1. each pixel is "unmixed": for every palette colour c the best alpha in [0, 1] and the
   distance from the pixel to the segment white -> c; the nearest segment names its colour
   and its alpha is the pixel's coverage (anti-aliased edges keep their colour);
2. pixels with coverage >= 0.5 form the objects: 4-connected components per colour, tiny
   ones (noise) dropped; as every shape's bounding box is square, a component much longer
   than wide is two touching objects of one colour and is cut at its weakest line;
3. the shape comes from how much of its bounding box an object fills, measured with the soft
   coverage (area and extents): a square fills all of it, a circle pi/4 = 0.785, a triangle
   1/2;
4. positions are coverage-weighted centroids; "above" / "below" / "to the left of" / "to the
   right of" is the dominant axis of the offset between the two centroids.

:func:`scene_matches` compares a read scene with a caption ("a red circle above a blue
square": colours, shapes, count and the relation must all match) and
:func:`conditioning_accuracy` is the fraction of images that match their prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldm_mini.data.shapes import BACKGROUND, COLOURS, RELATIONS, SHAPES

_PALETTE = np.asarray([COLOURS[name] for name in COLOURS], dtype=np.float64)
_WHITE = np.asarray(BACKGROUND, dtype=np.float64)
_CAPTION = re.compile(
    r"^an? (?P<c1>\w+) (?P<s1>\w+)(?: (?P<rel>above|below|to the left of|to the right of) "
    r"an? (?P<c2>\w+) (?P<s2>\w+))?$"
)
# fill ratio of the bounding box: square 1, circle pi/4, triangle 1/2; boundaries halfway
SQUARE_ABOVE = 0.89
TRIANGLE_BELOW = 0.64


@dataclass(frozen=True)
class DetectedObject:
    """An object read from pixels: colour, shape, box (x0, y0, x1, y1), centroid, fill."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]
    centre: tuple[float, float]
    fill: float
    area: float


def _as_uint8_hwc(image: Any) -> np.ndarray:
    """A PIL image, a uint8 array (H, W, 3), or a tensor (3, H, W) in [-1, 1] -> (H, W, 3)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"a tensor image must be (3, H, W) in [-1, 1], got shape {tuple(image.shape)}"
            )
        array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0)
        return array.numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image must be RGB (H, W, 3), got shape {array.shape}")
    return array.astype(np.float64)


def unmix(image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: palette index (H, W), coverage alpha in [0, 1] (H, W), distance (H, W).

    For each palette colour c, alpha_c = <p - w, c - w> / |c - w|^2 clipped to [0, 1] and the
    distance from p to w + alpha_c (c - w); the colour with the smallest distance wins.
    """
    pixels = _as_uint8_hwc(image)
    offset = pixels[..., None, :] - _WHITE  # (H, W, 1, 3)
    direction = _PALETTE - _WHITE  # (K, 3)
    # alpha_c = <p - w, c - w> / |c - w|^2, in [0, 1]
    alphas = np.clip((offset * direction).sum(-1) / (direction**2).sum(-1), 0.0, 1.0)
    # distance from p to the segment w -> c
    distances = np.linalg.norm(offset - alphas[..., None] * direction, axis=-1)
    index = distances.argmin(axis=-1)
    pick = np.take_along_axis
    alpha = pick(alphas, index[..., None], axis=-1)[..., 0]
    distance = pick(distances, index[..., None], axis=-1)[..., 0]
    return index, alpha, distance


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool mask, as lists of (row, col) pixel arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        stack, pixels = [start], []
        seen[start] = True
        while stack:
            row, col = stack.pop()
            pixels.append((row, col))
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    stack.append((r, c))
        components.append(np.asarray(pixels))
    return components


def classify_fill(fill: float) -> str:
    """Shape from the fraction of its bounding box an object covers."""
    if fill >= SQUARE_ABOVE:
        return "square"
    if fill < TRIANGLE_BELOW:
        return "triangle"
    return "circle"


# every shape's bounding box is a square: a component much longer than wide is two objects
SPLIT_ASPECT = 1.3


def _split_touching(pixels: np.ndarray, weight: np.ndarray, depth: int = 0) -> list[np.ndarray]:
    """Split a component whose extent is far from square at its weakest cut (two objects of
    one colour that touch); ``weight`` is the coverage image of its colour."""
    rows, cols = pixels[:, 0], pixels[:, 1]
    height = rows.max() - rows.min() + 1
    width = cols.max() - cols.min() + 1
    if depth >= 2 or max(height, width) < SPLIT_ASPECT * min(height, width):
        return [pixels]
    axis_values, low = (cols, cols.min()) if width > height else (rows, rows.min())
    length = max(height, width)
    profile = np.zeros(length)
    np.add.at(profile, axis_values - low, weight[rows, cols])
    # the weakest cut in the middle half, where the two objects meet
    middle = np.arange(length // 4, length - length // 4)
    if len(middle) == 0:
        return [pixels]
    cut = low + middle[np.argmin(profile[middle])]
    first, second = pixels[axis_values < cut], pixels[axis_values >= cut]
    if len(first) == 0 or len(second) == 0:
        return [pixels]
    return _split_touching(first, weight, depth + 1) + _split_touching(second, weight, depth + 1)


def _measure(pixels: np.ndarray, weight: np.ndarray, colour: str) -> DetectedObject:
    """Box, soft area, fill and centroid of one object's pixels; ``weight``: its coverage."""
    height, width = weight.shape
    rows, cols = pixels[:, 0], pixels[:, 1]
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    # the object's coverage: its pixels and the anti-aliased rim one pixel around them
    own = np.zeros_like(weight, dtype=bool)
    own[rows, cols] = True
    rim = own.copy()
    rim[1:, :] |= own[:-1, :]
    rim[:-1, :] |= own[1:, :]
    rim[:, 1:] |= own[:, :-1]
    rim[:, :-1] |= own[:, 1:]
    rim[:, :] &= weight > 0
    window = np.where(rim, weight, 0.0)
    area = float(window.sum())
    # soft extents: the largest coverage in each column (row), summed; for a square, circle
    # or triangle these are its width and height even at sub-pixel offsets
    soft_width = float(window.max(axis=0).sum())
    soft_height = float(window.max(axis=1).sum())
    # fill = soft area / (soft width * soft height)
    fill = area / max(soft_width * soft_height, 1e-9)
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    centre = (
        float((window * (grid_x + 0.5)).sum() / max(area, 1e-9)),
        float((window * (grid_y + 0.5)).sum() / max(area, 1e-9)),
    )
    box = (int(x0), int(y0), int(x1), int(y1))
    return DetectedObject(colour, classify_fill(fill), box, centre, fill, area)


def _detect(image: Any, min_area_fraction: float) -> list[tuple[DetectedObject, np.ndarray]]:
    """The objects of an image with their pixels ((K, 2) rows and columns), largest first."""
    index, alpha, _ = unmix(image)
    height, width = alpha.shape
    colour_names = list(COLOURS)
    found = []
    for colour in np.unique(index[alpha >= 0.5]):
        weight = np.where(index == colour, alpha, 0.0)
        for component in _components(weight >= 0.5):
            for pixels in _split_touching(component, weight):
                obj = _measure(pixels, weight, colour_names[int(colour)])
                if obj.area >= min_area_fraction * height * width:
                    found.append((obj, pixels))
    return sorted(found, key=lambda pair: -pair[0].area)


def read_scene(image: Any, min_area_fraction: float = 0.01) -> list[DetectedObject]:
    """The objects of a shapes image, largest first.

    ``image``: PIL RGB, uint8 array (H, W, 3) or tensor (3, H, W) in [-1, 1]. Components
    smaller than ``min_area_fraction`` of the image (noise, stray pixels) are ignored.
    """
    return [obj for obj, _ in _detect(image, min_area_fraction)]


def read_label_map(image: Any, min_area_fraction: float = 0.01) -> np.ndarray:
    """The label map (H, W) the checker reads from an image: 0 background, and for the pixels
    of each object it finds, 1 + the index of its "colour shape" class in CLASS_NAMES."""
    from ldm_mini.data.shapes import CLASS_NAMES

    height, width = _as_uint8_hwc(image).shape[:2]
    labels = np.zeros((height, width), dtype=np.int64)
    for obj, pixels in _detect(image, min_area_fraction):
        labels[pixels[:, 0], pixels[:, 1]] = CLASS_NAMES.index(f"{obj.colour} {obj.shape}") + 1
    return labels


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """``"a red circle above a blue square"`` -> ``([("red", "circle"), ("blue", "square")],
    "above")``; one object: relation None. Anything else is a ValueError."""
    match = _CAPTION.match(caption.strip().lower())
    if not match:
        raise ValueError(
            f"{caption!r} is not a shapes caption: 'a COLOUR SHAPE' or 'a COLOUR SHAPE RELATION a "
            f"COLOUR SHAPE' with relation one of {RELATIONS}"
        )
    phrases = [(match["c1"], match["s1"])]
    if match["c2"]:
        phrases.append((match["c2"], match["s2"]))
    for colour, shape in phrases:
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(
                f"{caption!r}: unknown colour or shape {colour!r} {shape!r}; colours "
                f"{list(COLOURS)}, shapes {list(SHAPES)}"
            )
    return phrases, match["rel"]


def relation_of(first: DetectedObject, second: DetectedObject) -> str:
    """The relation of ``first`` to ``second`` along the dominant axis of their offset."""
    dx = second.centre[0] - first.centre[0]
    dy = second.centre[1] - first.centre[1]  # image y grows downwards
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "to the left of" if dx > 0 else "to the right of"


def scene_matches(objects: list[DetectedObject], caption: str) -> dict[str, bool]:
    """Which parts of ``caption`` the read ``objects`` satisfy.

    Returns ``{"count", "colours", "shapes", "relation", "all"}``: the number of objects, the
    multiset of colours, of (colour, shape) pairs, and (two objects) the relation of the object
    named first to the one named second; "all" is their conjunction.
    """
    phrases, relation = parse_caption(caption)
    count = len(objects) == len(phrases)
    colours = sorted(o.colour for o in objects) == sorted(c for c, _ in phrases)
    pairs = sorted((o.colour, o.shape) for o in objects) == sorted(phrases)
    relation_ok = relation is None and count
    if relation is not None and count and pairs:
        # any assignment of the detected objects to the two phrases that fits
        first, second = objects
        relation_ok = any(
            (a.colour, a.shape) == phrases[0]
            and (b.colour, b.shape) == phrases[1]
            and relation_of(a, b) == relation
            for a, b in ((first, second), (second, first))
        )
    result = {"count": count, "colours": colours, "shapes": pairs, "relation": bool(relation_ok)}
    result["all"] = all(result.values())
    return result


def conditioning_accuracy(images: Any, captions: list[str]) -> dict[str, float]:
    """Fraction of images whose read scene matches their caption, overall and per part.

    ``images``: a tensor (N, 3, H, W) in [-1, 1] or a sequence of PIL / uint8 images.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("no images to score")
    totals = {"count": 0, "colours": 0, "shapes": 0, "relation": 0, "all": 0}
    for image, caption in zip(images, captions, strict=True):
        for key, ok in scene_matches(read_scene(image), caption).items():
            totals[key] += int(ok)
    return {key: value / len(captions) for key, value in totals.items()}


# --------------------------------------------------------------------------------------
# Layout-to-image and semantic synthesis (notebook 11): scores against boxes and label maps
# --------------------------------------------------------------------------------------


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def layout_matches(objects: list[DetectedObject], layout, size: int,
                   min_iou: float = 0.5) -> dict[str, Any]:  # fmt: skip
    """Which requested objects of ``layout`` (LayoutObjects, boxes in [0, 1]) the read
    ``objects`` satisfy: an object is right when a detected object of its colour and shape,
    not used by another, has box IoU >= ``min_iou`` with its box (in pixels at ``size``).

    Returns ``{"found": k, "requested": n, "extra": detected objects left over, "all": every
    requested object right and nothing else found}``.
    """
    unused = list(objects)
    found = 0
    for request in layout:
        box = tuple(v * size for v in request.box)
        candidates = [
            (box_iou(box, o.box), i)
            for i, o in enumerate(unused)
            if (o.colour, o.shape) == (request.colour, request.shape)
        ]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= min_iou:
            found += 1
            unused.pop(best[1])
    return {"found": found, "requested": len(layout), "extra": len(unused),
            "all": found == len(layout) and not unused}  # fmt: skip


def layout_accuracy(images: Any, layouts: list, min_iou: float = 0.5) -> dict[str, float]:
    """Scores of images against the layouts they were asked for.

    ``objects``: the fraction of requested objects found in their box (IoU >= ``min_iou``)
    with the right colour and shape; ``all``: the fraction of images with every object right
    and no other object; ``extra``: detected objects nobody asked for, per image.
    """
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")
    if len(layouts) == 0:
        raise ValueError("no images to score")
    found = requested = extra = every = 0
    for image, layout in zip(images, layouts, strict=True):
        size = _as_uint8_hwc(image).shape[1]
        result = layout_matches(read_scene(image), layout, size, min_iou)
        found += result["found"]
        requested += result["requested"]
        extra += result["extra"]
        every += int(result["all"])
    return {"objects": found / max(requested, 1), "all": every / len(layouts),
            "extra": extra / len(layouts)}  # fmt: skip


def label_map_iou(read: np.ndarray, wanted: np.ndarray) -> tuple[float, float]:
    """(mean IoU over the labels in either map, background included; the same over object
    labels only, or 1.0 when neither map has an object) of two label maps (H, W)."""
    ious = {}
    for label in np.union1d(np.unique(read), np.unique(wanted)):
        inter = np.logical_and(read == label, wanted == label).sum()
        union = np.logical_or(read == label, wanted == label).sum()
        ious[int(label)] = inter / union
    objects = [v for k, v in ious.items() if k != 0]
    return float(np.mean(list(ious.values()))), float(np.mean(objects)) if objects else 1.0


def label_map_accuracy(images: Any, maps: Any) -> dict[str, float]:
    """How well images follow the label maps they were made from: the checker reads each
    image's label map (:func:`read_label_map`) and compares it with the requested one.

    ``miou``: per image the mean IoU over the labels present in either map, background
    included (the usual mIoU), averaged over images; ``object_miou``: the same without the
    background; ``pixel_accuracy``: the fraction of pixels with the requested label.
    """
    if len(images) != len(maps):
        raise ValueError(f"{len(images)} images but {len(maps)} label maps")
    if len(maps) == 0:
        raise ValueError("no images to score")
    mious, object_mious, accuracies = [], [], []
    for image, wanted in zip(images, maps, strict=True):
        wanted = np.asarray(wanted)
        read = read_label_map(image)
        if read.shape != wanted.shape:
            raise ValueError(f"an image of {read.shape} but a label map of {wanted.shape}")
        miou, object_miou = label_map_iou(read, wanted)
        mious.append(miou)
        object_mious.append(object_miou)
        accuracies.append(float((read == wanted).mean()))
    return {"miou": float(np.mean(mious)), "object_miou": float(np.mean(object_mious)),
            "pixel_accuracy": float(np.mean(accuracies))}  # fmt: skip
