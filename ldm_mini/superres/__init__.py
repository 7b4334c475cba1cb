"""Super-resolution with latent diffusion (LDM-SR, LDM-BSR): degradations, and conditioning by
concatenating the low-resolution image to z_t.

Taught in notebook 08_super_resolution. So far: :mod:`.degradations` (bicubic and blind).
"""

from ldm_mini.superres.degradations import (
    DEGRADATIONS,
    Bicubic,
    Blind,
    BlindRanges,
    bicubic_downsample,
    make_degradation,
)

__all__ = [
    "DEGRADATIONS",
    "Bicubic",
    "Blind",
    "BlindRanges",
    "bicubic_downsample",
    "make_degradation",
]
