"""The LDM's recipe: training a latent diffusion model with the one engine.

Puts together :mod:`ldm_mini.ldm` (the model), :mod:`ldm_mini.unet`, :mod:`ldm_mini.diffusion`
and :mod:`ldm_mini.train` by the recipe of :mod:`.base`. ``ldm-mini train-ldm`` calls into
here. Taught in notebook 06_latent_diffusion (text conditioning: 07_conditioning);
:func:`ldm_mini.pipelines.load_ldm` loads the result, :func:`ldm_mini.pipelines.generate`
samples it and :func:`ldm_mini.evaluation.evaluate_ldm` measures it.

A config has the sections ``data``, ``first_stage`` (``checkpoint``: an autoencoder folder,
``shipped:NAME`` for one in ``data/checkpoints``, or ``identity`` for pixel space),
``model`` (the U-Net: every :class:`~ldm_mini.unet.UNetConfig` field; channels and classes
are filled in from the first stage and the condition), ``diffusion`` (the schedule),
``condition`` (``kind`` none, class or text, ``drop_probability``), ``latents`` (scale factor
and caching), ``init`` (optional warm start: the U-Net weights of an earlier LDM checkpoint),
``optim`` and ``train`` (the engine). An LDM checkpoint holds the U-Net, its EMA
and the first stage's weights, so it samples on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.conditioning import (
    ConditionConfig,
    TextEncoder,
    WordTokenizer,
    build_layout_encoder,
    build_pretrained_text_encoder,
    build_text_encoder,
)
from ldm_mini.configs import Section, load_stage_preset
from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.layouts import (
    NUM_LABELS,
    LayoutEncoder,
    dataset_label_maps,
    dataset_layouts,
    label_map_condition,
)
from ldm_mini.ldm import LatentDiffusion
from ldm_mini.pipelines.load import load_first_stage, with_prefix
from ldm_mini.stages.base import (
    DiffusionInitConfig,
    DiffusionStage,
    estimated_scale_factor,
    parse_diffusion_sections,
    scale_factor_of,
    train_stage,
    warm_start,
)
from ldm_mini.unet import UNet, UNetConfig

STAGE = "ldm"
log = logging.getLogger("ldm_mini.stages.ldm")


@dataclass
class LatentsConfig(Section):
    """The latent scale factor and the latent cache."""

    scale_factor: float | None = None  # None: 1 / std of the encoded training latents
    cache: bool = True  # encode the training set once (exact when there is no augmentation)


def load_ldm_preset(name: str) -> dict[str, Any]:
    """The LDM preset ``name``: ``configs/ldm/NAME.json`` with its U-Net from
    ``configs/unet/NAME.json`` (the ``model`` section; the LDM preset may override fields)."""
    return load_stage_preset(STAGE, name)


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full LDM config dict into its dataclasses (unknown keys are errors)."""
    return parse_diffusion_sections(
        config, {"data": DataConfig, "condition": ConditionConfig, "latents": LatentsConfig}
    )


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents s * E(x) (and labels, captions, layouts or the concatenated label maps):
    what the U-Net trains on, encoded once."""

    def __init__(
        self,
        latents: Tensor,
        labels: Tensor | None,
        captions: list[str] | None = None,
        layouts: Tensor | None = None,
        concat: Tensor | None = None,
    ) -> None:
        self.latents, self.labels, self.captions = latents, labels, captions
        self.layouts, self.concat = layouts, concat

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"latent": self.latents[index], "index": index}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        if self.layouts is not None:
            item["layout"] = self.layouts[index]
        if self.concat is not None:
            item["concat"] = self.concat[index]
        return item


@torch.no_grad()
def encode_dataset(
    first_stage: nn.Module, images, batch_size: int = 500, device: str = "cpu"
) -> tuple[Tensor, Tensor | None]:
    """Encode every image of ``images`` (a TensorImageDataset) once: (latents, labels)."""
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    latents, labels = [], []
    for batch in loader:
        latents.append(first_stage.encode_latent(batch["image"].to(device)).cpu())
        if "label" in batch:
            labels.append(batch["label"])
    return torch.cat(latents), (torch.cat(labels).long() if labels else None)


class LDMStage(DiffusionStage):
    """The LDM as a stage of the engine: AdamW on the U-Net (and a jointly trained
    tau_theta), their EMA, the first stage frozen."""

    name = STAGE

    @property
    def trains_condition_encoder(self) -> bool:
        """True for a jointly trained TextEncoder or LayoutEncoder; False without one or when
        it is frozen (MiniLM)."""
        return isinstance(self.ldm.condition_encoder, (TextEncoder, LayoutEncoder))

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules: the U-Net, and tau_theta when it is trained jointly."""
        if self.trains_condition_encoder:
            return {"unet": self.ldm.unet, "condition_encoder": self.ldm.condition_encoder}
        return {"unet": self.ldm.unet}

    def ema_module(self) -> nn.Module:
        if self.ldm.condition_encoder is not None:
            # text: the trained modules under their names ("unet.", "condition_encoder."); a
            # frozen pretrained encoder is not averaged (nor saved: it is referenced)
            return nn.ModuleDict(self.modules())
        return self.ldm.unet

    def _latents(self, batch: dict[str, Any]) -> Tensor:
        if "latent" in batch:
            return batch["latent"]
        return self.ldm.encode(batch["image"])

    def loss(self, optimizer, batch, step, scratch):
        z0 = self._latents(batch)
        ldm = self.ldm
        labels = batch.get("label") if ldm.num_classes is not None else None
        labels = ldm.class_labels_for_training(labels, 0.0)  # validated, not yet dropped
        captions = batch.get("caption") if ldm.conditioning == "text" else None
        captions = ldm.captions_for_training(captions, z0.shape[0], 0.0)
        layouts = batch.get("layout") if ldm.conditioning == "layout" else None
        layouts = ldm.layouts_for_training(layouts, z0.shape[0], 0.0)
        # t, eps and the condition dropout are drawn for the whole global batch from a
        # generator fixed by (seed, step), and each process takes its slice: so N processes
        # train exactly like one (and a resumed run like an uninterrupted one)
        draws = self.draws(z0, step, scratch)
        part, generator, total = draws.part, draws.generator, draws.t.shape[0]
        p = self.parsed["condition"].drop_probability
        if labels is not None:
            labels = ldm.drop_labels(labels, (torch.rand(total, generator=generator) < p)[part])
        if captions is not None:
            drop = (torch.rand(total, generator=generator) < p)[part]
            captions = ldm.drop_captions(captions, drop)
        if layouts is not None:
            layouts = ldm.drop_layouts(layouts, (torch.rand(total, generator=generator) < p)[part])
        # a label map (semantic synthesis) is concatenated and never dropped
        concat = batch.get("concat")
        # the dropout is already applied above (drop_probability 0 here)
        return self.diffusion_loss(z0, draws, labels=labels, drop_probability=0.0,
                                   captions=captions, layouts=layouts,
                                   concat=concat)  # fmt: skip

    @torch.no_grad()
    def sample_images(self, batch):
        z0 = self._latents(batch)[:8]
        labels = None
        if self.ldm.num_classes is not None:
            labels = batch["label"][:8].to(z0.device)
        prompts = layouts = concat = None
        if self.ldm.conditioning == "text":
            prompts = list(batch["caption"][:8])
        if self.ldm.conditioning == "layout":
            layouts = batch["layout"][:8].to(z0.device)
        if "concat" in batch:
            concat = batch["concat"][:8].to(z0.device)
        generator = torch.Generator(device=z0.device).manual_seed(0)
        images, _ = self.ldm.sample(
            z0.shape[0],
            tuple(z0.shape[-2:]),
            sampler="ddim",
            steps=20,
            labels=labels,
            prompts=prompts,
            layouts=layouts,
            concat=concat,
            generator=generator,
        )
        return torch.cat([self.ldm.decode(z0).clamp(-1, 1), images])

    def own_config(self) -> dict[str, Any]:
        return {
            "condition": self.parsed["condition"].to_dict(),
            "tokenizer": self._tokenizer_config(),
        }

    def _tokenizer_config(self) -> dict[str, Any] | None:
        """The word vocabulary of a trained encoder, or the reference of a pretrained one."""
        encoder = self.ldm.condition_encoder
        if encoder is None:
            return None
        if isinstance(encoder, (TextEncoder, LayoutEncoder)):
            return encoder.tokenizer.to_dict()
        return encoder.to_dict()


def make_stage(config: dict[str, Any], device: str = "cpu"):
    """Build (stage, training dataset, engine config) from a full config dict."""
    parsed = parse_config(config)
    data: DataConfig = parsed["data"]
    images = build_dataset(data, seed=parsed["train"].seed)
    first_stage, first_stage_config = load_first_stage(
        parsed["first_stage"].checkpoint, images.channels
    )
    channels = first_stage.config.latent_channels if first_stage_config else images.channels
    condition: ConditionConfig = parsed["condition"]
    model_values = dict(parsed["model"])
    model_values["in_channels"] = model_values["out_channels"] = channels
    condition_encoder = None
    if condition.kind == "text":
        if "caption" not in images.dataset.column_names:
            raise ValueError(
                f"condition.kind='text' but {data.dataset} has no captions; use a captioned "
                "dataset (shapes, emoji, a folder with metadata) or condition.kind='class'/'none'."
            )
        if condition.text_encoder == "minilm":
            condition_encoder = build_pretrained_text_encoder(condition)
            model_values["context_dim"] = condition_encoder.dim
        else:
            tokenizer = WordTokenizer.from_captions(images.dataset["caption"], condition.max_length)
            model_values["context_dim"] = condition.text_dim
        model_values["num_classes"] = None
    elif condition.kind in ("layout", "label_map"):
        needed = {"objects"} | ({"mask"} if condition.kind == "label_map" else set())
        if not needed <= set(images.dataset.column_names):
            raise ValueError(
                f"condition.kind={condition.kind!r} needs objects with boxes"
                f"{' and masks' if condition.kind == 'label_map' else ''}: use --dataset shapes "
                "(notebook 11)"
            )
        if not latents_cache_usable(parsed):
            raise ValueError(
                f"condition.kind={condition.kind!r} trains on cached latents: set "
                "latents.cache=true and data.hflip=false (a flip would move the boxes)"
            )
        if condition.kind == "layout":
            model_values["context_dim"] = condition.text_dim
        else:
            model_values["concat_channels"] = NUM_LABELS
        model_values["num_classes"] = None
    elif condition.kind == "class":
        num_classes = condition.num_classes
        if num_classes is None:
            labels = images.dataset["label"] if "label" in images.dataset.column_names else None
            if labels is None:
                raise ValueError(
                    f"condition.kind='class' but {data.dataset} has no labels; use "
                    "condition.kind='none' (or text, notebook 07)."
                )
            num_classes = int(max(labels)) + 1
        model_values["num_classes"] = num_classes
    else:
        model_values["num_classes"] = None
    torch.manual_seed(parsed["train"].seed)
    unet = UNet(UNetConfig.from_dict(model_values))
    if condition.kind == "text" and condition_encoder is None:
        condition_encoder = build_text_encoder(condition, tokenizer)
    if condition.kind == "layout":
        condition_encoder = build_layout_encoder(condition)
    first_stage = first_stage.to(device)
    latents_config: LatentsConfig = parsed["latents"]
    init: DiffusionInitConfig = parsed["init"]
    warm = None
    if init.checkpoint is not None:
        warm = warm_start(unet, init, first_stage, STAGE)
        if isinstance(condition_encoder, TextEncoder):  # trained jointly: its weights too
            check_same_text_encoder(warm.config, condition_encoder, condition, init.checkpoint)
            condition_encoder.load_state_dict(with_prefix(warm.weights, "condition_encoder."))
        if isinstance(condition_encoder, LayoutEncoder):
            check_same_layout_encoder(warm.config, condition, init.checkpoint)
            condition_encoder.load_state_dict(with_prefix(warm.weights, "condition_encoder."))
    cache = None
    if latents_cache_usable(parsed):
        start = time.perf_counter()
        cache = encode_dataset(first_stage, images, device=device)
        log.info("encoded %d images in %.1f s", len(images), time.perf_counter() - start)
    scale = scale_factor_of(latents_config.scale_factor, warm, init)
    cached_latents = None if cache is None else cache[0]
    scale = estimated_scale_factor(
        scale, first_stage_config, first_stage, images, cached_latents, device
    )
    ldm = LatentDiffusion(
        first_stage, unet, parsed["diffusion"].build(), scale, condition_encoder
    ).to(device)
    dataset = images
    if cache is not None:
        captions = list(images.dataset["caption"]) if condition.kind == "text" else None
        layouts = concat = None
        if condition.kind == "layout":
            layouts = dataset_layouts(
                images.dataset["objects"], data.image_size, condition.max_objects
            )
        if condition.kind == "label_map":
            concat = label_maps_condition(images.dataset, cache[0].shape[-1])
        # on the CPU: the engine moves batches
        dataset = LatentDataset(cache[0] * scale, cache[1], captions, layouts, concat)
    stage = LDMStage(ldm, parsed, first_stage_config)
    return stage, dataset, parsed["train"]


def latents_cache_usable(parsed: dict[str, Any]) -> bool:
    """Whether the training latents are encoded once (cache on, no random flips)."""
    return parsed["latents"].cache and not parsed["data"].hflip


def label_maps_condition(dataset, latent_size: int) -> Tensor:
    """The concatenated input of every image of a shapes dataset: its label map (from the mask
    and the objects), one-hot and area-averaged to the latent size, (N, NUM_LABELS, h, w)."""
    maps = dataset_label_maps(dataset)
    return torch.cat([label_map_condition(part, latent_size) for part in maps.split(1000)])


def check_same_layout_encoder(
    source_config: dict[str, Any], condition: ConditionConfig, checkpoint: str
) -> None:
    """A warm start of a layout encoder needs the same grid, objects and sizes."""
    theirs = source_config.get("condition", {})
    keys = ("kind", "text_dim", "text_depth", "text_heads", "layout_grid", "max_objects")
    different = [k for k in keys if theirs.get(k) != getattr(condition, k)]
    if different:
        raise ValueError(
            f"init.checkpoint {checkpoint} has another layout encoder: "
            + ", ".join(f"{k} {theirs.get(k)!r} there vs {getattr(condition, k)!r} here"
                        for k in different)  # fmt: skip
        )


def check_same_text_encoder(
    source_config: dict[str, Any],
    encoder: TextEncoder,
    condition: ConditionConfig,
    checkpoint: str,
) -> None:
    """A warm start of a jointly trained text encoder needs the same encoder settings and the
    same vocabulary (token ids index its embedding table)."""
    theirs = source_config.get("condition", {})
    if theirs.get("kind") != "text" or theirs.get("text_encoder", "trained") != "trained":
        raise ValueError(
            f"init.checkpoint {checkpoint} has no jointly trained text encoder "
            f"(condition {theirs.get('kind')!r}, {theirs.get('text_encoder')!r})"
        )
    keys = ("text_dim", "text_depth", "text_heads", "max_length")
    ours = {k: getattr(condition, k) for k in keys}
    different = [k for k in ours if theirs.get(k) != ours[k]]
    if different:
        raise ValueError(
            f"init.checkpoint {checkpoint} has another text encoder: "
            + ", ".join(f"{k} {theirs.get(k)!r} there vs {ours[k]!r} here" for k in different)
        )
    their_words = (source_config.get("tokenizer") or {}).get("vocabulary")
    our_words = encoder.tokenizer.to_dict()["vocabulary"]
    if their_words != our_words:
        missing = sorted(set(our_words) - set(their_words or []))[:5]
        raise ValueError(
            f"init.checkpoint {checkpoint} has another vocabulary ({len(their_words or [])} vs "
            f"{len(our_words)} words; here but not there: {missing}); warm starts of a text "
            "model need the same training captions' words."
        )


def train_ldm(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) an LDM run into ``out``; returns the last logged values."""
    return train_stage(make_stage, config, out, resume, progress)
