"""Layouts and label maps: the two spatial conditions of layout-to-image and semantic synthesis.

Taught in notebook 11_layouts_and_semantic_maps. The paper feeds a spatial condition to the
LDM in two ways (Sec. 3.3 and 4.3):

* **Layout-to-image, by cross-attention.** A layout is a list of objects, each a class and a
  bounding box. tau_theta turns it into tokens the U-Net attends to. As in the paper (which
  follows Esser et al.'s taming transformers), each box is *quantised into tokens*: an object
  is three tokens, its class, the grid cell of its top-left corner and the grid cell of its
  bottom-right corner, on a G x G grid (G = 16 here: cells of 2 pixels at 32x32). The sequence
  ``<start> class_1 tl_1 br_1 class_2 tl_2 br_2 ...`` goes through a small transformer trained
  jointly with the U-Net. Our one addition: each cell token's embedding is a learned vector
  *plus* fixed Fourier features of the cell's centre, so neighbouring cells start alike; with
  only 10,000 training images, 256 unrelated cell embeddings would each have to be learned
  from few examples, and places never seen with a class would stay unknown. The null condition
  (classifier-free guidance) is the empty layout, ``<start>`` alone.
* **Semantic synthesis, by concatenation.** A label map gives every pixel a class (0 is the
  background, 1..18 the shapes' colour-shape classes). It is one-hot encoded and area-averaged
  to the latent size (each latent cell gets the fraction of its f x f pixels in each class),
  then concatenated to z_t, as the low-resolution image is for super-resolution.

A layout in this module is a list of :class:`LayoutObject` with boxes as fractions of the
image, ``(x0, y0, x1, y1)`` in [0, 1]. In tensors, a batch of layouts is ``(B, N, 5)``: per
object slot ``[class index, x0, y0, x1, y1]``, class -1 for an empty slot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldm_mini.attention import fourier_features
from ldm_mini.conditioning import TextEncoderLayer
from ldm_mini.data.shapes import CLASS_NAMES, COLOURS, SHAPES

# label maps: 0 is the background, class c of CLASS_NAMES is label c + 1
NUM_LABELS = len(CLASS_NAMES) + 1
EMPTY = -1  # the class index of an empty object slot in a layout tensor
PAD, START = 0, 1  # token ids; class c is token 2 + c, grid cell k is token 2 + 18 + k


class LayoutError(ValueError):
    """A layout or label map that cannot be used: the message says what to change."""


@dataclass(frozen=True)
class LayoutObject:
    """One object of a layout: ``colour``, ``shape`` and ``box`` (x0, y0, x1, y1) in [0, 1]."""

    colour: str
    shape: str
    box: tuple[float, float, float, float]

    @property
    def class_index(self) -> int:
        """Index into :data:`ldm_mini.data.shapes.CLASS_NAMES` ("red circle" is 0)."""
        return CLASS_NAMES.index(f"{self.colour} {self.shape}")


def check_object(obj: LayoutObject) -> LayoutObject:
    """The object itself if its words and box are valid, else a :class:`LayoutError`."""
    if obj.colour not in COLOURS:
        raise LayoutError(f"unknown colour {obj.colour!r}; the colours are {list(COLOURS)}")
    if obj.shape not in SHAPES:
        raise LayoutError(f"unknown shape {obj.shape!r}; the shapes are {list(SHAPES)}")
    box = tuple(obj.box)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        raise LayoutError(f"a box is four numbers x0,y0,x1,y1 in [0, 1], got {obj.box!r}")
    x0, y0, x1, y1 = box
    if min(box) < 0 or max(box) > 1:
        raise LayoutError(
            f"box {list(box)} of the {obj.colour} {obj.shape} leaves the image: coordinates are "
            "fractions of the image in [0, 1] (x0,y0 top left, x1,y1 bottom right)"
        )
    if x1 <= x0 or y1 <= y0:
        raise LayoutError(
            f"box {list(box)} of the {obj.colour} {obj.shape} is empty: it needs x1 > x0 and "
            "y1 > y0 (x0,y0 top left, x1,y1 bottom right)"
        )
    return LayoutObject(obj.colour, obj.shape, tuple(float(v) for v in box))


def check_layout(objects: list[LayoutObject], max_objects: int) -> list[LayoutObject]:
    """A valid layout of 1 to ``max_objects`` objects, or a :class:`LayoutError`."""
    if len(objects) == 0:
        raise LayoutError("a layout needs at least one object, e.g. 'red circle 0.1,0.1,0.5,0.5'")
    if len(objects) > max_objects:
        raise LayoutError(
            f"{len(objects)} objects, but this model takes at most {max_objects} (it was "
            "trained on scenes of that many); drop some"
        )
    return [check_object(obj) for obj in objects]


def parse_layout(text: str) -> list[LayoutObject]:
    """``"red circle 0.1,0.1,0.5,0.5; blue square 0.5,0.5,0.9,0.9"`` -> objects (checked)."""
    objects = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        words = part.split()
        if len(words) != 3:
            raise LayoutError(
                f"{part!r} is not an object: write 'COLOUR SHAPE x0,y0,x1,y1' (e.g. 'red circle "
                "0.1,0.1,0.5,0.5'), objects separated by ';'"
            )
        colour, shape, numbers = words
        try:
            box = tuple(float(v) for v in numbers.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise LayoutError(f"{numbers!r} is not a box: write four numbers x0,y0,x1,y1 in [0, 1]")
        objects.append(check_object(LayoutObject(colour.lower(), shape.lower(), box)))
    if not objects:
        raise LayoutError("the layout is empty: write e.g. 'red circle 0.1,0.1,0.5,0.5'")
    return objects


def format_layout(objects: list[LayoutObject]) -> str:
    """The inverse of :func:`parse_layout` (boxes to 3 decimals)."""
    return "; ".join(
        f"{o.colour} {o.shape} " + ",".join(f"{v:.3g}" for v in o.box) for o in objects
    )


def layout_from_json(value: Any) -> list[LayoutObject]:
    """A layout from JSON data: a list of ``{"colour", "shape", "box": [x0, y0, x1, y1]}``."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise LayoutError(
            'a JSON layout is a list of objects {"colour": ..., "shape": ..., "box": [x0, y0, '
            "x1, y1]}"
        )
    objects = []
    for item in value:
        missing = {"colour", "shape", "box"} - set(item)
        if missing:
            raise LayoutError(f"layout object {item} lacks {sorted(missing)}")
        box = item["box"]
        if not isinstance(box, list):
            raise LayoutError(f"a box is a list [x0, y0, x1, y1], got {box!r}")
        objects.append(check_object(LayoutObject(str(item["colour"]), str(item["shape"]),
                                                 tuple(box))))  # fmt: skip
    return objects


def read_layouts(path: str | Path) -> list[list[LayoutObject]]:
    """Layouts from a JSON file: one layout (a list of objects) or a list of layouts."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"no layout file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LayoutError(f"{path} is not JSON ({err}); write a list of objects") from None
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [layout_from_json(v) for v in value]
    return [layout_from_json(value)]


def layouts_to_tensor(layouts: list[list[LayoutObject]], max_objects: int) -> Tensor:
    """Layouts -> (B, max_objects, 5) float: ``[class, x0, y0, x1, y1]`` per slot, class -1
    for an empty slot. Each layout is checked (:func:`check_layout`)."""
    table = torch.zeros(len(layouts), max_objects, 5)
    table[..., 0] = EMPTY
    for row, objects in enumerate(layouts):
        for slot, obj in enumerate(check_layout(objects, max_objects)):
            table[row, slot] = torch.tensor([obj.class_index, *obj.box])
    return table


def tensor_to_layouts(table: Tensor) -> list[list[LayoutObject]]:
    """The inverse of :func:`layouts_to_tensor` (empty slots dropped)."""
    layouts = []
    for row in table.tolist():
        objects = []
        for class_index, *box in row:
            if int(class_index) != EMPTY:
                colour, shape = CLASS_NAMES[int(class_index)].split()
                objects.append(LayoutObject(colour, shape, tuple(box)))
        layouts.append(objects)
    return layouts


def dataset_layouts(objects_column: list[list[dict]], image_size: int, max_objects: int) -> Tensor:
    """The ``objects`` column of a shapes dataset (boxes in pixels) -> (N, max_objects, 5)."""
    layouts = [
        [LayoutObject(o["colour"], o["shape"], tuple(min(max(v / image_size, 0.0), 1.0)
                                                     for v in o["box"])) for o in objects]
        for objects in objects_column
    ]  # fmt: skip
    return layouts_to_tensor(layouts, max_objects)


# --------------------------------------------------------------------------------------
# tau_theta for layouts: box corners quantised into tokens, and a small transformer
# --------------------------------------------------------------------------------------


class LayoutTokenizer:
    """Layouts (B, N, 5) -> token ids (B, 1 + 3N) and a mask: ``<start>``, then per object its
    class token and the grid-cell tokens of its top-left and bottom-right corners."""

    def __init__(self, grid: int = 16, max_objects: int = 2) -> None:
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(f"layout grid must be an int >= 2, got {grid!r}")
        if not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")
        self.grid, self.max_objects = grid, max_objects
        self.class_offset = 2
        self.cell_offset = 2 + len(CLASS_NAMES)

    def __len__(self) -> int:
        return self.cell_offset + self.grid * self.grid

    @property
    def length(self) -> int:
        return 1 + 3 * self.max_objects

    def cell(self, x: Tensor, y: Tensor) -> Tensor:
        """The grid cell (row * G + column) holding the point (x, y) in [0, 1]."""
        # a corner on the far edge (x = 1) belongs to the last cell
        column = (x * self.grid).floor().clamp(0, self.grid - 1)
        row = (y * self.grid).floor().clamp(0, self.grid - 1)
        return (row * self.grid + column).long()

    def encode(self, layouts: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 5) layouts -> ids (B, 1 + 3N) long and mask (B, 1 + 3N) bool."""
        if layouts.ndim != 3 or layouts.shape[-1] != 5 or layouts.shape[1] > self.max_objects:
            raise ValueError(
                f"layouts must be (B, N <= {self.max_objects}, 5) [class, x0, y0, x1, y1], got "
                f"{tuple(layouts.shape)}"
            )
        batch, slots = layouts.shape[:2]
        present = layouts[..., 0] != EMPTY
        classes = layouts[..., 0].clamp(min=0).long() + self.class_offset
        top_left = self.cell(layouts[..., 1], layouts[..., 2]) + self.cell_offset
        bottom_right = self.cell(layouts[..., 3], layouts[..., 4]) + self.cell_offset
        # per object: class, top-left cell, bottom-right cell
        tokens = rearrange(torch.stack([classes, top_left, bottom_right], -1), "b n k -> b (n k)")
        mask = present.repeat_interleave(3, dim=1)
        tokens = torch.where(mask, tokens, torch.full_like(tokens, PAD))
        start = torch.full((batch, 1), START, dtype=torch.long, device=layouts.device)
        ids = torch.cat([start, tokens], 1)
        mask = torch.cat([torch.ones_like(start, dtype=torch.bool), mask], 1)
        padding = self.length - ids.shape[1]
        if padding:
            ids = F.pad(ids, (0, padding), value=PAD)
            mask = F.pad(mask, (0, padding), value=False)
        return ids, mask

    def token_names(self, layout: Tensor) -> list[str]:
        """Readable names of one layout's (N, 5) tokens: '<start>', 'red circle', 'tl 3,4'..."""
        ids, mask = self.encode(layout[None])
        names = []
        for index, (token, real) in enumerate(zip(ids[0].tolist(), mask[0].tolist(),
                                                   strict=True)):  # fmt: skip
            if not real:
                names.append("<pad>")
            elif token == START:
                names.append("<start>")
            elif token < self.cell_offset:
                names.append(CLASS_NAMES[token - self.class_offset])
            else:
                # after each class token: its top-left, then its bottom-right corner
                cell = token - self.cell_offset
                corner = "tl" if index % 3 == 2 else "br"
                names.append(f"{corner} {cell % self.grid},{cell // self.grid}")
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "layout", "grid": self.grid, "max_objects": self.max_objects}


class LayoutEncoder(nn.Module):
    """tau_theta for layouts: (B, N, 5) -> tokens (B, 1 + 3N, dim) and their mask.

    Token embeddings are learned; a grid cell's embedding also gets the fixed Fourier features
    of the cell's centre (scaled like the learned ones). Each of an object's three tokens also
    gets the object's own embedding: its class token's embedding plus a learned projection of
    the Fourier features of its two corners (as GLIGEN's grounding tokens, Li et al. 2023), so
    every token says what the object is and where, and a U-Net query finds the object at its
    place in one attention step: with the paper's tokens alone, the U-Net must combine three
    tokens to know which class is where, and in 2,000 steps on shapes it put 2% of held-out
    objects in their boxes. A transformer (``depth`` layers with masked self-attention, as
    :class:`~ldm_mini.conditioning.TextEncoder`) lets each object's tokens see the others; a
    final LayerNorm.
    """

    BOX_FEATURES = 32  # Fourier features per corner

    def __init__(
        self, tokenizer: LayoutTokenizer, dim: int = 128, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.dim = dim
        self.token_embedding = nn.Embedding(len(tokenizer), dim)
        self.position_embedding = nn.Parameter(torch.zeros(tokenizer.length, dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        grid = tokenizer.grid
        centres = (torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid),
                                              indexing="ij"), -1).flip(-1).reshape(-1, 2)
                   + 0.5) / grid  # fmt: skip
        features = torch.zeros(len(tokenizer), dim)
        features[tokenizer.cell_offset :] = 0.02 * fourier_features(centres, dim)
        self.register_buffer("cell_features", features, persistent=False)
        # the corners' Fourier features: 8 frequencies per axis, (x0, y0) and (x1, y1)
        self.box_projection = nn.Linear(2 * self.BOX_FEATURES, dim)
        nn.init.normal_(self.box_projection.weight, std=0.02)
        nn.init.zeros_(self.box_projection.bias)
        self.layers = nn.ModuleList(TextEncoderLayer(dim, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim)

    def null_condition(self, batch: int) -> Tensor:
        """The null condition for classifier-free guidance: ``batch`` empty layouts."""
        table = torch.zeros(batch, self.tokenizer.max_objects, 5)
        table[..., 0] = EMPTY
        return table

    def object_embeddings(self, layouts: Tensor, length: int) -> Tensor:
        """(B, N, 5) layouts -> (B, length, dim): on each of an object's three tokens
        E[class] + W gamma(x0, y0, x1, y1); 0 on ``<start>``, padding and empty slots."""
        present = layouts[..., 0] != EMPTY
        classes = layouts[..., 0].clamp(min=0).long() + self.tokenizer.class_offset
        corners = rearrange(layouts[..., 1:5], "b n (c a) -> (b n c) a", a=2)
        box = rearrange(fourier_features(corners, self.BOX_FEATURES), "(b n c) f -> b n (c f)",
                        b=layouts.shape[0], c=2)  # fmt: skip
        objects = (self.token_embedding(classes) + self.box_projection(box)) * present[..., None]
        tokens = objects.repeat_interleave(3, dim=1)  # class, top-left, bottom-right
        # <start> first, padding after
        return F.pad(tokens, (0, 0, 1, length - 1 - tokens.shape[1]))

    def forward(self, layouts: Tensor) -> tuple[Tensor, Tensor]:
        device = self.token_embedding.weight.device
        layouts = layouts.to(device)
        ids, mask = self.tokenizer.encode(layouts)
        # h_0 = E[ids] + Fourier(cell centre) for cell tokens + E_position + the object's own
        # embedding on each of its tokens
        x = self.token_embedding(ids) + self.cell_features[ids] + self.position_embedding
        x = x + self.object_embeddings(layouts, ids.shape[1])
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x), mask


# --------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------


def label_map_from_mask(mask: Any, objects: list[dict]) -> Tensor:
    """A shapes ``mask`` (H, W) of object numbers (0 background, k for object k) and its
    ``objects`` -> the label map (H, W) long: 0 background, class + 1 for each object."""
    numbers = torch.as_tensor(np.array(mask), dtype=torch.long)
    lookup = torch.zeros(len(objects) + 1, dtype=torch.long)
    for k, obj in enumerate(objects, start=1):
        lookup[k] = CLASS_NAMES.index(f"{obj['colour']} {obj['shape']}") + 1
    return lookup[numbers]


def dataset_label_maps(dataset) -> Tensor:
    """The label maps (N, H, W) of a shapes dataset, from its ``mask`` and ``objects``."""
    pairs = zip(dataset["mask"], dataset["objects"], strict=True)
    return torch.stack([label_map_from_mask(mask, objects) for mask, objects in pairs])


def check_label_maps(maps: Tensor, size: int | None = None) -> Tensor:
    """Label maps (B, H, W) of integers in [0, NUM_LABELS), or a :class:`LayoutError`."""
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.is_floating_point():
        raise LayoutError(
            f"label maps must be an integer tensor (B, H, W), got {getattr(maps, 'dtype', '')} "
            f"{tuple(getattr(maps, 'shape', ()))}"
        )
    if size is not None and tuple(maps.shape[-2:]) != (size, size):
        raise LayoutError(
            f"a label map of {maps.shape[-1]}x{maps.shape[-2]} pixels, but this model makes "
            f"{size}x{size} images: draw the map at {size}x{size}"
        )
    if maps.numel() and (int(maps.min()) < 0 or int(maps.max()) >= NUM_LABELS):
        unknown = sorted({int(v) for v in maps.unique().tolist() if not 0 <= v < NUM_LABELS})
        raise LayoutError(
            f"unknown labels {unknown[:10]} in the label map: labels are 0 (background) to "
            f"{NUM_LABELS - 1} (1 + the index of a class in {list(CLASS_NAMES[:2])}...)"
        )
    return maps.long()


def label_map_condition(maps: Tensor, latent_size: int) -> Tensor:
    """Label maps (B, H, W) -> the concatenated input (B, NUM_LABELS, h, w) in [0, 1]: one-hot,
    then each latent cell the fraction of its pixels in each class (area averaging)."""
    maps = check_label_maps(maps)
    if maps.shape[-1] % latent_size or maps.shape[-2] % latent_size:
        raise LayoutError(
            f"a {maps.shape[-1]}x{maps.shape[-2]} label map does not tile {latent_size}x"
            f"{latent_size} latent cells"
        )
    one_hot = rearrange(F.one_hot(maps, NUM_LABELS).float(), "b h w c -> b c h w")
    return F.adaptive_avg_pool2d(one_hot, latent_size)


def label_map_palette() -> list[int]:
    """The palette of label-map PNGs: background white, each class its colour, darker for
    squares and lighter for triangles (so a map is readable as a picture)."""
    shade = {"circle": 1.0, "square": 0.6, "triangle": 1.4}
    palette = [255, 255, 255]
    for name in CLASS_NAMES:
        colour, shape = name.split()
        rgb = np.asarray(COLOURS[colour], dtype=np.float64)
        rgb = rgb * shade[shape] if shade[shape] < 1 else rgb + (255 - rgb) * (shade[shape] - 1)
        palette.extend(int(round(v)) for v in np.clip(rgb, 0, 255))
    return palette + [0, 0, 0] * (256 - NUM_LABELS)


def write_label_map(label_map: Tensor, path: str | Path) -> None:
    """A label map (H, W) -> a palette PNG: pixel values are the labels, colours to see them."""
    from PIL import Image

    values = check_label_maps(label_map[None])[0].numpy().astype(np.uint8)
    image = Image.fromarray(values, mode="P")
    image.putpalette(label_map_palette())
    image.save(path)


def read_label_map(path: str | Path, size: int) -> Tensor:
    """A label-map PNG (palette or greyscale; pixel values are labels 0..18) -> (H, W) long.

    RGB images are refused: their values are colours, not labels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image)
    except FileNotFoundError:
        raise LayoutError(f"no label map {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise LayoutError(f"{path} is not a readable image ({err})") from None
    if mode not in ("P", "L"):
        raise LayoutError(
            f"{path} is a {mode} image; a label map is a palette (P) or greyscale (L) PNG whose "
            "pixel values are labels 0..18 (ldm_mini.layouts.write_label_map writes one)"
        )
    return check_label_maps(torch.from_numpy(values.astype(np.int64))[None], size)[0]


def label_map_for_layout(objects: list[LayoutObject], size: int) -> Tensor:
    """The label map (size, size) of a layout drawn by the shapes renderer."""
    from ldm_mini.data.shapes import ShapeObject, render

    shapes = [ShapeObject(o.colour, o.shape, tuple(v * size for v in o.box)) for o in objects]
    _, mask = render(shapes, size)
    return label_map_from_mask(mask, [{"colour": o.colour, "shape": o.shape} for o in objects])
