"""The procedural shapes set: determinism, captions, and that its ground truth is true."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ldm_mini.data import load_dataset
from ldm_mini.data.shapes import (
    CLASS_NAMES,
    COLOURS,
    RELATIONS,
    SHAPES,
    ShapeObject,
    caption_for,
    relation_between,
    render,
)

CAPTION = re.compile(
    r"^an? (?P<c1>\w+) (?P<s1>\w+)(?: (?P<rel>above|below|to the left of|to the right of) "
    r"an? (?P<c2>\w+) (?P<s2>\w+))?$"
)


@pytest.fixture(scope="module")
def scenes():
    return load_dataset("shapes", split="train", num_samples=120, image_size=64)


def _pixels(image):
    return np.asarray(image).copy()


def test_same_seed_same_images_other_seed_other_images():
    first = load_dataset("shapes", split="train", num_samples=8)
    again = load_dataset("shapes", split="train", num_samples=8)
    other = load_dataset("shapes", split="train", num_samples=8, seed=1)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(_pixels(a["image"]), _pixels(b["image"]))
        assert a["caption"] == b["caption"]
    assert any(
        not np.array_equal(_pixels(a["image"]), _pixels(c["image"]))
        for a, c in zip(first, other, strict=True)
    )


def test_a_smaller_dataset_is_a_prefix_of_a_larger_one(scenes):
    small = load_dataset("shapes", split="train", num_samples=10, image_size=64)
    for index in range(10):
        assert small[index]["caption"] == scenes[index]["caption"]
        assert np.array_equal(_pixels(small[index]["image"]), _pixels(scenes[index]["image"]))


def test_splits_have_their_own_seeds_and_sizes():
    test = load_dataset("shapes", split="test", num_samples=5)
    train = load_dataset("shapes", split="train", num_samples=5)
    assert list(test["caption"]) != list(train["caption"])
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_dataset("shapes", split="dev")


def test_captions_are_compositional_and_match_objects(scenes):
    counts = {1: 0, 2: 0}
    for row in scenes:
        match = CAPTION.match(row["caption"])
        assert match, f"caption {row['caption']!r} does not parse"
        objects = row["objects"]
        counts[len(objects)] += 1
        assert (match["c1"], match["s1"]) == (objects[0]["colour"], objects[0]["shape"])
        assert CLASS_NAMES[row["label"]] == f"{objects[0]['colour']} {objects[0]['shape']}"
        if len(objects) == 2:
            assert (match["c2"], match["s2"]) == (objects[1]["colour"], objects[1]["shape"])
            assert match["rel"] == row["relation"]
        else:
            assert match["rel"] is None and row["relation"] == ""
        article = match.group(0).split()[0]
        assert article == ("an" if objects[0]["colour"][0] in "aeiou" else "a")
    assert counts[1] > 20 and counts[2] > 20, f"both one- and two-object scenes: {counts}"


def test_ground_truth_masks_boxes_colours_and_relations_hold(scenes):
    for row in scenes:
        pixels = np.asarray(row["image"], dtype=np.float32)
        mask = np.asarray(row["mask"])
        objects = [ShapeObject(o["colour"], o["shape"], tuple(o["box"])) for o in row["objects"]]
        assert set(np.unique(mask)) == set(range(len(objects) + 1))
        for k, obj in enumerate(objects, start=1):
            ys, xs = np.nonzero(mask == k)
            x0, y0, x1, y1 = obj.box
            assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1)
            assert ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)
            # well inside the mask the pixel is the object's colour
            inner = pixels[mask == k].mean(axis=0)
            assert np.abs(inner - np.asarray(COLOURS[obj.colour])).max() < 40, (obj, inner)
        assert np.all(pixels[mask == 0].mean(axis=0) > 200), "background is white"
        if len(objects) == 2:
            assert relation_between(*objects) == row["relation"]


def test_relation_between_rejects_ambiguous_layouts():
    left = ShapeObject("red", "circle", (0, 0, 10, 10))
    assert (
        relation_between(left, ShapeObject("blue", "square", (30, 2, 40, 12))) == "to the left of"
    )
    assert relation_between(left, ShapeObject("blue", "square", (2, 30, 12, 40))) == "above"
    assert relation_between(ShapeObject("blue", "square", (2, 30, 12, 40)), left) == "below"
    # diagonal: neither relation is clear
    assert relation_between(left, ShapeObject("blue", "square", (20, 20, 30, 30))) is None
    # overlapping along the main axis
    assert relation_between(left, ShapeObject("blue", "square", (8, 1, 18, 11))) is None


def test_render_draws_each_shape_where_asked():
    for shape in SHAPES:
        _image, mask = render([ShapeObject("blue", shape, (8.0, 8.0, 24.0, 24.0))], 32)
        mask = np.asarray(mask)
        area = (mask == 1).sum()
        expected = {"square": 256, "circle": np.pi * 64, "triangle": 128}[shape]
        assert abs(area - expected) / expected < 0.12, (shape, area, expected)
    with pytest.raises(ValueError, match="unknown shape"):
        render([ShapeObject("blue", "hexagon", (8.0, 8.0, 24.0, 24.0))], 32)


def test_caption_for_uses_the_relation_words():
    a = ShapeObject("orange", "triangle", (0, 0, 1, 1))
    b = ShapeObject("red", "square", (0, 0, 1, 1))
    assert caption_for([a], None) == "an orange triangle"
    for relation in RELATIONS:
        assert caption_for([a, b], relation) == f"an orange triangle {relation} a red square"


def test_heldout_prompts_are_unseen_combinations_of_seen_words():
    from ldm_mini.data.shapes import all_prompts, generate, heldout_prompts, is_heldout

    prompts, heldout = all_prompts(), heldout_prompts()
    assert len(prompts) == len(set(prompts)) == 18 + 18 * 4 * 18
    assert 100 <= len(heldout) <= 160 and all(" a" in p[2:] for p in heldout)  # pairs only
    seen = generate(300, seed=0, image_size=16, prompts="seen")
    held = generate(20, seed=0, image_size=16, prompts="heldout")
    assert not any(is_heldout(c) for c in seen["caption"])
    assert all(c in heldout for c in held["caption"])
    seen_words = {w for c in seen["caption"] for w in c.split()}
    assert {w for c in held["caption"] for w in c.split()} <= seen_words
    # filtering keeps the stream: a prefix of a longer filtered set is the shorter one
    assert generate(5, 0, 16, prompts="seen")["caption"] == seen["caption"][:5]
    with pytest.raises(ValueError, match="prompts must be one of"):
        generate(1, prompts="unseen")


def test_data_options_reach_the_shapes_loader():
    from ldm_mini.data.config import DataConfig, build_dataset
    from ldm_mini.data.shapes import is_heldout

    data = DataConfig(dataset="shapes", limit=12, options={"prompts": "heldout"})
    images = build_dataset(data)
    assert len(images) == 12 and all(is_heldout(c) for c in images.dataset["caption"])
