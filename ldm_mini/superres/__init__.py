"""Super-resolution with latent diffusion (LDM-SR, LDM-BSR): degradations, and conditioning by
concatenating the low-resolution image to z_t.

Taught in notebook 08_super_resolution. The model-level pieces: :mod:`.degradations` (bicubic
and blind), :mod:`.concat` (the low-resolution image joined to z_t), :mod:`.data` (training
crops), :mod:`.tiling` (whole images as overlapping tiles, blended at every sampling step) and
:mod:`.consistency` (back-projection of an output onto its bicubic-degraded input). Training is
:mod:`ldm_mini.stages.sr`, upscaling with a trained model :mod:`ldm_mini.pipelines.superres`,
measuring :mod:`ldm_mini.evaluation.sr`.
"""

from ldm_mini.superres.concat import concat_condition, unet_input
from ldm_mini.superres.consistency import back_project, consistency_error
from ldm_mini.superres.data import SRCrops
from ldm_mini.superres.degradations import (
    DEGRADATIONS,
    Bicubic,
    Blind,
    BlindRanges,
    bicubic_downsample,
    make_degradation,
)
from ldm_mini.superres.tiling import TiledDenoiser

__all__ = [
    "DEGRADATIONS",
    "SRCrops",
    "TiledDenoiser",
    "Bicubic",
    "Blind",
    "BlindRanges",
    "back_project",
    "bicubic_downsample",
    "concat_condition",
    "consistency_error",
    "make_degradation",
    "unet_input",
]
