"""Input checks and small helpers shared by the modules of :mod:`ldm_mini.viz` (private).

The checks raise ValueError saying what was expected and what came instead, so a wrong
trajectory or schedule in notebooks ``03_forward_diffusion``, ``04_reverse_diffusion`` or
``06_latent_diffusion`` fails with a message rather than inside matplotlib. Used by
:mod:`~ldm_mini.viz.images`, :mod:`~ldm_mini.viz.diffusion`, :mod:`~ldm_mini.viz.toy` and
:mod:`~ldm_mini.viz.attention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _as_float_array(value: Any, name: str) -> np.ndarray:
    """A torch tensor or an array-like of numbers -> float64 numpy array on the CPU."""
    if _is_torch(value):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a tensor or an array of numbers, got {type(value).__name__}"
        ) from error


def _nonempty_list(values: Any, name: str, what: str) -> list[Any]:
    """A non-empty list or tuple as a list; anything else -> ValueError naming ``what``."""
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list of {what}, got {_describe(values)}")
    return list(values)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _image_batches(batches: Any, name: str) -> list[np.ndarray]:
    """A non-empty list of image batches (B, C, H, W), C in {1, 3}, all one shape -> arrays."""
    arrays = [
        _as_float_array(batch, f"{name}[{index}]")
        for index, batch in enumerate(_nonempty_list(batches, name, "image batches (B, C, H, W)"))
    ]
    for index, array in enumerate(arrays):
        if array.ndim != 4 or array.shape[0] == 0:
            raise ValueError(
                f"{name}[{index}] must be a non-empty image batch (B, C, H, W), "
                f"got shape {array.shape}"
            )
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{name}[{index}] has shape {array.shape} but {name}[0] has {arrays[0].shape}; "
                "every step must hold the same batch"
            )
    if arrays[0].shape[1] not in (1, 3):
        raise ValueError(
            f"{name} images have {arrays[0].shape[1]} channels; only 1 (grey) or 3 (RGB) can be "
            "shown: decode latents with the first stage first, or pass [x[:, :1] for x in ...]"
        )
    return arrays


def _evenly_spaced(length: int, n_columns: int) -> list[int]:
    """min(n_columns, length) evenly spaced indices into 0..length-1, first and last included."""
    if isinstance(n_columns, bool) or not isinstance(n_columns, int) or n_columns < 2:
        raise ValueError(
            f"n_columns must be an int >= 2 (the first and the last step), got {n_columns!r}"
        )
    count = min(n_columns, length)
    # spacing (length-1)/(count-1) >= 1, so the rounded indices are distinct
    return [int(i) for i in np.round(np.linspace(0, length - 1, count)).astype(int)]


def _step_labels(length: int, timesteps: Sequence[int] | None) -> list[str]:
    """Column titles: "t = ..." from ``timesteps``, else "step i".

    ``timesteps`` may have one entry per trajectory step, or one fewer (a sampler's convention:
    trajectory[i] is x_t at timesteps[i] and the last entry is the final sample).
    """
    if timesteps is None:
        return [f"step {index}" for index in range(length)]
    steps = [int(step) for step in timesteps]
    if len(steps) == length:
        return [f"t = {step}" for step in steps]
    if len(steps) == length - 1:
        return [f"t = {step}" for step in steps] + ["sample"]
    raise ValueError(
        f"timesteps has {len(steps)} entries for a trajectory of {length}; give one per step "
        f"({length}) or one per model call ({length - 1}, the last entry being the sample)"
    )
