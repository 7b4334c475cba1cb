"""Hugging Face Hub datasets by name (online, e.g. on Colab), mapped to the common schema.

Offline, the Hub is checked with one bounded connection attempt first, so the error comes
in seconds (no hanging retries) and points to the bundled datasets. With
``HF_HUB_OFFLINE=1`` a dataset downloaded earlier is read from the local cache.
"""

from __future__ import annotations

import os

from ldm_mini.data.errors import DatasetError, HubUnavailableError
from ldm_mini.network import reachable

# Column names found on the Hub, in order of preference, for each common-schema column.
LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label")
CAPTION_COLUMNS = ("caption", "text", "sentence", "prompt", "captions")


def hub_endpoint() -> str:
    """The Hub's base URL (``$HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline_mode() -> bool:
    """True when the user asked ``datasets``/``huggingface_hub`` to stay offline."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def to_common_schema(dataset):
    """Rename a dataset's columns to ``image`` (+ ``label``, ``caption`` where present)."""
    import datasets

    features = dataset.features
    renames: dict[str, str] = {}
    if "image" not in features:
        images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        if not images:
            raise DatasetError(
                f"This dataset has no image column (columns: {list(features)}); "
                "ldm-mini needs one with the datasets.Image feature."
            )
        renames[images[0]] = "image"
    for target, candidates in (("label", LABEL_COLUMNS), ("caption", CAPTION_COLUMNS)):
        if target in features:
            continue
        found = [c for c in candidates if c in features and c not in renames]
        if target == "label" and not found:
            found = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
        if found:
            renames[found[0]] = target
    return dataset.rename_columns(renames) if renames else dataset


def load_hub(repo_id: str, split: str = "train", **kwargs):
    """Load ``repo_id`` from the Hub with ``datasets.load_dataset`` in the common schema.

    Raises :class:`HubUnavailableError` within seconds when the Hub cannot be reached, or,
    in offline mode, when the dataset is not in the local cache.
    """
    import datasets

    hint = (
        "Use a bundled dataset instead (fashion_mnist, emoji, shapes, photos: they work "
        "offline), or run where the Hub is reachable (e.g. Colab)."
    )
    offline = hub_offline_mode()
    if not offline:
        ok, reason = reachable(hub_endpoint())
        if not ok:
            raise HubUnavailableError(
                f"Cannot load Hub dataset {repo_id!r}: the Hugging Face Hub is not reachable "
                f"({reason}). {hint} If you downloaded this dataset before, set "
                "HF_HUB_OFFLINE=1 to read it from the local cache."
            )
    try:
        dataset = datasets.load_dataset(repo_id, split=split, **kwargs)
    except (ConnectionError, FileNotFoundError) as err:
        if offline:
            raise HubUnavailableError(
                f"Cannot load Hub dataset {repo_id!r}: offline mode is on (HF_HUB_OFFLINE) and "
                f"it is not in the local cache ({type(err).__name__}: {err}). {hint}"
            ) from err
        raise
    return to_common_schema(dataset)
