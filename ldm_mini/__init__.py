"""ldm-mini: Latent Diffusion Models (Rombach et al., CVPR 2022), built stage by stage.

The package holds the finished version of what each notebook in ``notebooks/`` builds.
``import ldm_mini`` stays light (no torch, no datasets): submodules are imported on first
use, e.g. ``ldm_mini.data`` or ``from ldm_mini import viz``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "attention",
    "autoencoder",
    "blocks",
    "checkpoints",
    "checks",
    "classifier",
    "classroom",
    "cli",
    "conditioning",
    "configs",
    "data",
    "demo",
    "diffusion",
    "environment",
    "evaluation",
    "f_sweep",
    "hub_models",
    "ldm",
    "losses",
    "metrics",
    "network",
    "perceptual",
    "pipelines",
    "pretrained_text",
    "samplers",
    "shapes_checker",
    "stages",
    "superres",
    "tour",
    "toy",
    "train",
    "unet",
    "viz",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    """Import submodules lazily so that ``import ldm_mini`` takes well under a second."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'ldm_mini' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
