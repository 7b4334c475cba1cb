"""What every exercise checker shares: the failure type and a comparison that explains itself.

A checker runs the learner's function next to the finished version on seeded inputs and
raises :class:`ExerciseCheckFailed` (an ``AssertionError``, so nbval and pytest report it as
a failed check) with a message saying what is wrong: the type, the shape, the dtype, or the
first element that differs (expected vs got), plus a hint, and, when the result equals a
known mistake (a missing square root, a wrong sign, an off-by-one timestep), that mistake
by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


class ExerciseCheckFailed(AssertionError):
    """A learner's function disagrees with the finished version; the message says how."""


class ExerciseNotImplemented(ExerciseCheckFailed):
    """The exercise's stub still raises NotImplementedError: nothing was written yet."""


def call(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a stub's NotImplementedError becomes a clear failure, and any
    other exception is re-raised with the exercise's name in front (the traceback stays)."""
    if not callable(fn):
        raise ExerciseCheckFailed(f"{name}: pass your function itself, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as error:
        detail = f" ({error})" if str(error) else ""
        raise ExerciseNotImplemented(
            f"{name} is not implemented yet{detail}: replace the `raise NotImplementedError` "
            "line with your code, run that cell, then run this check again."
        ) from None


def _first_difference(got: Tensor, expected: Tensor, rtol: float, atol: float) -> str:
    close = torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=False)
    bad = (~close).nonzero()
    index = tuple(int(i) for i in bad[0]) if len(bad) else ()
    got_value, expected_value = got[index].item(), expected[index].item()
    count = int((~close).sum())
    error = float((got.double() - expected.double()).abs().nan_to_num(float("inf")).max())
    return (
        f"{count} of {got.numel()} elements differ (largest error {error:.3g}); first at index "
        f"{list(index)}: expected {expected_value:.6g}, got {got_value:.6g}"
    )


def compare(
    name: str,
    got: Any,
    expected: Tensor,
    where: str,
    hint: str = "",
    mistakes: Sequence[tuple[Tensor, str]] = (),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    check_dtype: bool = True,
) -> None:
    """Raise :class:`ExerciseCheckFailed` unless ``got`` is a tensor equal to ``expected``.

    ``where`` names the inputs (e.g. "t = 0, x0 (5, 1, 32, 32)"); ``mistakes`` pairs the
    result of a known wrong version with the sentence that names it; ``hint`` is said when
    no known mistake matches.
    """
    if not isinstance(got, Tensor):
        raise ExerciseCheckFailed(
            f"{name} must return a torch.Tensor, got {type(got).__name__} ({where})"
        )
    if tuple(got.shape) != tuple(expected.shape):
        raise ExerciseCheckFailed(
            f"{name} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)} ({where})"
            + (f"; {hint}" if hint else "")
        )
    if check_dtype and got.dtype != expected.dtype:
        raise ExerciseCheckFailed(
            f"{name} returned dtype {got.dtype}, expected {expected.dtype} ({where}); keep the "
            "dtype of the inputs (cast constants with .to(x.dtype))"
        )
    got_compared = got.detach().to(expected.dtype).cpu()
    expected = expected.detach().cpu()
    if torch.allclose(got_compared, expected, rtol=rtol, atol=atol):
        return
    if not torch.isfinite(got_compared).all() and torch.isfinite(expected).all():
        raise ExerciseCheckFailed(
            f"{name} returned NaN or inf ({where}) where the expected values are finite; "
            "look for a division by zero or the log/sqrt of a negative number"
        )
    for wrong, sentence in mistakes:
        wrong = wrong.detach().to(expected.dtype).cpu()
        if wrong.shape == got_compared.shape and torch.allclose(
            got_compared, wrong, rtol=rtol, atol=atol
        ):
            raise ExerciseCheckFailed(f"{name} ({where}): {sentence}")
    raise ExerciseCheckFailed(
        f"{name} is wrong ({where}): "
        + _first_difference(got_compared, expected, rtol, atol)
        + (f". Hint: {hint}" if hint else "")
    )


def passed(name: str, detail: str) -> None:
    """The one line a passing check prints."""
    print(f"{name}: correct ({detail})")
