"""The stage recipes: how each stage of the paper is trained, by one recipe (:mod:`.base`).

- :mod:`.autoencoder`: the perceptual autoencoder, KL or VQ (notebooks 01, 02);
- :mod:`.ldm`: the latent diffusion model, unconditional, class or text (notebooks 06, 07);
- :mod:`.sr`: super-resolution, LDM-SR / LDM-BSR and the regression baseline (notebook 08).

Each module holds only what differs (its config sections, its loss, its dataset); parsing,
warm starts, the diffusion stages' engine interface and training are in :mod:`.base`.
Loading and sampling a trained stage: :mod:`ldm_mini.pipelines`.
"""

from ldm_mini.stages.autoencoder import train_autoencoder
from ldm_mini.stages.ldm import load_ldm_preset, train_ldm
from ldm_mini.stages.sr import load_sr_preset, train_sr

__all__ = ["load_ldm_preset", "load_sr_preset", "train_autoencoder", "train_ldm", "train_sr"]
