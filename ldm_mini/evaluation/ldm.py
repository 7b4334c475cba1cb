"""Measuring an LDM's samples: FD and KID against the test split, class accuracy for
class-conditional Fashion-MNIST, conditioning accuracy for text models on shapes, layout and
label-map scores for layout-to-image and semantic synthesis on shapes.

Taught in notebooks 06_latent_diffusion, 07_conditioning, 09_evaluation_and_f_sweep and
11_layouts_and_semantic_maps. Samples n images (class-balanced labels, the test captions for
a text model, the held-out test layouts or label maps for layout and label-map models) and
compares them with the first n test images (for layouts and maps: the held-out ones, so each
sample has its real counterpart).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.ldm import LatentDiffusion
from ldm_mini.pipelines import generate, load_ldm


@torch.no_grad()
def shapes_conditioning(
    ldm: LatentDiffusion, n: int, image_size: int, **sampling: Any
) -> dict[str, Any]:
    """Conditioning accuracy of a text model trained on shapes, on the held-out prompts.

    Samples n images for the held-out prompts (unseen colour-shape-relation combinations,
    :func:`ldm_mini.data.shapes.heldout_prompts`, in turn; ``sampling``: the sampler, steps,
    guidance and seed of :func:`ldm_mini.pipelines.generate`) and reads them back with
    :mod:`ldm_mini.shapes_checker`: the fraction whose objects match every attribute of their
    prompt, and per attribute.
    """
    from ldm_mini.data.shapes import heldout_prompts
    from ldm_mini.shapes_checker import conditioning_accuracy

    held = heldout_prompts()
    prompts = [held[i % len(held)] for i in range(n)]
    images, _, _ = generate(ldm, n, image_size, prompts=prompts, **sampling)
    accuracy = conditioning_accuracy(images, prompts)
    return {
        "conditioning_accuracy": accuracy["all"],
        "conditioning_by_part": {k: v for k, v in accuracy.items() if k != "all"},
        "conditioning_prompts": f"{len(held)} held-out shapes prompts",
    }


@torch.no_grad()
def evaluate_ldm(
    path: str | Path,
    n: int = 1000,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    feature_extractor: str = "auto",
    with_kid: bool = True,
    device: str = "cpu",
    eta: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """FD (and KID) of n samples against the first n images of the test split, and timing;
    for class-conditional Fashion-MNIST models also the class accuracy of the samples.
    ``progress``: bars while sampling and extracting features (on stderr)."""
    from ldm_mini import metrics

    start = time.perf_counter()
    ldm, config = load_ldm(path, device)
    kind = config.get("condition", {}).get("kind")
    spatial = kind in ("layout", "label_map")
    values = {**config["data"], "split": "test", "limit": n, "hflip": False}
    if spatial:  # the held-out layouts (unseen class pairs and places)
        values["options"] = {**(values.get("options") or {}), "layouts": "heldout"}
    data = DataConfig(**values)
    test = build_dataset(data)
    if len(test) < n:
        raise ValueError(f"the test split has only {len(test)} images; use --n {len(test)}.")
    real = torch.stack([test[i]["image"] for i in range(n)])
    prompts = list(test.dataset["caption"][:n]) if ldm.conditioning == "text" else None
    layouts = label_maps = None
    if spatial:
        from ldm_mini.layouts import dataset_label_maps, dataset_layouts

        objects = test.dataset["objects"][:n]
        if kind == "layout":
            layouts = dataset_layouts(objects, data.image_size, config["condition"]["max_objects"])
        else:
            label_maps = dataset_label_maps(test.dataset.select(range(n)))
    sample_start = time.perf_counter()
    fake, labels, _ = generate(
        ldm,
        n,
        data.image_size,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        prompts=prompts,
        layouts=layouts,
        label_maps=label_maps,
        eta=eta,
        progress=progress,
    )
    sampling_seconds = time.perf_counter() - sample_start
    fd = metrics.frechet_distance(real, fake, feature_extractor, progress=progress)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": data.dataset,
        "n": n,
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "guidance": guidance,
        "fd": fd["fd"],
        "fd_label": fd["label"],
        "feature_extractor": fd["feature_extractor"],
        "seconds_per_sample": sampling_seconds / n,
    }
    if with_kid:
        kid = metrics.kernel_inception_distance(
            real, fake, fd["feature_extractor"], progress=progress
        )
        result.update(kid=kid["kid_mean"], kid_std=kid["kid_std"], kid_label=kid["label"])
    if labels is not None and data.dataset == "fashion_mnist":
        from ldm_mini.classifier import class_accuracy, load_classifier

        # the fraction of samples the shipped classifier reads as the class asked for
        accuracy = class_accuracy(load_classifier(device=device), fake, labels)
        result.update(
            class_accuracy=accuracy["accuracy"],
            class_accuracy_by_class=accuracy["per_class"],
            classifier="shipped:fashion_mnist_classifier",
        )
    if ldm.conditioning == "text" and data.dataset == "shapes":
        sampling = dict(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
        result.update(shapes_conditioning(ldm, n, data.image_size, **sampling, progress=progress))
    if spatial:
        from ldm_mini.layouts import tensor_to_layouts
        from ldm_mini.shapes_checker import label_map_accuracy, layout_accuracy

        result["conditions"] = f"{n} held-out test {'layouts' if layouts is not None else 'maps'}"
        if layouts is not None:
            scores = layout_accuracy(fake, tensor_to_layouts(layouts))
            result.update(layout_all_right=scores["all"], layout_objects_right=scores["objects"],
                          layout_extra_objects=scores["extra"])  # fmt: skip
        else:
            scores = label_map_accuracy(fake, [m.numpy() for m in label_maps])
            result.update(label_map_miou=scores["miou"],
                          label_map_object_miou=scores["object_miou"],
                          label_map_pixel_accuracy=scores["pixel_accuracy"])  # fmt: skip
    result["seconds"] = time.perf_counter() - start
    return result
