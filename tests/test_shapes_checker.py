"""The shapes checker (ldm_mini.shapes_checker): reads real renders, rejects wrong captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_mini.data import load_dataset
from ldm_mini.shapes_checker import (
    conditioning_accuracy,
    parse_caption,
    read_scene,
    scene_matches,
)


@pytest.fixture(scope="module")
def scenes():
    return load_dataset("shapes", split="validation", num_samples=150, image_size=32)


def test_reads_real_renders_back(scenes):
    accuracy = conditioning_accuracy(list(scenes["image"]), list(scenes["caption"]))
    assert accuracy["all"] >= 0.98, accuracy
    for row in list(scenes)[:20]:
        objects = read_scene(row["image"])
        truth = sorted((o["colour"], o["shape"]) for o in row["objects"])
        assert sorted((o.colour, o.shape) for o in objects) == truth, row["caption"]


def test_tensor_and_pil_inputs_agree(scenes):
    image = scenes[0]["image"]
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    a, b = read_scene(image), read_scene(tensor)
    assert [(o.colour, o.shape, o.box) for o in a] == [(o.colour, o.shape, o.box) for o in b]
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        read_scene(tensor[:1])
    with pytest.raises(ValueError, match="RGB"):
        read_scene(np.zeros((8, 8)))


def _wrong_captions(caption: str) -> list[str]:
    phrases, relation = parse_caption(caption)
    (c1, s1) = phrases[0]
    other_colour = "green" if c1 != "green" else "red"
    other_shape = "circle" if s1 != "circle" else "square"
    wrong = [
        caption.replace(f"{c1} {s1}", f"{other_colour} {s1}", 1),
        caption.replace(f"{c1} {s1}", f"{c1} {other_shape}", 1),
    ]
    if relation is None:
        wrong.append(f"{caption} above a blue square")
    else:
        opposite = {"above": "below", "below": "above", "to the left of": "to the right of",
                    "to the right of": "to the left of"}[relation]  # fmt: skip
        if phrases[0] != phrases[1]:
            wrong.append(caption.replace(relation, opposite))
        wrong.append(" ".join(caption.split(f" {relation} ")[0].split()))  # one object only
    return [w.replace("a orange", "an orange").replace("an red", "a red") for w in wrong]


def test_wrong_colour_shape_relation_or_count_is_rejected(scenes):
    checked = 0
    for row in list(scenes)[:40]:
        objects = read_scene(row["image"])
        if not scene_matches(objects, row["caption"])["all"]:
            continue
        for wrong in _wrong_captions(row["caption"]):
            assert not scene_matches(objects, wrong)["all"], (row["caption"], wrong)
            checked += 1
    assert checked >= 80


def test_blank_and_noise_images_match_nothing():
    white = np.full((32, 32, 3), 255, np.uint8)
    assert read_scene(white) == []
    assert not scene_matches([], "a red circle")["all"]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert conditioning_accuracy([noise], ["a red circle above a blue square"])["all"] == 0.0


def test_captions_are_parsed_or_refused():
    assert parse_caption("An orange triangle") == ([("orange", "triangle")], None)
    assert parse_caption("a red circle to the left of a blue square") == (
        [("red", "circle"), ("blue", "square")],
        "to the left of",
    )
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a red circle near a blue square")
    with pytest.raises(ValueError, match="unknown colour or shape"):
        parse_caption("a crimson circle")
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        conditioning_accuracy([np.zeros((4, 4, 3))] * 2, ["a red circle"])
