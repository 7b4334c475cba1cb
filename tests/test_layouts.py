"""Layout-to-image and semantic synthesis (notebook 11): layouts, their tokens, label maps,
held-out layouts, the checker's scores, training, sampling and every bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ldm_mini.data.shapes import (
    CLASS_NAMES,
    generate,
    heldout_layout_reasons,
    load_shapes,
    sample_scene,
)
from ldm_mini.layouts import (
    EMPTY,
    NUM_LABELS,
    PAD,
    START,
    LayoutEncoder,
    LayoutError,
    LayoutObject,
    LayoutTokenizer,
    check_label_maps,
    dataset_layouts,
    format_layout,
    fourier_features,
    label_map_condition,
    label_map_for_layout,
    label_map_from_mask,
    layouts_to_tensor,
    parse_layout,
    read_label_map,
    read_layouts,
    tensor_to_layouts,
    write_label_map,
)
from ldm_mini.shapes_checker import (
    box_iou,
    label_map_accuracy,
    label_map_iou,
    layout_accuracy,
)
from ldm_mini.shapes_checker import (
    read_label_map as read_label_map_from_pixels,
)

TWO = "red circle 0.1,0.1,0.5,0.5; blue square 0.5,0.55,0.9,0.95"


# -- layouts as text, JSON and tensors -------------------------------------------------------


def test_a_layout_parses_formats_and_round_trips_through_tensors():
    objects = parse_layout(TWO)
    assert objects == [
        LayoutObject("red", "circle", (0.1, 0.1, 0.5, 0.5)),
        LayoutObject("blue", "square", (0.5, 0.55, 0.9, 0.95)),
    ]
    assert parse_layout(format_layout(objects)) == objects
    table = layouts_to_tensor([objects, objects[:1]], max_objects=2)
    assert table.shape == (2, 2, 5)
    assert table[0, 0, 0] == CLASS_NAMES.index("red circle")
    assert table[1, 1, 0] == EMPTY
    back = tensor_to_layouts(table)
    assert [o.class_index for o in back[0]] == [o.class_index for o in objects]
    assert len(back[1]) == 1
    assert torch.allclose(torch.tensor(back[0][1].box), torch.tensor(objects[1].box))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("red circle 0.1,0.1,1.5,0.5", "leaves the image"),
        ("red circle -0.1,0.1,0.5,0.5", "leaves the image"),
        ("red circle 0.5,0.1,0.5,0.5", "x1 > x0"),
        ("red circle 0.1,0.6,0.5,0.5", "y1 > y0"),
        ("pink circle 0.1,0.1,0.5,0.5", "unknown colour 'pink'"),
        ("red hexagon 0.1,0.1,0.5,0.5", "unknown shape 'hexagon'"),
        ("red circle 0.1,0.1,0.5", "not a box"),
        ("red circle", "not an object"),
        ("red circle 0.1,0.1,nan,0.5", "four numbers"),
        ("", "empty"),
        (" ; ", "empty"),
    ],
)
def test_bad_layouts_are_one_clear_error(text, says):
    with pytest.raises(LayoutError, match=says):
        parse_layout(text)


def test_too_many_objects_are_refused_with_the_models_limit():
    three = parse_layout(TWO + "; green triangle 0.0,0.0,0.2,0.2")
    with pytest.raises(LayoutError, match="at most 2"):
        layouts_to_tensor([three], max_objects=2)
    assert layouts_to_tensor([three], max_objects=3).shape == (1, 3, 5)


def test_layout_files_hold_one_layout_or_several(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"colour": "red", "shape": "circle", "box": [0, 0, 0.5, 0.5]}]))
    assert len(read_layouts(one)) == 1
    many = tmp_path / "many.json"
    many.write_text(json.dumps([[{"colour": "red", "shape": "circle", "box": [0, 0, 0.5, 0.5]}],
                                [{"colour": "blue", "shape": "square", "box": [0.2, 0.2, 1, 1]}]]))
    assert [layout[0].colour for layout in read_layouts(many)] == ["red", "blue"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(LayoutError, match="not JSON"):
        read_layouts(broken)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps([{"colour": "red", "box": [0, 0, 1, 1]}]))
    with pytest.raises(LayoutError, match="lacks \\['shape'\\]"):
        read_layouts(lacking)
    with pytest.raises(LayoutError, match="no layout file"):
        read_layouts(tmp_path / "missing.json")


# -- tau_theta: quantised box corners ---------------------------------------------------------


def test_each_object_is_its_class_and_the_cells_of_its_corners():
    tokenizer = LayoutTokenizer(grid=16, max_objects=2)
    ids, mask = tokenizer.encode(layouts_to_tensor([parse_layout(TWO)], 2))
    offset, cells = tokenizer.class_offset, tokenizer.cell_offset
    # red circle: top-left (0.1, 0.1) -> column 1, row 1; bottom-right (0.5, 0.5) -> 8, 8
    # blue square: (0.5, 0.55) -> column 8, row 8; (0.9, 0.95) -> column 14, row 15
    expected = [START, offset + CLASS_NAMES.index("red circle"), cells + 1 * 16 + 1,
                cells + 8 * 16 + 8, offset + CLASS_NAMES.index("blue square"),
                cells + 8 * 16 + 8, cells + 15 * 16 + 14]  # fmt: skip
    assert ids[0].tolist() == expected
    assert mask.all()
    names = tokenizer.token_names(layouts_to_tensor([parse_layout(TWO)], 2)[0])
    assert names == ["<start>", "red circle", "tl 1,1", "br 8,8", "blue square", "tl 8,8",
                     "br 14,15"]  # fmt: skip


def test_the_empty_layout_is_the_start_token_alone_and_corners_on_the_edge_stay_inside():
    tokenizer = LayoutTokenizer(grid=4, max_objects=2)
    empty = LayoutEncoder(tokenizer, dim=16, depth=1, heads=2).null_condition(3)
    ids, mask = tokenizer.encode(empty)
    assert (ids[:, 0] == START).all() and (ids[:, 1:] == PAD).all()
    assert mask[:, 0].all() and not mask[:, 1:].any()
    corner = layouts_to_tensor([parse_layout("red circle 0.5,0.5,1,1")], 2)
    ids, _ = tokenizer.encode(corner)
    assert ids[0, 3] == tokenizer.cell_offset + 15  # (1, 1) is in the last cell
    assert len(tokenizer) == 2 + len(CLASS_NAMES) + 16


def test_the_layout_encoder_ignores_empty_slots_and_sees_every_object():
    torch.manual_seed(0)
    encoder = LayoutEncoder(LayoutTokenizer(16, 3), dim=32, depth=2, heads=4).eval()
    one = layouts_to_tensor([parse_layout("red circle 0.1,0.1,0.5,0.5")], 3)
    tokens, mask = encoder(one)
    assert tokens.shape == (1, 10, 32) and mask.tolist() == [[True] * 4 + [False] * 6]
    # what sits in an empty slot does not matter
    scribbled = one.clone()
    scribbled[0, 1:, 1:] = torch.rand(2, 4)
    again, _ = encoder(scribbled)
    assert torch.allclose(tokens[:, :4], again[:, :4], atol=1e-6)
    # a second object changes the first one's tokens (self-attention across objects)
    two = layouts_to_tensor([parse_layout(TWO)], 3)
    with_two, _ = encoder(two)
    assert not torch.allclose(tokens[:, :4], with_two[:, :4], atol=1e-4)


def test_each_object_token_carries_its_object_class_and_exact_box():
    torch.manual_seed(0)
    encoder = LayoutEncoder(LayoutTokenizer(16, 2), dim=32, depth=1, heads=4)
    layouts = layouts_to_tensor([parse_layout(TWO), parse_layout("red circle 0.1,0.1,0.5,0.5")], 2)
    embeddings = encoder.object_embeddings(layouts, 7)
    assert embeddings.shape == (2, 7, 32)
    assert (embeddings[:, 0] == 0).all() and (embeddings[1, 4:] == 0).all()  # start, empty slot
    # the same embedding on an object's three tokens, other objects' differ
    assert torch.equal(embeddings[0, 1], embeddings[0, 3])
    assert torch.equal(embeddings[0, 4], embeddings[0, 6])
    assert not torch.allclose(embeddings[0, 1], embeddings[0, 4])
    # a box moved within the same grid cells changes it (the cell tokens alone would not)
    moved = layouts.clone()
    moved[0, 0, 1:] += 0.01
    assert torch.equal(encoder.tokenizer.encode(moved)[0], encoder.tokenizer.encode(layouts)[0])
    assert not torch.allclose(encoder.object_embeddings(moved, 7)[0, 1], embeddings[0, 1])


def test_neighbouring_cells_start_closer_than_far_ones():
    features = fourier_features(torch.tensor([[0.50, 0.50], [0.53, 0.50], [0.95, 0.10]]), 32)
    near = (features[0] - features[1]).norm()
    far = (features[0] - features[2]).norm()
    assert features.shape == (3, 32) and near < far / 2
    with pytest.raises(ValueError, match="divisible by 4"):
        fourier_features(torch.zeros(1, 2), 30)


# -- label maps ------------------------------------------------------------------------------


def test_label_maps_from_masks_and_their_area_averaged_one_hot():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:4, 0:4] = 1
    mask[4:8, 6:8] = 2
    objects = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"}]
    labels = label_map_from_mask(mask, objects)
    assert labels[0, 0] == CLASS_NAMES.index("red square") + 1
    assert labels[7, 7] == CLASS_NAMES.index("blue circle") + 1
    assert labels[7, 0] == 0
    concat = label_map_condition(labels[None], 2)
    assert concat.shape == (1, NUM_LABELS, 2, 2)
    assert torch.allclose(concat.sum(1), torch.ones(1, 2, 2))
    # the top-left latent cell is all red square; the bottom-right half blue circle
    assert concat[0, CLASS_NAMES.index("red square") + 1, 0, 0] == 1
    assert concat[0, CLASS_NAMES.index("blue circle") + 1, 1, 1] == 0.5
    assert concat[0, 0, 1, 1] == 0.5


def test_label_map_pngs_round_trip_and_bad_maps_are_refused(tmp_path):
    wanted = label_map_for_layout(parse_layout(TWO), 32)
    assert set(wanted.unique().tolist()) == {0, CLASS_NAMES.index("red circle") + 1,
                                             CLASS_NAMES.index("blue square") + 1}  # fmt: skip
    write_label_map(wanted, tmp_path / "map.png")
    assert torch.equal(read_label_map(tmp_path / "map.png", 32), wanted)
    with pytest.raises(LayoutError, match="draw the map at 64x64"):
        read_label_map(tmp_path / "map.png", 64)
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "rgb.png")
    with pytest.raises(LayoutError, match="is a RGB image"):
        read_label_map(tmp_path / "rgb.png", 32)
    Image.fromarray(np.full((32, 32), 40, dtype=np.uint8), mode="L").save(tmp_path / "l.png")
    with pytest.raises(LayoutError, match="unknown labels \\[40\\]"):
        read_label_map(tmp_path / "l.png", 32)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(LayoutError, match="not a readable image"):
        read_label_map(tmp_path / "junk.png", 32)
    with pytest.raises(LayoutError, match="integer tensor"):
        check_label_maps(torch.zeros(1, 4, 4))


# -- held-out layouts ------------------------------------------------------------------------


def test_held_out_layouts_are_kept_out_of_training_and_prefixes_agree():
    seen = generate(60, seed=0, image_size=32, layouts="seen")
    held = generate(30, seed=2, image_size=32, layouts="heldout")
    from ldm_mini.data.shapes import ShapeObject

    def reasons(objects):
        return heldout_layout_reasons([ShapeObject(o["colour"], o["shape"], tuple(o["box"]))
                                       for o in objects], 32)  # fmt: skip

    assert not any(reasons(objects) for objects in seen["objects"])
    assert all(reasons(objects) for objects in held["objects"])
    assert generate(20, seed=0, image_size=32, layouts="seen")["caption"] == seen["caption"][:20]
    # both kinds of novelty occur in the stream
    found = [r for i in range(300) for r in heldout_layout_reasons(*sample_scene(0, i, 32)[:1],
                                                                     32)]  # fmt: skip
    assert any(r.startswith("the pair") for r in found)
    assert any(" in the " in r for r in found)
    with pytest.raises(ValueError, match="layouts must be one of"):
        generate(1, layouts="unseen")


# -- the checker's scores --------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_scenes():
    shapes = load_shapes("test", 120, image_size=32)
    layouts = tensor_to_layouts(dataset_layouts(shapes["objects"], 32, 2))
    maps = [label_map_from_mask(m, o).numpy() for m, o in zip(shapes["mask"], shapes["objects"],
                                                                strict=True)]  # fmt: skip
    return shapes["image"], layouts, maps


def test_the_datasets_own_images_score_near_one_and_shuffled_conditions_low(test_scenes):
    images, layouts, maps = test_scenes
    own = layout_accuracy(images, layouts)
    assert own["objects"] >= 0.98 and own["all"] >= 0.97 and own["extra"] <= 0.02
    shuffled = layouts[:]
    random.Random(0).shuffle(shuffled)
    wrong = layout_accuracy(images, shuffled)
    assert wrong["objects"] < 0.1 and wrong["all"] < 0.05
    own_maps = label_map_accuracy(images, maps)
    assert own_maps["miou"] >= 0.98 and own_maps["object_miou"] >= 0.97
    shuffled_maps = maps[:]
    random.Random(0).shuffle(shuffled_maps)
    wrong_maps = label_map_accuracy(images, shuffled_maps)
    assert wrong_maps["miou"] < 0.4 and wrong_maps["object_miou"] < 0.1


def test_an_object_in_the_wrong_place_colour_or_shape_is_not_found(test_scenes):
    images, layouts, _ = test_scenes
    image, layout = images[0], layouts[0]
    moved = [LayoutObject(o.colour, o.shape, (1 - o.box[2], 1 - o.box[3], 1 - o.box[0],
                                              1 - o.box[1])) for o in layout]  # fmt: skip
    recoloured = [LayoutObject("green" if o.colour != "green" else "red", o.shape, o.box)
                  for o in layout]  # fmt: skip
    for wrong in (moved, recoloured):
        assert layout_accuracy([image], [wrong])["all"] == 0.0
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert label_map_iou(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 1.0)
    blank = np.full((32, 32, 3), 255, dtype=np.uint8)
    assert (read_label_map_from_pixels(blank) == 0).all()
    with pytest.raises(ValueError, match="2 images but 1 layouts"):
        layout_accuracy([image, image], [layout])


# -- training, loading, sampling -------------------------------------------------------------

SHAPES_OPTIONS = 'data.options={"image_size": 32, "layouts": "seen"}'


def _tiny(tmp_path, kind: str):
    from ldm_mini.configs import apply_overrides
    from ldm_mini.stages.ldm import load_ldm_preset, train_ldm

    torch.set_num_threads(1)
    config = apply_overrides(load_ldm_preset("tiny"), [
        'data.dataset="shapes"', SHAPES_OPTIONS, "data.limit=64",
        'first_stage.checkpoint="shipped:shapes_kl_f4"', f'condition.kind="{kind}"',
        "train.steps=4", "train.sample_every=4", "train.checkpoint_every=4", "train.batch_size=8",
    ])  # fmt: skip
    train_ldm(config, tmp_path / kind, progress=False)
    return tmp_path / kind


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny layout model and a tiny label-map model, trained once for this module."""
    folder = tmp_path_factory.mktemp("layout_runs")
    threads = torch.get_num_threads()
    try:
        return {kind: _tiny(folder, kind) for kind in ("layout", "label_map")}
    finally:
        torch.set_num_threads(threads)


def test_a_layout_model_trains_loads_and_samples_with_guidance(tiny_runs):
    from ldm_mini.checkpoints import load_checkpoint
    from ldm_mini.pipelines import generate, load_ldm

    run = tiny_runs["layout"]
    ldm, config = load_ldm(run)
    assert ldm.conditioning == "layout" and config["tokenizer"]["kind"] == "layout"
    assert config["condition"]["max_objects"] == 2
    # tau_theta is trained jointly: its weights and their EMA are in the checkpoint
    checkpoint = load_checkpoint(run)
    assert any(k.startswith("condition_encoder.") for k in checkpoint.model_state)
    assert any(k.startswith("condition_encoder.") for k in checkpoint.ema_state)
    layouts = layouts_to_tensor([parse_layout(TWO)] * 2, 2)
    images, _, _ = generate(ldm, 2, 32, steps=3, guidance=2.0, layouts=layouts)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    again, _, _ = generate(ldm, 2, 32, steps=3, guidance=2.0, layouts=layouts)
    assert torch.equal(images, again)
    other, _, _ = generate(ldm, 2, 32, steps=3, guidance=2.0,
                           layouts=layouts_to_tensor([parse_layout("green triangle 0,0,1,1")] * 2,
                                                     2))  # fmt: skip
    assert not torch.equal(images, other)
    with pytest.raises(ValueError, match="layout-conditional: pass layouts"):
        generate(ldm, 2, 32, steps=3)
    with pytest.raises(ValueError, match="layout-conditional: pass layouts only"):
        ldm.sample(2, (8, 8), steps=3, layouts=layouts, prompts=["a", "b"])
    from ldm_mini.evaluation import evaluate_ldm

    result = evaluate_ldm(run, n=6, steps=2, guidance=2.0, with_kid=False)
    assert result["conditions"] == "6 held-out test layouts"
    assert 0 <= result["layout_all_right"] <= result["layout_objects_right"] <= 1
    assert result["fd"] > 0


def test_a_label_map_model_trains_loads_and_follows_its_map(tiny_runs):
    from ldm_mini.pipelines import generate, load_ldm

    run = tiny_runs["label_map"]
    ldm, config = load_ldm(run)
    assert config["model"]["concat_channels"] == NUM_LABELS
    wanted = label_map_for_layout(parse_layout(TWO), 32)
    images, _, _ = generate(ldm, 2, 32, steps=3, label_maps=torch.stack([wanted, wanted]))
    assert images.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="pass concat of shape"):
        generate(ldm, 2, 32, steps=3)
    with pytest.raises(LayoutError, match="draw the map at 32x32"):
        generate(ldm, 1, 32, steps=3, label_maps=torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="1 label maps for 2 images"):
        generate(ldm, 2, 32, steps=3, label_maps=wanted[None])
    from ldm_mini.evaluation import evaluate_ldm

    result = evaluate_ldm(run, n=6, steps=2, with_kid=False)
    assert result["conditions"] == "6 held-out test maps"
    assert 0 <= result["label_map_object_miou"] <= 1 and 0 <= result["label_map_miou"] <= 1


def test_layout_conditions_need_the_shapes_objects(tmp_path):
    from ldm_mini.configs import apply_overrides
    from ldm_mini.stages.ldm import load_ldm_preset, train_ldm

    config = apply_overrides(load_ldm_preset("tiny"), ['condition.kind="layout"',
                                                       "data.limit=16", "train.steps=1"])
    with pytest.raises(ValueError, match="needs objects with boxes: use --dataset shapes"):
        train_ldm(config, tmp_path / "run", progress=False)
    flipped = apply_overrides(load_ldm_preset("tiny"), [
        'condition.kind="layout"', 'data.dataset="shapes"', SHAPES_OPTIONS, "data.hflip=true",
        'first_stage.checkpoint="shipped:shapes_kl_f4"', "data.limit=16", "train.steps=1",
    ])  # fmt: skip
    with pytest.raises(ValueError, match="a flip would move the boxes"):
        train_ldm(flipped, tmp_path / "flipped", progress=False)


def _one_line_error(capsys, fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ldm-mini: error: "), err
    assert fragment in err, err


def test_the_sample_command_takes_layouts_and_label_maps(tiny_runs, tmp_path, capsys):
    from ldm_mini.cli import main

    layout_run, map_run = str(tiny_runs["layout"]), str(tiny_runs["label_map"])
    common = ["--n", "2", "--sample-steps", "2", "--quiet"]
    out = tmp_path / "layouts"
    assert main(["sample", "--checkpoint", layout_run, *common, "--guidance", "2",
                 "--layout", TWO, "--layout", "green triangle 0,0,1,1",
                 "--out-dir", str(out)]) == 0  # fmt: skip
    entries = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [e["prompt"].split()[:2] for e in entries] == [["red", "circle"], ["green", "triangle"]]
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps([{"colour": "red", "shape": "circle", "box": [0, 0, 1, 1]}]))
    assert main(["sample", "--checkpoint", layout_run, *common, "--layout", str(layout_file),
                 "--out", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    for argv, fragment in [
        ([], "layout-conditional: give --layout"),
        (["--layout", "red circle 0.1,0.1,1.5,0.5"], "leaves the image"),
        (["--layout", TWO, "--layout", TWO, "--layout", TWO], "give one --layout"),
        (["--layout", TWO, "--label-map", "map.png"], "--label-map needs a label-map checkpoint"),
    ]:
        capsys.readouterr()
        assert main(["sample", "--checkpoint", layout_run, *common, *argv,
                     "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip
        _one_line_error(capsys, fragment)
    write_label_map(label_map_for_layout(parse_layout(TWO), 32), tmp_path / "map.png")
    assert main(["sample", "--checkpoint", map_run, *common, "--label-map",
                 str(tmp_path / "map.png"), "--out", str(tmp_path / "maps.png")]) == 0  # fmt: skip
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "rgb.png")
    # a layout drawn as the label map
    assert main(["sample", "--checkpoint", map_run, *common, "--layout", TWO,
                 "--out", str(tmp_path / "drawn.png")]) == 0  # fmt: skip
    for argv, fragment in [
        ([], "draws from label maps: give --label-map"),
        (["--label-map", str(tmp_path / "rgb.png")], "is a RGB image"),
        (["--label-map", str(tmp_path / "map.png"), "--layout", TWO], "not both"),
    ]:
        capsys.readouterr()
        assert main(["sample", "--checkpoint", map_run, *common, *argv,
                     "--out", str(tmp_path / "y.png")]) == 2  # fmt: skip
        _one_line_error(capsys, fragment)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", *common,
                 "--layout", TWO, "--out", str(tmp_path / "z.png")]) == 2  # fmt: skip
    _one_line_error(capsys, "--layout needs a layout-conditional checkpoint")
    assert not any((tmp_path / name).exists() for name in ("x.png", "y.png", "z.png"))
