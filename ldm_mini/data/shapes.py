"""``shapes``: a procedural text-to-image dataset whose ground truth is known.

One or two coloured circles, squares or triangles on white, with a compositional caption
("a red circle above a blue square") and, per object, its colour, shape, bounding box and
mask. Sample ``i`` of a split depends only on ``(seed, i)``, so any prefix of a larger
dataset equals the smaller one, and generated images can later be scored against their
prompt (issue: conditioning accuracy). Taught in notebook 00_setup_and_data.

Rendering: each object is drawn 4x supersampled and box-filtered, giving an anti-aliased
coverage ``alpha`` in [0, 1]; ``pixel = (1 - alpha) * white + alpha * colour``. The mask of
object k (1-based) is where its ``alpha >= 0.5``; objects never overlap.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# relation of the first object to the second, and the direction it implies
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
BACKGROUND = (255, 255, 255)
SUPERSAMPLE = 4
DEFAULT_SEEDS = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SIZES = {"train": 10_000, "validation": 1_000, "test": 1_000}
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
PROMPT_SETS = ("all", "seen", "heldout")
HELDOUT_PERCENT = 10  # of the two-object prompts: unseen combinations for conditioning tests
# layouts and label maps (notebook 11): held-out class pairs and held-out (class, quadrant)
HELDOUT_LAYOUT_PERCENT = 10


@dataclass(frozen=True)
class ShapeObject:
    """One object: its attributes and its box ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive)."""

    colour: str
    shape: str
    box: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(objects: list[ShapeObject], relation: str | None) -> str:
    """``"a red circle"``, ``"an orange square"`` or ``"a red circle above a blue square"``."""
    phrases = [f"{_article(o.colour)} {o.colour} {o.shape}" for o in objects]
    if len(objects) == 1:
        return phrases[0]
    assert relation in RELATIONS, f"unknown relation {relation!r}"
    return f"{phrases[0]} {relation} {phrases[1]}"


def all_prompts() -> list[str]:
    """Every caption the generator can write: 18 single objects, then 18 * 4 * 18 pairs."""
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    singles = [caption_for([ShapeObject(c, s, (0, 0, 1, 1))], None) for c, s in objects]
    pairs = [
        caption_for([ShapeObject(*a, (0, 0, 1, 1)), ShapeObject(*b, (0, 0, 1, 1))], relation)
        for a in objects
        for relation in RELATIONS
        for b in objects
    ]
    return singles + pairs


def is_heldout(caption: str) -> bool:
    """Whether ``caption`` is one of the held-out prompts: about 10% of the two-object
    captions, chosen by a fixed hash (crc32) of the text. Every word of a held-out prompt
    occurs in seen prompts; only the combination (colours, shapes and relation) is new.
    Single-object captions are never held out."""
    if not any(f" {relation} " in caption for relation in RELATIONS):
        return False
    return zlib.crc32(caption.encode()) % 100 < HELDOUT_PERCENT


def heldout_prompts() -> list[str]:
    """The held-out prompts, in :func:`all_prompts` order (120 of the 1,296 pairs)."""
    return [caption for caption in all_prompts() if is_heldout(caption)]


def quadrant(box: tuple[float, float, float, float], size: float) -> str:
    """Which quarter of the image the centre of ``box`` (pixels) lies in: "top left", ..."""
    x = (box[0] + box[2]) / 2
    y = (box[1] + box[3]) / 2
    return f"{'top' if y < size / 2 else 'bottom'} {'left' if x < size / 2 else 'right'}"


def _hashed_out(text: str) -> bool:
    return zlib.crc32(text.encode()) % 100 < HELDOUT_LAYOUT_PERCENT


def heldout_layout_reasons(objects: list[ShapeObject], size: float) -> list[str]:
    """Why a scene's layout is held out from layout and label-map training (empty: it is not).

    Two kinds of novelty, chosen by a fixed hash (crc32 % 100 < 10): a pair of classes never
    seen together (18 of the 171 pairs, in any places), and a class never seen in a quarter of
    the image (13 of the 72 (class, quarter) pairs, e.g. a blue circle in the top left; it is
    seen in the other quarters, and other classes are seen there). Every class and every place
    occurs in training. About 31% of scenes have a held-out layout.
    """
    reasons = []
    names = sorted(f"{o.colour} {o.shape}" for o in objects)
    if len(objects) == 2 and _hashed_out("pair:" + "|".join(names)):
        reasons.append(f"the pair {names[0]} + {names[1]}")
    for obj in objects:
        place = quadrant(obj.box, size)
        if _hashed_out(f"place:{obj.colour} {obj.shape}@{place}"):
            reasons.append(f"{_article(obj.colour)} {obj.colour} {obj.shape} in the {place}")
    return reasons


def relation_between(first: ShapeObject, second: ShapeObject) -> str | None:
    """The relation of ``first`` to ``second`` implied by their boxes, or None if ambiguous.

    Unambiguous means: the boxes do not overlap along the main axis and the centres are at
    least twice as far apart along it as across it.
    """
    (fx, fy), (sx, sy) = first.centre, second.centre
    dx, dy = sx - fx, sy - fy  # image y grows downwards
    if abs(dy) >= 2 * abs(dx):
        if first.box[3] <= second.box[1]:
            return "above"
        if second.box[3] <= first.box[1]:
            return "below"
    if abs(dx) >= 2 * abs(dy):
        if first.box[2] <= second.box[0]:
            return "to the left of"
        if second.box[2] <= first.box[0]:
            return "to the right of"
    return None


def _coverage(shape: str, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, shape (size, size)."""
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    # PIL's box coordinates are inclusive: the last pixel is x1 - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def render(objects: list[ShapeObject], size: int) -> tuple[Image.Image, Image.Image]:
    """Render objects to an RGB image and an L mask (0 background, k for object k)."""
    pixels = np.empty((size, size, 3), dtype=np.float32)
    pixels[:] = BACKGROUND
    mask = np.zeros((size, size), dtype=np.uint8)
    for index, obj in enumerate(objects, start=1):
        alpha = _coverage(obj.shape, obj.box, size)[..., None]
        # pixel = (1 - alpha) * background + alpha * colour
        pixels = (1.0 - alpha) * pixels + alpha * np.asarray(COLOURS[obj.colour], np.float32)
        mask[alpha[..., 0] >= 0.5] = index
    image = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")
    return image, Image.fromarray(mask, mode="L")


def _random_box(rng: np.random.Generator, size: int, low: float, high: float) -> tuple:
    side = float(rng.uniform(low, high) * size)
    x0 = float(rng.uniform(0, size - side))
    y0 = float(rng.uniform(0, size - side))
    return (x0, y0, x0 + side, y0 + side)


def sample_scene(seed: int, index: int, size: int = 64, max_objects: int = 2):
    """Draw scene ``index`` of the stream ``seed``: objects, relation (None for one object)."""
    assert 1 <= max_objects <= 2, f"max_objects must be 1 or 2, got {max_objects}"
    rng = np.random.default_rng([seed, index])
    colours, shapes = list(COLOURS), list(SHAPES)
    count = int(rng.integers(1, max_objects + 1))
    if count == 1:
        box = _random_box(rng, size, 0.35, 0.6)
        objs = [ShapeObject(colours[rng.integers(6)], shapes[rng.integers(3)], box)]
        return objs, None
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    attributes = [(colours[rng.integers(6)], shapes[rng.integers(3)]) for _ in range(2)]
    for _attempt in range(10_000):
        first = ShapeObject(*attributes[0], _random_box(rng, size, 0.25, 0.4))
        second = ShapeObject(*attributes[1], _random_box(rng, size, 0.25, 0.4))
        if relation_between(first, second) == relation:
            return [first, second], relation
    raise RuntimeError(f"could not place two objects {relation!r} each other at size {size}")


def _rounded(box: tuple[float, ...]) -> list[float]:
    return [round(v, 3) for v in box]


def generate(
    num_samples: int,
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 2,
    prompts: str = "all",
    layouts: str = "all",
) -> dict[str, list]:
    """Columns of ``num_samples`` scenes: image, mask, caption, label, relation, objects.

    ``prompts``: "all" (every scene of the stream), "seen" (skip scenes whose caption is
    held out, see :func:`is_heldout`: for training) or "heldout" (only those: for testing
    on unseen combinations). ``layouts`` likewise with :func:`heldout_layout_reasons` (for
    layout-to-image and semantic synthesis). Filtering keeps the stream order, so prefixes
    still agree.
    """
    assert num_samples >= 0, f"num_samples must be >= 0, got {num_samples}"
    assert image_size >= 16, f"image_size must be >= 16 pixels, got {image_size}"
    if prompts not in PROMPT_SETS:
        raise ValueError(f"prompts must be one of {PROMPT_SETS}, got {prompts!r}")
    if layouts not in PROMPT_SETS:
        raise ValueError(f"layouts must be one of {PROMPT_SETS}, got {layouts!r}")
    if prompts == "heldout" and max_objects < 2:
        raise ValueError("held-out prompts all have two objects: use max_objects=2")
    columns: dict[str, list] = {
        k: [] for k in ("image", "mask", "caption", "label", "relation", "objects")
    }
    index = -1
    while len(columns["caption"]) < num_samples:
        index += 1
        objects, relation = sample_scene(seed, index, image_size, max_objects)
        if prompts != "all" and is_heldout(caption_for(objects, relation)) != (
            prompts == "heldout"
        ):
            continue
        if layouts != "all" and bool(heldout_layout_reasons(objects, image_size)) != (
            layouts == "heldout"
        ):
            continue
        image, mask = render(objects, image_size)
        columns["image"].append(image)
        columns["mask"].append(mask)
        columns["caption"].append(caption_for(objects, relation))
        # label: the class of the first-named object, "colour shape" (18 classes)
        columns["label"].append(CLASS_NAMES.index(f"{objects[0].colour} {objects[0].shape}"))
        columns["relation"].append(relation or "")
        columns["objects"].append(
            [{"colour": o.colour, "shape": o.shape, "box": _rounded(o.box)} for o in objects]
        )
    return columns


def features():
    """The ``datasets.Features`` of the shapes set."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "caption": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        "relation": datasets.Value("string"),
        "objects": datasets.List({
            "colour": datasets.Value("string"),
            "shape": datasets.Value("string"),
            "box": datasets.List(datasets.Value("float64"), length=4),
        }),
    })  # fmt: skip


def load_shapes(
    split: str = "train",
    num_samples: int | None = None,
    seed: int | None = None,
    image_size: int = 64,
    max_objects: int = 2,
    prompts: str = "all",
    layouts: str = "all",
):
    """Generate the ``shapes`` split as a ``datasets.Dataset`` (in memory, deterministic).

    Splits differ by their default seed (train 0, validation 1, test 2) and size
    (10,000 / 1,000 / 1,000); both can be overridden. ``prompts`` "seen" leaves out the
    held-out prompts (train text models on it), "heldout" keeps only them; ``layouts`` does
    the same with the held-out layouts (train layout and label-map models on "seen").
    """
    import datasets

    if split not in DEFAULT_SEEDS:
        raise ValueError(f"shapes has no split {split!r}; its splits are {sorted(DEFAULT_SEEDS)}.")
    num_samples = DEFAULT_SIZES[split] if num_samples is None else num_samples
    seed = DEFAULT_SEEDS[split] if seed is None else seed
    columns = generate(num_samples, seed, image_size, max_objects, prompts, layouts)
    return datasets.Dataset.from_dict(columns, features=features(), split=split)
