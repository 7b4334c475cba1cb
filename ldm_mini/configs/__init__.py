"""The one config style of every stage, and the presets shipped as JSON files in the package.

A config is a JSON object with sections (``data``, ``model``, ``loss``, ``optim``, ``train``,
...) whose keys are the fields of the matching config dataclasses: :func:`config_from_dict`
builds a section strictly (unknown keys are errors that list the valid ones) and
:class:`Section` writes one back as plain JSON. Presets per device: ``tiny`` (tests), ``cpu``
(a laptop), ``colab-t4``, ``gpu``; :func:`load_stage_preset` adds the U-Net preset of the same
name to the diffusion stages. Command-line overrides use dotted keys: ``train.steps=200``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import typing
from importlib import resources
from typing import Any

# the stages whose ``model`` section is a U-Net: their presets take configs/unet/NAME.json
UNET_STAGES = ("ldm", "sr", "inpaint")


def is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is an int in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Section:
    """A config section (a dataclass) written to checkpoints as a plain JSON dict."""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def check_keys(cls, values: Any, section: str) -> None:
    """Reject a section that is not a dict or has keys that are not fields of ``cls``."""
    if not isinstance(values, dict):
        raise ValueError(f"the {section} section must be a dict, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {section} key(s) {unknown}; valid: {names}")


def config_from_dict(cls, values: dict[str, Any], section: str):
    """Build the config dataclass ``cls`` of ``section`` strictly: unknown keys are errors that
    list the valid ones, and JSON lists become tuples where the field is a tuple."""
    check_keys(cls, values, section)
    hints = typing.get_type_hints(cls)
    values = {
        k: tuple(v) if isinstance(v, list) and _is_tuple_type(hints.get(k)) else v
        for k, v in values.items()
    }
    return cls(**values)


def _is_tuple_type(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple or hint is tuple:
        return True
    return any(_is_tuple_type(arg) for arg in typing.get_args(hint))


PRESETS = ("tiny", "cpu", "colab-t4", "gpu")


def available_presets(stage: str) -> list[str]:
    """Preset names shipped for ``stage`` (e.g. ``"autoencoder"``)."""
    folder = resources.files(__package__) / stage
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(stage: str, name: str) -> dict[str, Any]:
    """The preset ``name`` of ``stage`` as a dict (a fresh copy)."""
    names = available_presets(stage)
    if name not in names:
        raise ValueError(f"unknown preset {name!r} for {stage}; available: {names}")
    text = (resources.files(__package__) / stage / f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_stage_preset(stage: str, name: str) -> dict[str, Any]:
    """The preset ``name`` of ``stage``; for the diffusion stages (``ldm``, ``sr``) its ``model``
    section is the U-Net preset ``configs/unet/NAME.json`` with the stage's own keys on top."""
    config = load_preset(stage, name)
    if stage in UNET_STAGES:
        config["model"] = {**load_preset("unet", name)["model"], **config.get("model", {})}
    return config


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    if is_number(value):
        return "a number"
    if isinstance(value, list):
        return "a JSON list such as [1, 2]"
    if isinstance(value, dict):
        return 'a JSON object such as {"key": 1}'
    return type(value).__name__


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``section.key=value`` overrides applied.

    Values are parsed as JSON when they parse (``3``, ``1e-4``, ``true``, ``null``,
    ``[1, 2]``), else taken as strings. The key must exist in the preset.
    """
    result = copy.deepcopy(config)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {override!r} must look like section.key=value")
        section, field = key.split(".", 1)
        if section not in result or not isinstance(result[section], dict):
            raise ValueError(
                f"unknown section {section!r} in {override!r}; sections: {list(result)}"
            )
        if field not in result[section]:
            raise ValueError(
                f"unknown key {field!r} in section {section!r}; keys: {sorted(result[section])}"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        current = result[section][field]
        if isinstance(value, str) and current is not None and not isinstance(current, str):
            # an unparsable value where the preset has a number, a flag or a list
            raise ValueError(
                f"--set {key}={raw}: {key} takes {_kind_of(current)} (the preset has "
                f"{json.dumps(current)}), not {raw!r}"
            )
        result[section][field] = value
    return result
