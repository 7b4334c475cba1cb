"""Pipelines: load any trained stage and use it (sample, super-resolve). No training code.

- :mod:`.load`: :func:`load` for any checkpoint folder, run folder or ``shipped:NAME``, and
  :func:`load_autoencoder`, :func:`load_ldm`, :func:`load_sr` for one stage.
- :mod:`.generate`: :func:`generate`, n LDM samples in batches from a seed (notebooks 06, 07).
- :mod:`.superres`: :func:`super_resolve` with LDM-SR / LDM-BSR or the regression baseline
  (notebook 08).
- :mod:`.inpaint`: :func:`inpaint`, masked images filled by an inpainting LDM (notebook 10).

``ldm-mini sample``, ``ldm-mini superres``, the evaluations, the demo and the notebooks load
and sample through here; the stage recipes (:mod:`ldm_mini.stages`) only train.
"""

from ldm_mini.pipelines.generate import generate, sample_labels
from ldm_mini.pipelines.inpaint import check_inpaint_input, inpaint
from ldm_mini.pipelines.load import (
    STAGES,
    first_stage_of,
    load,
    load_autoencoder,
    load_first_stage,
    load_inpaint,
    load_ldm,
    load_sr,
)
from ldm_mini.pipelines.superres import (
    OBJECTIVES,
    REFINE_T,
    check_refiner,
    crop_to_fit,
    load_refiner,
    regression_predict,
    super_resolve,
)

__all__ = [
    "OBJECTIVES",
    "REFINE_T",
    "STAGES",
    "check_inpaint_input",
    "check_refiner",
    "crop_to_fit",
    "first_stage_of",
    "generate",
    "inpaint",
    "load",
    "load_autoencoder",
    "load_first_stage",
    "load_inpaint",
    "load_ldm",
    "load_refiner",
    "load_sr",
    "regression_predict",
    "sample_labels",
    "super_resolve",
]
