"""Presets for every stage, as JSON files shipped inside the package.

One config style for all stages: a JSON object with sections (``data``, ``model``,
``loss``, ``optim``, ``train``) whose keys are the fields of the matching config
dataclasses. Presets per device: ``tiny`` (tests), ``cpu`` (a laptop), ``colab-t4``,
``gpu``. Command-line overrides use dotted keys: ``train.steps=200``.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

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
        result[section][field] = value
    return result
