"""2-D point trajectories and animations of any trajectory (point clouds or image batches).

Taught in notebooks ``03_forward_diffusion`` (the forward process moving the toy points to
noise) and ``04_reverse_diffusion`` (samplers bringing them back):
:func:`plot_points_trajectory` draws a trajectory of point clouds (N, 2) as a row of scatter
plots, :func:`animate_trajectory` animates point clouds or image batches (a GIF, or HTML via
:func:`animation_html` in a notebook).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import rearrange

from ldm_mini.viz._checks import (
    _as_float_array,
    _evenly_spaced,
    _image_batches,
    _nonempty_list,
    _step_labels,
)
from ldm_mini.viz.images import _show_uint8, make_grid

if TYPE_CHECKING:
    from matplotlib.animation import FuncAnimation
    from matplotlib.figure import Figure

__all__ = [
    "animate_trajectory",
    "animation_html",
    "plot_points_trajectory",
]


def _points(value: Any, name: str) -> np.ndarray:
    """A point cloud (N, 2), N >= 1 -> float64 array."""
    array = _as_float_array(value, name)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty point cloud (N, 2), got shape {array.shape}")
    return array


def _square_limits(clouds: Sequence[np.ndarray], margin: float = 0.05) -> tuple[float, float]:
    """One (low, high) range for both axes that holds every point of every cloud."""
    stacked = np.concatenate([cloud[np.isfinite(cloud).all(axis=1)] for cloud in clouds])
    if len(stacked) == 0:
        return -1.0, 1.0
    low, high = float(stacked.min()), float(stacked.max())
    half = max(high - low, 1e-6) * (0.5 + margin)
    middle = 0.5 * (low + high)
    return middle - half, middle + half


def plot_points_trajectory(
    trajectory: Sequence[Any],
    data: Any = None,
    n_columns: int = 6,
    timesteps: Sequence[int] | None = None,
    scale: float = 2.2,
) -> Figure:
    """A 2-D sampling trajectory: one scatter per column, evenly spaced steps, first and last.

    ``trajectory``: list of point clouds (N, 2), first x_T, last the sample. ``data``: the true
    points (M, 2), drawn in grey behind every panel. All panels share one square range, so the
    noise visibly contracts onto the data. ``timesteps`` titles the columns as in
    :func:`ldm_mini.viz.diffusion.trajectory_grid`.
    """
    import matplotlib.pyplot as plt

    clouds = [
        _points(cloud, f"trajectory[{index}]")
        for index, cloud in enumerate(_nonempty_list(trajectory, "trajectory", "(N, 2) clouds"))
    ]
    reference = None if data is None else _points(data, "data")
    columns = _evenly_spaced(len(clouds), n_columns)
    labels = _step_labels(len(clouds), timesteps)
    shown = [clouds[index] for index in columns]
    low, high = _square_limits(shown + ([] if reference is None else [reference]))
    figure, axes = plt.subplots(
        1, len(columns), figsize=(scale * len(columns), scale + 0.3), squeeze=False
    )
    for axis, index, cloud in zip(axes[0], columns, shown, strict=True):
        if reference is not None:
            axis.scatter(reference[:, 0], reference[:, 1], s=2, color="0.8", linewidths=0)
        axis.scatter(cloud[:, 0], cloud[:, 1], s=2, color="C0", linewidths=0)
        axis.set(xlim=(low, high), ylim=(low, high), xticks=[], yticks=[], aspect="equal")
        axis.set_title(labels[index], fontsize=9)
    figure.tight_layout()
    return figure


def animate_trajectory(
    frames: Sequence[Any],
    path: str | Path | None = None,
    fps: int = 10,
    titles: Sequence[str] | None = None,
    data: Any = None,
    scale: float = 4.0,
) -> FuncAnimation:
    """An animation of a trajectory; saved as a GIF when ``path`` ends in ``.gif``.

    ``frames``: all image batches (B, C, H, W), C in {1, 3}, in [-1, 1] (each frame one grid,
    :func:`make_grid`), or all point clouds (N, 2) (a scatter with fixed axis limits covering
    every frame; ``data`` (M, 2) is drawn in grey behind). ``titles``: one per frame (default
    "frame i / n"). The figure is closed before returning, so a notebook shows only the
    animation: ``IPython.display.HTML(animation_html(anim))``. Pillow merges identical
    consecutive frames of a GIF into one; the default titles keep every frame distinct.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    frames = _nonempty_list(frames, "frames", "image batches (B, C, H, W) or clouds (N, 2)")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(titles)} titles; give one per frame")
    target = None if path is None else Path(path)
    if target is not None and target.suffix.lower() != ".gif":
        raise ValueError(
            f"can only save a .gif (PillowWriter), got {str(path)!r}; "
            "use path=None and animation_html(anim) to show it in a notebook"
        )
    arrays = [_as_float_array(frame, f"frames[{index}]") for index, frame in enumerate(frames)]
    count = len(arrays)
    labels = [str(title) for title in titles] if titles is not None else None
    labels = labels or [f"frame {index + 1} / {count}" for index in range(count)]

    if all(array.ndim == 2 and array.shape[1] == 2 and len(array) > 0 for array in arrays):
        reference = None if data is None else _points(data, "data")
        low, high = _square_limits(arrays + ([] if reference is None else [reference]))
        figure, axis = plt.subplots(figsize=(scale, scale))
        if reference is not None:
            axis.scatter(reference[:, 0], reference[:, 1], s=3, color="0.8", linewidths=0)
        artist = axis.scatter(arrays[0][:, 0], arrays[0][:, 1], s=3, color="C0", linewidths=0)
        axis.set(xlim=(low, high), ylim=(low, high), xticks=[], yticks=[], aspect="equal")

        def draw(index: int) -> tuple:
            artist.set_offsets(arrays[index])
            axis.set_title(labels[index], fontsize=10)
            return (artist,)

    elif all(array.ndim == 4 for array in arrays):
        batches = _image_batches(arrays, "frames")
        grids = [make_grid(rearrange(batch, "n c h w -> n h w c")) for batch in batches]
        height, width = grids[0].shape[:2]
        figure, axis = plt.subplots(figsize=(scale, scale * height / width + 0.4))
        artist = _show_uint8(axis, grids[0])

        def draw(index: int) -> tuple:
            grid = grids[index]
            artist.set_data(grid[..., 0] if grid.shape[-1] == 1 else grid)
            axis.set_title(labels[index], fontsize=10)
            return (artist,)

    else:
        shapes = sorted({array.shape for array in arrays})[:4]
        raise ValueError(
            f"frames must be all image batches (B, C, H, W) or all point clouds (N, 2); "
            f"got shapes {shapes}"
        )
    animation = FuncAnimation(figure, draw, frames=count, interval=1000.0 / fps, blit=False)
    plt.close(figure)  # the animation keeps the figure; closing it avoids a stray static copy
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        animation.save(target, writer=PillowWriter(fps=fps))
    return animation


def animation_html(animation: FuncAnimation) -> str:
    """An animation as self-contained HTML with play controls (``IPython.display.HTML(...)``)."""
    return animation.to_jshtml()
