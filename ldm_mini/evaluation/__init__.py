"""Evaluation of every stage with one protocol: held-out images of the test split, a fixed
seed, metrics from :mod:`ldm_mini.metrics`, a dict of numbers (``ldm-mini evaluate ... --json``).

- :func:`evaluate_autoencoder`: reconstructions (notebooks 01, 02);
- :func:`evaluate_ldm`: samples, with class or conditioning accuracy (notebooks 06, 07, 09);
- :func:`evaluate_sr`: super-resolution against bicubic and the regression baseline
  (notebook 08);
- :func:`evaluate_inpaint`: inpainting against its training-free rivals and the non-learned
  fills (notebook 10).
"""

from ldm_mini.evaluation.autoencoder import evaluate_autoencoder
from ldm_mini.evaluation.inpaint import evaluate_inpaint
from ldm_mini.evaluation.ldm import evaluate_ldm, shapes_conditioning
from ldm_mini.evaluation.sr import EVALUATION_SEED, evaluate_sr, heldout_crops

__all__ = [
    "EVALUATION_SEED",
    "evaluate_autoencoder",
    "evaluate_inpaint",
    "evaluate_ldm",
    "evaluate_sr",
    "heldout_crops",
    "shapes_conditioning",
]
