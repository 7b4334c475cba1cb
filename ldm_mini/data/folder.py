"""A local folder of the user's own images, through ``datasets``' imagefolder builder.

Layout (as ``datasets`` defines it): images anywhere under the folder; sub-folder names
become ``label`` when every image sits in one; an optional ``metadata.csv`` or
``metadata.jsonl`` with a ``file_name`` column adds captions (column ``caption`` or
``text``). Every image is decoded once first, so a corrupt file is reported by name.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ldm_mini.data.errors import CorruptImageError, DatasetError
from ldm_mini.data.hub import to_common_schema

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: Path) -> list[Path]:
    """All image files under ``folder`` (by suffix), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def check_image(path: Path) -> None:
    """Decode ``path`` fully; raise :class:`CorruptImageError` naming it if that fails."""
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(
            f"Image file {path} cannot be decoded ({type(err).__name__}: {err}). "
            "Replace or delete it, then load the folder again."
        ) from err


def load_folder(folder: str | Path, split: str = "train", check_images: bool = True, **kwargs):
    """Load a folder of images as a ``datasets.Dataset`` with the common schema."""
    import datasets

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images.")
    files = image_files(folder)
    if not files:
        raise DatasetError(
            f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    if check_images:
        for path in files:
            check_image(path)
    dataset = datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, **kwargs)
    return to_common_schema(dataset)
