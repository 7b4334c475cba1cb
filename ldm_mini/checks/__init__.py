"""Exercise checkers: one per exercise of notebooks 01-08, 10 and 11.

Each notebook's exercise is a function the learner writes between nbgrader-style markers
(``### BEGIN SOLUTION`` / ``### END SOLUTION``), followed by a check cell such as
``checks.check_q_sample(q_sample)``. A checker runs the learner's function next to the
finished version in the package on seeded random inputs (several shapes, t = 0 and t = T-1,
edge cases) and raises :class:`ExerciseCheckFailed` (an AssertionError) with what is wrong:
the shape, the dtype, which element (expected vs got), a hint, and, when the result equals a
known mistake (a missing square root, a wrong sign, an off-by-one timestep), that mistake by
name. It prints one line when the function is right. ``ldm-mini classroom`` uses the same
checkers to grade student notebooks (``ldm_mini.classroom``).

:data:`EXERCISES` lists every checker with its notebook, in course order.
"""

from __future__ import annotations

from collections.abc import Callable

from ldm_mini.checks._common import ExerciseCheckFailed, ExerciseNotImplemented
from ldm_mini.checks.autoencoder import (
    check_hinge_d_loss,
    check_kl,
    check_nearest_codes,
    check_quantize,
    check_reparameterize,
)
from ldm_mini.checks.conditioning import (
    check_cross_attention,
    check_drop_captions,
    check_guided_eps,
)
from ldm_mini.checks.diffusion import (
    check_ddim_step,
    check_ddpm_step,
    check_q_sample,
    check_v_target,
    check_x0_from_eps,
)
from ldm_mini.checks.inpaint import check_blend_step, check_inpainting_condition, check_paste
from ldm_mini.checks.layouts import check_box_tokens, check_label_map_input
from ldm_mini.checks.ldm import check_ldm_loss, check_scale_factor, check_slerp
from ldm_mini.checks.superres import check_gaussian_kernel, check_unet_input
from ldm_mini.checks.unet import check_attention, check_film, check_timestep_embedding

# checker name -> (notebook, checker), in course order
EXERCISES: dict[str, tuple[str, Callable[[Callable], None]]] = {
    "kl": ("01_perceptual_autoencoder", check_kl),
    "reparameterize": ("01_perceptual_autoencoder", check_reparameterize),
    "hinge_d_loss": ("01_perceptual_autoencoder", check_hinge_d_loss),
    "nearest_codes": ("02_vector_quantization", check_nearest_codes),
    "quantize": ("02_vector_quantization", check_quantize),
    "q_sample": ("03_forward_diffusion", check_q_sample),
    "x0_from_eps": ("03_forward_diffusion", check_x0_from_eps),
    "v_target": ("04_reverse_diffusion", check_v_target),
    "ddpm_step": ("04_reverse_diffusion", check_ddpm_step),
    "ddim_step": ("04_reverse_diffusion", check_ddim_step),
    "timestep_embedding": ("05_unet", check_timestep_embedding),
    "film": ("05_unet", check_film),
    "attention": ("05_unet", check_attention),
    "scale_factor": ("06_latent_diffusion", check_scale_factor),
    "ldm_loss": ("06_latent_diffusion", check_ldm_loss),
    "slerp": ("06_latent_diffusion", check_slerp),
    "cross_attention": ("07_cross_attention_conditioning", check_cross_attention),
    "guided_eps": ("07_cross_attention_conditioning", check_guided_eps),
    "drop_captions": ("07_cross_attention_conditioning", check_drop_captions),
    "gaussian_kernel": ("08_super_resolution", check_gaussian_kernel),
    "unet_input": ("08_super_resolution", check_unet_input),
    "inpainting_condition": ("10_inpainting", check_inpainting_condition),
    "paste": ("10_inpainting", check_paste),
    "blend_step": ("10_inpainting", check_blend_step),
    "box_tokens": ("11_layouts_and_semantic_maps", check_box_tokens),
    "label_map_input": ("11_layouts_and_semantic_maps", check_label_map_input),
}

__all__ = ["EXERCISES", "ExerciseCheckFailed", "ExerciseNotImplemented"] + [
    f"check_{name}" for name in EXERCISES
]
