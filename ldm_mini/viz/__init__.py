"""Pictures of every stage: image grids, diffusion trajectories, toy points, attention maps.

One module per concept, every public name re-exported here (``from ldm_mini import viz``,
``viz.show_images(...)``):

* :mod:`~ldm_mini.viz.images`: uint8 conversion, grids with captions, boxes and masks, saving
  figures and grids (notebook ``00_setup_and_data``, then every notebook);
* :mod:`~ldm_mini.viz.diffusion`: noise schedules, noising strips, image sampling
  trajectories and their GIFs (notebooks ``03_forward_diffusion``, ``04_reverse_diffusion``,
  ``06_latent_diffusion``);
* :mod:`~ldm_mini.viz.toy`: 2-D point trajectories and animations (notebooks
  ``03_forward_diffusion`` and ``04_reverse_diffusion``);
* :mod:`~ldm_mini.viz.attention`: per-token cross-attention overlays (notebook
  ``07_cross_attention_conditioning``).

matplotlib and torch are imported inside the functions that need them, so importing this
package stays light (numpy, PIL and einops only).
"""

from __future__ import annotations

from ldm_mini.viz.attention import show_token_attention
from ldm_mini.viz.diffusion import (
    SNR_DISPLAY_CLIP,
    noising_strip,
    plot_schedules,
    save_trajectory_gif,
    trajectory_grid,
)
from ldm_mini.viz.images import (
    OVERLAY_COLOURS,
    draw_boxes,
    make_grid,
    overlay_mask,
    save_figure,
    save_image_grid,
    show_images,
    to_uint8_images,
)
from ldm_mini.viz.toy import animate_trajectory, animation_html, plot_points_trajectory

__all__ = [
    "OVERLAY_COLOURS",
    "SNR_DISPLAY_CLIP",
    "animate_trajectory",
    "animation_html",
    "draw_boxes",
    "make_grid",
    "noising_strip",
    "overlay_mask",
    "plot_points_trajectory",
    "plot_schedules",
    "save_figure",
    "save_image_grid",
    "save_trajectory_gif",
    "show_images",
    "show_token_attention",
    "to_uint8_images",
    "trajectory_grid",
]
