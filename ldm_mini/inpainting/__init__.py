"""Inpainting with latent diffusion: masks, the masked image concatenated to z_t, pasting the
known pixels back, the non-learned fills and the training-free rivals (blended latent
diffusion, RePaint). Taught in notebook 10_inpainting.

The model-level pieces: :mod:`.masks` (training and held-out masks), :mod:`.condition` (the
U-Net's concatenated input and pasting), :mod:`.fills` (mean and harmonic fills: the floor)
and :mod:`.repaint` (inpainting with an LDM trained without masks). Training is
:mod:`ldm_mini.stages.inpaint`, filling images with a trained model
:mod:`ldm_mini.pipelines.inpaint`, measuring :mod:`ldm_mini.evaluation.inpaint`.
"""

from ldm_mini.inpainting.condition import (
    check_pair,
    inpainting_condition,
    latent_mask,
    masked_image,
    paste,
)
from ldm_mini.inpainting.fills import FILLS, harmonic_fill, mean_fill
from ldm_mini.inpainting.masks import DEFAULT_MIX, MASK_KINDS, heldout_masks, random_mask
from ldm_mini.inpainting.repaint import blend_step, repaint

__all__ = [
    "DEFAULT_MIX",
    "FILLS",
    "MASK_KINDS",
    "blend_step",
    "check_pair",
    "harmonic_fill",
    "heldout_masks",
    "inpainting_condition",
    "latent_mask",
    "masked_image",
    "mean_fill",
    "paste",
    "random_mask",
    "repaint",
]
